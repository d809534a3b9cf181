"""Reference fusions every learned model must beat: pixel average and pixel maximum.

They fuse luminance (visible Y with thermal) and keep the visible colour (Cb/Cr), the same
colour handling as our models, so fusion metrics on the gray image compare like with like.
"""

from __future__ import annotations

import numpy as np
import torch

from ivf_perception.models.layers.color import rgb_to_ycbcr, ycbcr_to_rgb

__all__ = ["baseline_fuse", "BASELINES"]

BASELINES = ("mean", "max")


def baseline_fuse(rgb: np.ndarray, thermal: np.ndarray, mode: str = "mean") -> np.ndarray:
    """Fuse by pixel average or maximum of luminance.

    Args:
        rgb: H×W×3 uint8.
        thermal: H×W float in [0, 1] (as ``engine.preprocess.prepare_thermal`` returns), same size.
        mode: ``"mean"`` or ``"max"``.

    Returns:
        H×W×3 uint8 fused RGB.
    """
    if mode not in BASELINES:
        raise ValueError(f"unknown baseline '{mode}'; expected one of {', '.join(BASELINES)}")
    if rgb.shape[:2] != thermal.shape:
        raise ValueError(f"baseline needs equal sizes, got RGB {rgb.shape[:2]} and thermal {thermal.shape}")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    t = torch.from_numpy(np.ascontiguousarray(thermal, dtype=np.float32))[None]
    ycc = rgb_to_ycbcr(x)
    y = 0.5 * (ycc[:1] + t) if mode == "mean" else torch.maximum(ycc[:1], t)
    out = ycbcr_to_rgb(torch.cat((y, ycc[1:]), dim=0)).clamp(0, 1)
    return (out * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
