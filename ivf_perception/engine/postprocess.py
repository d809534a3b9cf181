"""Turn model outputs into what robots publish: uint8 RGB, uint8 class ids, colour overlays.

Pure numpy/torch functions so the node, replay and the CLI produce identical images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ivf_perception.io.classes import colorize_labels

__all__ = ["to_uint8_rgb", "logits_to_labels", "make_overlay"]


def to_uint8_rgb(fused: torch.Tensor) -> np.ndarray:
    """Convert a fused image to uint8, rounding (not truncating) so 0.5/255 steps survive.

    Shape:
        fused: (B, 3, H, W) in [0, 1]  ->  (B, H, W, 3) uint8
    """
    x = fused.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def logits_to_labels(logits: torch.Tensor) -> np.ndarray:
    """Class ids by argmax over K (K ≤ 256 so ids fit mono8).

    Shape:
        logits: (B, K, H, W)  ->  (B, H, W) uint8
    """
    if logits.shape[1] > 256:
        raise ValueError(f"{logits.shape[1]} classes do not fit a mono8 label image (max 256)")
    # argmax over a strided channel axis is slow on CPU: at 480×640 with 9 classes it took 27 ms
    # on 2 cores, against 7 ms for a channels-last copy reduced over its contiguous last axis.
    # Both return the first maximum, so the labels are identical (ties included).
    channels_last = logits.permute(0, 2, 3, 1).contiguous()
    return channels_last.argmax(dim=-1).to(torch.uint8).cpu().numpy()


def make_overlay(rgb: np.ndarray, labels: np.ndarray, palette: Sequence[int], alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours (0xRRGGBB list) over an RGB image; class 0 (unlabelled) stays transparent.

    Shape:
        rgb: (H, W, 3) uint8, labels: (H, W) uint8  ->  (H, W, 3) uint8
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"overlay needs equal sizes, got image {rgb.shape[:2]} and labels {labels.shape}")
    colours = colorize_labels(labels, palette)
    # uint8 blending in OpenCV: ~10x faster than a float32 numpy blend at 640x480 (replay bench)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colours, alpha, 0.0)
    out = rgb.copy()
    mask = labels > 0
    out[mask] = blended[mask]
    return out
