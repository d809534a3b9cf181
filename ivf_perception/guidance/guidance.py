"""The per-frame guidance a text-guided fusion network (TeSG) reads besides the image pair.

Why a type of its own: TeSG's mask M and text tokens F_t change with every scene, and they come
from several places (the offline Semantic Information Generator, a cache on disk, an asynchronous
worker on the robot). Whatever the source, the network receives the same object, checked once
here, so a mask of the wrong size or a token tensor of the wrong dtype fails with a message naming
the problem instead of broadcasting silently inside an attention layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ivf_perception.checks import checks_enabled
from ivf_perception.errors import IvfPerceptionError

__all__ = ["GUIDANCE_SOURCES", "Guidance", "GuidanceError"]

GUIDANCE_SOURCES = ("sig", "cache", "async", "explicit")
"""Where a :class:`Guidance` came from: the Semantic Information Generator run in this process,
the on-disk cache, the engine's asynchronous worker, or a caller that built it by hand (tests,
training batches). The fallback is not a source of guidance: it is its absence (``None``)."""


class GuidanceError(IvfPerceptionError, ValueError):
    """Guidance with the wrong shape, dtype, device or value range, or inconsistent with the images."""


@dataclass(frozen=True)
class Guidance:
    """TeSG's guidance for a batch of image pairs.

    Attributes:
        mask: B×1×H×W floating mask in [0, 1] (1 = foreground M, 0 = background); the SIG's masks
            are binary, a dilated or resized mask may hold fractions.
        text_tokens: B×L×d floating tokens F_t of the diffusion model's text encoder (L = 77,
            d = 1024 for SD-2.1); float32 from the cache, half precision allowed under an engine
            running in half.
        source: one of :data:`GUIDANCE_SOURCES`.
        age_s: seconds between the frame the guidance was computed for and the frame it is used
            with (0 for guidance of this very frame).

    Shape:
        mask (B, 1, H, W), text_tokens (B, L, d)

    Raises:
        GuidanceError: on construction, for ranks, dtypes, batch sizes, devices or mask values
            out of [0, 1] (the range check runs only while :func:`~ivf_perception.checks.checks_enabled`).
    """

    mask: torch.Tensor
    text_tokens: torch.Tensor
    source: str = "explicit"
    age_s: float = 0.0

    def __post_init__(self) -> None:
        if self.source not in GUIDANCE_SOURCES:
            raise GuidanceError(f"guidance source must be one of {GUIDANCE_SOURCES}, got {self.source!r}")
        if not self.age_s >= 0.0:  # also refuses NaN
            raise GuidanceError(f"guidance age must be >= 0 seconds, got {self.age_s}")
        for name, tensor, rank, layout in (("mask", self.mask, 4, "B×1×H×W"),
                                           ("text_tokens", self.text_tokens, 3, "B×L×d")):
            if not isinstance(tensor, torch.Tensor):
                raise GuidanceError(f"guidance {name}: expected a torch.Tensor ({layout}), got {type(tensor).__name__}")
            if not tensor.is_floating_point():
                raise GuidanceError(f"guidance {name}: expected a floating dtype (float32), got {tensor.dtype}; "
                                    f"convert with .float() (a mask scaled 0..255 must also be divided by 255)")
            if tensor.ndim != rank:
                raise GuidanceError(f"guidance {name}: expected {layout}, got shape {tuple(tensor.shape)}")
        if self.mask.shape[1] != 1:
            raise GuidanceError(f"guidance mask: expected one channel (B×1×H×W), got shape {tuple(self.mask.shape)}")
        if self.mask.shape[0] != self.text_tokens.shape[0]:
            raise GuidanceError(f"guidance batch sizes differ: mask {tuple(self.mask.shape)}, "
                                f"text_tokens {tuple(self.text_tokens.shape)}")
        if self.text_tokens.shape[1] < 1 or self.text_tokens.shape[2] < 1:
            raise GuidanceError(f"guidance text_tokens: need at least one token of width >= 1, "
                                f"got shape {tuple(self.text_tokens.shape)}")
        if self.mask.device != self.text_tokens.device:
            raise GuidanceError(f"guidance mask is on {self.mask.device} but text_tokens on {self.text_tokens.device}")
        if checks_enabled() and self.mask.numel() and not self.mask.is_meta:  # meta: cost counting
            low, high = float(self.mask.min()), float(self.mask.max())
            if not (low >= 0.0 and high <= 1.0):  # also refuses NaN
                raise GuidanceError(f"guidance mask values must lie in [0, 1], got [{low}, {high}]")

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def text_dim(self) -> int:
        """d, the width of the text tokens (the network's ``text_dim`` must match)."""
        return int(self.text_tokens.shape[2])

    def check_for(self, rgb: torch.Tensor, *, text_dim: int | None = None) -> None:
        """Check that this guidance fits the image batch ``rgb`` (B×3×H×W) and a network reading
        ``text_dim``-wide tokens.

        Raises:
            GuidanceError: naming the mismatching size.
        """
        batch, height, width = int(rgb.shape[0]), int(rgb.shape[-2]), int(rgb.shape[-1])
        if self.batch_size != batch:
            raise GuidanceError(f"guidance is for a batch of {self.batch_size}, the images are a batch of {batch}")
        if tuple(self.mask.shape[-2:]) != (height, width):
            raise GuidanceError(f"guidance mask is {self.mask.shape[-2]}x{self.mask.shape[-1]} but the images are "
                                f"{height}x{width}; resize or crop the mask with the images")
        if text_dim is not None and self.text_dim != text_dim:
            raise GuidanceError(f"guidance text tokens are {self.text_dim}-d but the network reads {text_dim}-d tokens "
                                f"(text_dim); the cache was made with another text encoder")
        if self.mask.device != rgb.device:
            raise GuidanceError(f"guidance is on {self.mask.device} but the images are on {rgb.device}; use .to()")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Guidance:
        """The same guidance on ``device`` / in floating ``dtype`` (both tensors)."""
        return replace(self, mask=self.mask.to(device=device, dtype=dtype),
                       text_tokens=self.text_tokens.to(device=device, dtype=dtype))

    def padded(self, bottom: int, right: int) -> Guidance:
        """The mask zero-padded at the bottom/right like the engine pads images (padding is
        background: no object there)."""
        if bottom == 0 and right == 0:
            return self
        mask = torch.nn.functional.pad(self.mask, (0, right, 0, bottom))
        return replace(self, mask=mask)

    def aged(self, age_s: float, source: str | None = None) -> Guidance:
        """This guidance marked ``age_s`` seconds old (and from ``source``)."""
        return replace(self, age_s=float(age_s), source=self.source if source is None else source)
