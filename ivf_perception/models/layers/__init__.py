"""Shared building blocks of the model families, one concept per file (timm's ``layers``)."""

from ivf_perception.models.layers.color import BT601_LUMA, rgb_to_gray, rgb_to_ycbcr, ycbcr_to_rgb
from ivf_perception.models.layers.cross_scan import NUM_DIRECTIONS, cross_merge, cross_scan
from ivf_perception.models.layers.cross_ss2d import CrossSS2D, interleave
from ivf_perception.models.layers.drop_path import DropPath, drop_path
from ivf_perception.models.layers.factories import get_norm_layer
from ivf_perception.models.layers.mlp import Mlp
from ivf_perception.models.layers.ss2d import SS2D
from ivf_perception.models.layers.vss_block import VSSBlock

__all__ = [
    "BT601_LUMA",
    "CrossSS2D",
    "DropPath",
    "Mlp",
    "NUM_DIRECTIONS",
    "SS2D",
    "VSSBlock",
    "cross_merge",
    "cross_scan",
    "drop_path",
    "get_norm_layer",
    "interleave",
    "rgb_to_gray",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]
