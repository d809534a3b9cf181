"""Image I/O without ROS: message codec, thermal AGC, registration, files, bags.

Everything here is a pure function on numpy arrays (torch only in ``agc_percentile_torch``,
imported lazily), usable by the node, bag replay, tools and training alike. rclpy is imported
only when an rclpy message is built (``numpy_to_image`` without ``msg_type``); rosbags only when
a bag is read or written.
"""

from .bag import (
    IMAGE_MSGTYPE,
    STORAGES,
    BagFrame,
    BagMessage,
    get_typestore,
    list_topics,
    read_image_messages,
    write_image_bag,
)
from .classes import MFNET_CLASSES, MFNET_PALETTE, colorize_labels, palette_to_array
from .errors import (
    AGCError,
    BagError,
    BagNotFoundError,
    DatasetError,
    DatasetNotFoundError,
    HomographyError,
    ImageDecodeError,
    ImageEncodeError,
    ImageFieldError,
    ImageFileError,
    ImageFileNotFoundError,
    IVFIOError,
    ThermalColourWarning,
    UnsupportedEncodingError,
)
from .image_codec import (
    ENCODINGS,
    SUPPORTED_ENCODINGS,
    EncodingInfo,
    decode_rgb,
    decode_thermal,
    encoding_info,
    header_stamp_ns,
    image_to_numpy,
    make_header,
    numpy_to_image,
    stamp_to_ns,
    to_rgb,
)
from .image_files import (
    IMAGE_EXTENSIONS,
    ImagePair,
    PairListing,
    find_pairs,
    read_image,
    read_mfnet_4ch,
    read_rgb,
    read_thermal,
    write_png,
)
from .registration import INTERPOLATIONS, resize_to, validate_homography, warp_thermal
from .thermal import AGCConfig, agc_percentile, agc_percentile_torch

__all__ = [
    # codec
    "ENCODINGS",
    "SUPPORTED_ENCODINGS",
    "EncodingInfo",
    "encoding_info",
    "image_to_numpy",
    "numpy_to_image",
    "make_header",
    "stamp_to_ns",
    "header_stamp_ns",
    "to_rgb",
    "decode_rgb",
    "decode_thermal",
    # thermal
    "AGCConfig",
    "agc_percentile",
    "agc_percentile_torch",
    # registration
    "INTERPOLATIONS",
    "validate_homography",
    "warp_thermal",
    "resize_to",
    # files
    "IMAGE_EXTENSIONS",
    "ImagePair",
    "PairListing",
    "read_image",
    "read_rgb",
    "read_thermal",
    "read_mfnet_4ch",
    "write_png",
    "find_pairs",
    # bags
    "IMAGE_MSGTYPE",
    "STORAGES",
    "BagFrame",
    "BagMessage",
    "get_typestore",
    "write_image_bag",
    "read_image_messages",
    "list_topics",
    # classes
    "MFNET_CLASSES",
    "MFNET_PALETTE",
    "palette_to_array",
    "colorize_labels",
    # errors
    "IVFIOError",
    "UnsupportedEncodingError",
    "ImageDecodeError",
    "ImageEncodeError",
    "ImageFieldError",
    "AGCError",
    "HomographyError",
    "ImageFileError",
    "ImageFileNotFoundError",
    "DatasetError",
    "DatasetNotFoundError",
    "BagError",
    "BagNotFoundError",
    "ThermalColourWarning",
]
