"""Writers: generated scenes as an image folder or a rosbag2, with deterministic stamps."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ivf_perception.io.bag import BagFrame, write_image_bag
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
from ivf_perception.io.errors import IVFIOError
from ivf_perception.io.image_files import write_png
from ivf_perception.scenes.compose import check_index, iter_scenes
from ivf_perception.scenes.config import SceneConfig

__all__ = ["BASE_STAMP_NS", "scene_stamp_ns", "write_scene_bag", "write_scene_folder"]

BASE_STAMP_NS = 1_700_000_000 * 1_000_000_000  # 2023-11-14, so stamps look like wall time


def scene_stamp_ns(index: int, fps: float = 10.0) -> int:
    """Header stamp of scene ``index`` at ``fps`` (shared by the folder and bag writers)."""
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise IVFIOError(f"fps must be a positive number, got {fps!r}")
    return BASE_STAMP_NS + int(round(check_index(index) * 1e9 / fps))


def _thermal_jitter_ns(config: SceneConfig, index: int, jitter_ns: int) -> int:
    """Deterministic per-frame thermal stamp offset in ``[-jitter_ns, jitter_ns]``."""
    if jitter_ns == 0:
        return 0
    rng = np.random.default_rng([int(config.seed), int(index), 0x7E])  # independent of the scene
    return int(rng.integers(-jitter_ns, jitter_ns + 1))


def write_scene_folder(
    out_dir: str | os.PathLike[str],
    count: int,
    config: SceneConfig | None = None,
    start: int = 0,
    *,
    fps: float = 10.0,
    thermal_bits: int = 8,
) -> Path:
    """Write scenes in the project's generic folder layout.

    Layout: ``vi/NAME.png`` (RGB), ``ir/NAME.png`` (gray; 8-bit AGC output, or raw 16-bit
    counts with ``thermal_bits=16``), ``labels/NAME.png`` (class ids), with ``NAME`` the
    zero-padded index (``000000``), plus ``index.json`` holding the configuration, class names,
    palette and per-frame ``name``, ``index``, ``is_night`` and ``stamp_ns``.

    Returns:
        ``out_dir`` as a Path.
    """
    cfg = SceneConfig() if config is None else config
    if thermal_bits not in (8, 16):
        raise IVFIOError(f"thermal_bits must be 8 or 16, got {thermal_bits!r}")
    root = Path(out_dir)
    frames = []
    for scene in iter_scenes(count, cfg, start):
        name = f"{scene.index:06d}"
        write_png(root / "vi" / f"{name}.png", scene.rgb)
        write_png(root / "ir" / f"{name}.png", scene.thermal if thermal_bits == 8 else scene.thermal16)
        write_png(root / "labels" / f"{name}.png", scene.labels)
        frames.append({
            "name": name,
            "index": scene.index,
            "is_night": scene.is_night,
            "stamp_ns": scene_stamp_ns(scene.index, fps),
        })
    meta = {
        "generator": "ivf_perception.scenes",
        "config": cfg.as_record(),
        "fps": fps,
        "thermal_bits": thermal_bits,
        "classes": list(MFNET_CLASSES),
        "palette": list(MFNET_PALETTE),
        "frames": frames,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def write_scene_bag(
    path: str | os.PathLike[str],
    count: int,
    config: SceneConfig | None = None,
    fps: float = 10.0,
    storage: str = "mcap",
    rgb_topic: str = "/camera/rgb/image",
    thermal_topic: str = "/camera/thermal/image",
    label_topic: str | None = "/camera/rgb/labels",
    thermal_encoding: str = "mono8",
    jitter_ns: int = 3_000_000,
    *,
    start: int = 0,
    rgb_frame_id: str = "camera_rgb_optical_frame",
    thermal_frame_id: str = "camera_thermal_optical_frame",
    distro: str = "kilted",
    overwrite: bool = False,
) -> Path:
    """Write scenes as a rosbag2 with RGB, thermal and (optionally) label image topics.

    RGB (``rgb8``) and labels (``mono8`` class ids, RGB frame) carry :func:`scene_stamp_ns`;
    thermal (``mono8`` AGC output or ``mono16`` raw counts) is stamped with a deterministic
    per-frame offset in ``[-jitter_ns, jitter_ns]`` so approximate-time pairing is exercised.
    Record times equal header stamps; messages are written in time order. ``overwrite``
    replaces an existing bag folder (see :func:`~ivf_perception.io.bag.write_image_bag`).

    Raises:
        IVFIOError: bad fps, encoding or a jitter of half a frame period or more.
        BagError: the bag path exists (without ``overwrite``) or the storage is unknown.
    """
    cfg = SceneConfig() if config is None else config
    if thermal_encoding not in ("mono8", "mono16"):
        raise IVFIOError(f"thermal_encoding must be 'mono8' or 'mono16', got {thermal_encoding!r}")
    period_ns = 1e9 / fps if isinstance(fps, (int, float)) and fps > 0 else 0
    scene_stamp_ns(0, fps)  # validates fps
    if isinstance(jitter_ns, bool) or not isinstance(jitter_ns, (int, np.integer)) or not (
        0 <= jitter_ns < period_ns / 2
    ):
        raise IVFIOError(
            f"jitter_ns must be an integer in [0, period/2) = [0, {int(period_ns // 2)}) at "
            f"{fps} fps, got {jitter_ns!r}"
        )

    def frames() -> Iterator[BagFrame]:
        for scene in iter_scenes(count, cfg, start):
            stamp = scene_stamp_ns(scene.index, fps)
            th_stamp = stamp + _thermal_jitter_ns(cfg, scene.index, int(jitter_ns))
            th = scene.thermal if thermal_encoding == "mono8" else scene.thermal16
            batch = [
                BagFrame(rgb_topic, stamp, rgb_frame_id, scene.rgb, "rgb8"),
                BagFrame(thermal_topic, th_stamp, thermal_frame_id, th, thermal_encoding),
            ]
            if label_topic:
                batch.append(BagFrame(label_topic, stamp, rgb_frame_id, scene.labels, "mono8"))
            yield from sorted(batch, key=lambda f: f.stamp_ns)

    return write_image_bag(path, frames(), storage=storage, distro=distro, overwrite=overwrite)
