"""Scenes generated on the fly: the only labelled RGB-thermal data available offline.

Why: no labelled benchmark can be downloaded here (CI, offline robots), yet segmentation training
must be checked end to end; :func:`ivf_perception.scenes.generate_scene` draws scenes with
known MFNet-class labels, deterministically from an index.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from torch.utils.data import Dataset

from ivf_perception.io.errors import DatasetError

from .common import Sample, to_sample

__all__ = ["GeneratedScenesDataset"]


class GeneratedScenesDataset(Dataset):
    """Scenes generated on the fly by :func:`ivf_perception.scenes.generate_scene`.

    Scene ``i`` of the dataset is ``generate_scene(start + i, config)``: deterministic, so the
    same indices always give the same scenes and disjoint index ranges give disjoint sets.

    Args:
        count: number of scenes.
        config: a ``SceneConfig``, a mapping of its fields, or ``None`` for the defaults.
        start: index of the first scene.
    """

    def __init__(self, count: int, config: Any = None, start: int = 0) -> None:
        from ivf_perception.scenes import SceneConfig

        if count < 1:
            raise DatasetError(f"GeneratedScenesDataset needs count >= 1, got {count}")
        if config is None:
            config = SceneConfig()
        elif not isinstance(config, SceneConfig):
            try:
                config = SceneConfig(**dict(config))
            except TypeError as exc:
                raise DatasetError(f"invalid generated scene settings {dict(config)}: {exc}") from exc
        self.count = count
        self.config = config
        self.start = start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        from ivf_perception.scenes import generate_scene

        if not 0 <= index < self.count:
            raise IndexError(f"scene index {index} out of range for {self.count} scenes")
        scene = generate_scene(self.start + index, self.config)
        return to_sample(scene.rgb, scene.thermal, scene.labels, f"scene_{self.start + index:07d}")

    def describe(self) -> dict[str, Any]:
        """What the sidecar records about this dataset."""
        cfg = asdict(self.config) if is_dataclass(self.config) else repr(self.config)
        return {"kind": "generated", "count": self.count, "start": self.start, "scene": cfg}
