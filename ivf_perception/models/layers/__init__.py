"""Shared building blocks of the model families, one concept per file (timm's ``layers``)."""

from ivf_perception.models.layers.channel_attention import (
    ChannelAttention,
    ChannelAttentionBlock,
)
from ivf_perception.models.layers.channel_shuffle import channel_shuffle
from ivf_perception.models.layers.color import (
    BT601_LUMA,
    rgb_to_gray,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from ivf_perception.models.layers.cross_scan import (
    NUM_DIRECTIONS,
    cross_merge,
    cross_scan,
)
from ivf_perception.models.layers.cross_ss2d import CrossSS2D, interleave
from ivf_perception.models.layers.drop_path import DropPath, drop_path
from ivf_perception.models.layers.factories import DeviceLike, FactoryKwargs, factory_kwargs, get_norm_layer
from ivf_perception.models.layers.feature_maps import (
    check_feature_dims,
    check_feature_maps,
    resize_to,
)
from ivf_perception.models.layers.fft_filter import (
    FFTAmplitudeFilter,
    fft_amplitude_filter,
)
from ivf_perception.models.layers.mlp import Mlp
from ivf_perception.models.layers.restormer import (
    ChannelLayerNorm,
    Downsample,
    TransformerBlock,
    Upsample,
)
from ivf_perception.models.layers.segformer_head import (
    SegFormerHead,
    remap_legacy_segformer_keys,
)
from ivf_perception.models.layers.sobel import (
    SOBEL_BORDERS,
    Sobel,
    sobel_gradients,
    sobel_magnitude,
)
from ivf_perception.models.layers.ss2d import SS2D
from ivf_perception.models.layers.vss_block import VSSBlock
from ivf_perception.models.layers.window_scan import (
    window_merge,
    window_scan,
    window_scan_order,
)

__all__ = [
    "BT601_LUMA",
    "CrossSS2D",
    "DropPath",
    "Mlp",
    "NUM_DIRECTIONS",
    "SS2D",
    "VSSBlock",
    "channel_shuffle",
    "cross_merge",
    "cross_scan",
    "drop_path",
    "DeviceLike",
    "FactoryKwargs",
    "factory_kwargs",
    "get_norm_layer",
    "interleave",
    "rgb_to_gray",
    "rgb_to_ycbcr",
    "SOBEL_BORDERS",
    "Sobel",
    "sobel_gradients",
    "sobel_magnitude",
    "ycbcr_to_rgb",
    "window_merge",
    "window_scan",
    "window_scan_order",
    "FFTAmplitudeFilter",
    "fft_amplitude_filter",
    "ChannelAttention",
    "ChannelAttentionBlock",
    "ChannelLayerNorm",
    "Downsample",
    "TransformerBlock",
    "Upsample",
    "SegFormerHead",
    "check_feature_dims",
    "check_feature_maps",
    "remap_legacy_segformer_keys",
    "resize_to",
]
