"""Exception and warning types of ``ivf_perception.io``.

Every error is a subclass of :class:`ValueError` (bad data or arguments) so callers that already
catch ``ValueError`` keep working, while callers that care can catch the precise type. Errors about
missing files are also :class:`FileNotFoundError`, so ``except OSError`` around file access works
as usual.
"""

from __future__ import annotations

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "IVFIOError",
    "UnsupportedEncodingError",
    "ImageFieldError",
    "ImageDecodeError",
    "ImageEncodeError",
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


class IVFIOError(IvfPerceptionError, ValueError):
    """Base class of all errors raised by ``ivf_perception.io``."""


class ImageDecodeError(IVFIOError):
    """A ``sensor_msgs/Image`` (or image buffer) cannot be turned into an array as declared."""


class ImageEncodeError(IVFIOError):
    """An array cannot be turned into a ``sensor_msgs/Image`` with the requested encoding."""


class UnsupportedEncodingError(ImageDecodeError, ImageEncodeError):
    """The image encoding is not one this package converts (raised when decoding and encoding)."""


class ImageFieldError(ImageDecodeError, ImageEncodeError, TypeError):
    """A message, header or array given to the codec lacks a field or has one of the wrong type
    (``height="480"``, ``stamp.sec=None``, a list where an array belongs).

    Also a :class:`TypeError`, which such input raised before, so older callers still catch it;
    a node catching the package's errors now skips the frame instead of logging a traceback.
    """


class AGCError(IVFIOError):
    """Invalid automatic-gain-control parameters or input (e.g. percentiles out of order)."""


class HomographyError(IVFIOError):
    """A registration homography is malformed: wrong shape, non-finite or singular."""


class ImageFileError(IVFIOError):
    """An image file cannot be read, decoded or written."""


class ImageFileNotFoundError(ImageFileError, FileNotFoundError):
    """An image file does not exist."""


class DatasetError(IVFIOError):
    """A dataset folder does not have the expected layout or contents."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder does not exist."""


class BagError(IVFIOError):
    """A rosbag cannot be read or written as requested."""


class BagNotFoundError(BagError, FileNotFoundError):
    """A rosbag path does not exist."""


class ThermalColourWarning(UserWarning):
    """A thermal image carried genuine colour (a false-colour palette) and was reduced to luminance.

    The luminance of a false-colour palette is only an approximation of the underlying
    temperature ordering (palettes such as ironbow are not monotonic in luminance).
    """
