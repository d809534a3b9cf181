"""Messages with which the node's outputs describe themselves (issue 14 part 4).

Why: image_proc, Foxglove and projection tools need a ``camera_info`` next to an image, and a
subscriber to ``segmentation/labels`` needs the class table to read the ids. ``fused/camera_info``
is the RGB camera's calibration (the fused image is in the RGB frame) with the RGB header,
rescaled when the output size differs; ``segmentation/class_info`` carries names, palette and
the ignore id, published latched (transient local) so late subscribers get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IGNORE_ID", "class_info_message", "fused_camera_info", "rclpy_class_info_type"]

# the ground-truth id of pixels without a class (metrics.segmentation's default ignore_index)
IGNORE_ID = 255


def fused_camera_info(rgb_info: Any, header: Any, width: int, height: int) -> Any:
    """A copy of ``rgb_info`` for an output of ``width`` x ``height`` stamped with ``header``.

    The intrinsics scale with the size ratio, as image_proc's resize does (K and P rows 0 and 1,
    ROI); distortion and rectification are size-independent. A camera_info without a size
    (0x0) is copied unscaled.
    """
    from sensor_msgs.msg import CameraInfo, RegionOfInterest

    sx = width / rgb_info.width if rgb_info.width else 1.0
    sy = height / rgb_info.height if rgb_info.height else 1.0
    k, p = [float(v) for v in rgb_info.k], [float(v) for v in rgb_info.p]
    for i in (0, 1, 2):
        k[i] *= sx
        k[3 + i] *= sy
    for i in (0, 1, 2, 3):
        p[i] *= sx
        p[4 + i] *= sy
    roi = rgb_info.roi
    return CameraInfo(
        header=header, width=int(width), height=int(height), distortion_model=rgb_info.distortion_model,
        d=list(rgb_info.d), k=k, r=list(rgb_info.r), p=p, binning_x=rgb_info.binning_x,
        binning_y=rgb_info.binning_y,
        roi=RegionOfInterest(x_offset=round(roi.x_offset * sx), y_offset=round(roi.y_offset * sy),
                             width=round(roi.width * sx), height=round(roi.height * sy),
                             do_rectify=roi.do_rectify))


def class_info_message(msg_type: type, header: Any, names: Sequence[str], palette: Sequence[int]) -> Any:
    """``ivf_perception_msgs/ClassInfo`` of a class table; ``palette`` is ``0xRRGGBB`` per class,
    sent flat as R, G, B bytes (no bit unpacking for a subscriber)."""
    from ivf_perception.io.classes import palette_to_array

    return msg_type(header=header, names=list(names), palette=palette_to_array(palette).tobytes(), ignore_id=IGNORE_ID)


def rclpy_class_info_type() -> type:
    """The rclpy class ``ivf_perception_msgs.msg.ClassInfo``.

    Raises:
        ImportError: the interface package is not built or predates ClassInfo, with how to build it.
    """
    try:
        from ivf_perception_msgs.msg import ClassInfo
    except ImportError as exc:
        raise ImportError(
            f"ivf_perception_msgs.msg.ClassInfo is not installed ({exc}); rebuild ivf_perception_msgs/ with "
            "`colcon build` (ROS install) or `python ivf_perception_msgs/install_into_venv.py` (pip wheels)"
        ) from exc
    return ClassInfo
