"""TensorBoard logging of a run: losses, learning rate, validation metrics and image grids.

Events go to ``RUN_DIR/tb/`` (``tensorboard --logdir runs``). TensorBoard is optional: without
the ``tensorboard`` package training works as before and says once that TensorBoard is off.
A resumed run purges the events written after its checkpoint, so the curves show one timeline,
like ``log.jsonl``.

Image grids (every ``image_every`` steps) show up to four samples of the current training batch,
one row each for RGB, thermal, the fused image and, for segmenting models, labels and the
prediction in the class palette (ignored pixels black). They come from a forward pass in eval
mode of the model that validation uses (the EMA weights when enabled).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ivf_training.augment import IGNORE_INDEX

__all__ = ["TensorBoardLogger", "colorize_labels", "image_grid"]

_log = logging.getLogger(__name__)

_MAX_IMAGES = 4


def colorize_labels(labels: torch.Tensor, palette: Sequence[int]) -> torch.Tensor:
    """Class ids → RGB in [0, 1] with the 0xRRGGBB ``palette``; ignored or unknown ids are black.

    Shape:
        labels: (B, H, W) integer → (B, 3, H, W) float.
    """
    colours = torch.tensor([[(c >> 16) & 255, (c >> 8) & 255, c & 255] for c in palette] + [[0, 0, 0]],
                           dtype=torch.float32, device=labels.device) / 255.0
    ids = labels.long().clone()
    ids[(ids < 0) | (ids >= len(palette)) | (ids == IGNORE_INDEX)] = len(palette)
    return colours[ids].permute(0, 3, 1, 2)


def image_grid(rows: Sequence[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Tile equally sized images: one grid row per tensor, its images side by side, separated by
    ``padding`` black pixels (torchvision's ``make_grid`` would import torchvision, seconds of
    start-up in every training process, for three lines of work).

    Shape:
        rows: R tensors (N, 3, H, W) → (3, R·(H + p) + p, N·(W + p) + p)
    """
    padded = [F.pad(r, (padding, 0, padding, 0)) for r in rows]  # (N, 3, H + p, W + p), pad top/left
    tiled = torch.cat([torch.cat(list(r), dim=-1) for r in padded], dim=-2)  # (3, R·(H + p), N·(W + p))
    return F.pad(tiled, (0, padding, 0, padding))


class TensorBoardLogger:
    """Writes scalars and image grids to ``log_dir``; does nothing when disabled or unavailable.

    Args:
        log_dir: the event folder (``RUN_DIR/tb``).
        enabled: False on ranks other than 0 and when ``tensorboard: false``.
        image_every: log an image grid every this many steps (0: never).
        palette: 0xRRGGBB per class, for labels and predictions.
    """

    def __init__(self, log_dir: Path, *, enabled: bool, image_every: int, palette: Sequence[int]) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.image_every = image_every
        self.palette = list(palette)
        self._writer: Any = None

    def open(self, step: int) -> None:
        """Start writing at ``step`` (the run's current step): later events of an earlier,
        interrupted session are purged so that a resumed run shows one timeline."""
        if not self.enabled or self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _log.info("TensorBoard logging is off: the tensorboard package is not installed "
                      "(pip install tensorboard); log.jsonl has every number")
            self.enabled = False
            return
        self._writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step else None)

    def close(self) -> None:
        """Flush and close the event file (reopened by the next :meth:`open`)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def scalars(self, prefix: str, values: Mapping[str, float | None], step: int) -> None:
        """``prefix/<name>`` for every defined value (``None``: undefined, e.g. an unseen class)."""
        if self._writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def wants_images(self, step: int) -> bool:
        """Whether :meth:`images` should be called at this step."""
        return self._writer is not None and self.image_every > 0 and step % self.image_every == 0

    @torch.no_grad()
    def images(self, step: int, model: nn.Module, batch: Mapping[str, torch.Tensor], *, device: torch.device,
               amp_dtype: torch.dtype | None) -> None:
        """One grid of inputs, fused image, labels and prediction of the first samples of ``batch``."""
        if self._writer is None:
            return
        rgb = batch["rgb"][:_MAX_IMAGES].to(device)
        thermal = batch["thermal"][:_MAX_IMAGES].to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(rgb, thermal)
        finally:
            model.train(was_training)
        rows = [rgb, thermal.expand(-1, 3, -1, -1), out.fused.float().clamp(0, 1)]
        if out.logits is not None and self.palette:
            rows.append(colorize_labels(batch["labels"][:_MAX_IMAGES].to(device), self.palette))
            rows.append(colorize_labels(out.logits.argmax(1), self.palette))
        self._writer.add_image("samples", image_grid([r.float().cpu() for r in rows]), step)
