"""The generator's output is pinned: the same seed gives the same scenes, folders and bags.

Training recipes, held-out test seeds and the bundled weights' reported scores all name scenes
by seed and index, so any change to what they contain must be deliberate. The hashes were taken
from ``ivf_perception/io/synthetic.py`` before it became the ``ivf_perception.scenes`` package
(the move was checked byte for byte, PNG and MCAP files included) and cover pixels, labels,
metadata and stamps (``index.json`` names the new module as its generator; nothing else in it
changed). PNG files are hashed decoded, so a newer zlib cannot fail the test; a
change in OpenCV's or numpy's arithmetic can: then look at the images before re-pinning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ivf_perception.io import header_stamp_ns, read_image, read_image_messages
from ivf_perception.scenes import SceneConfig, generate_scene, write_scene_bag, write_scene_folder

SCENES = {
    "default": (SceneConfig(), "50477528a885a77a1f49e462afe7ef6e8a069c04b67d289b70adb1aa005dcf07"),
    "night": (SceneConfig(night=True, seed=3), "b7129a91cd19606cfa65d817f0dec71f388d7d8813722262c3c7d7293f588f7a"),
    "day_small": (SceneConfig(height=96, width=128, night=False, seed=7),
                  "86945ef631333e67cc2b0a8d02711ced54ab174003311cd858f5798d6ec3091d"),
    "shifted": (SceneConfig(thermal_misregistration_px=(1.5, -2.0), seed=11),
                "0900d4bbd4aed9ea90d8726923cf1697c59a28f9b4e34cbe920cdec5c6cd8f9c"),
}
FOLDERS = {8: "04328e1e85f54842a9d47e947660784a804590f3cc45d36686774fdc5b905f12",
           16: "d2b53bfbe84d36d3426804f4a9dfb3176da58b23541c433e5ce44ae21ffadc45"}
BAGS = {"mono8": "545f85fb42598b77d37ed596b3f708a06a54eca0eacb6e5a9d655f70dbe54ffa",
        "mono16": "662e44d59b4144a0cf920faa671fde0c600f58f0f389a278954abf0ec90d50c5"}


def _update(digest: hashlib._Hash, array: np.ndarray) -> None:
    digest.update(array.tobytes())
    digest.update(repr((array.shape, array.dtype.str)).encode())


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scenes_are_pinned(name: str) -> None:
    config, expected = SCENES[name]
    digest = hashlib.sha256()
    for index in range(4):
        scene = generate_scene(index, config)
        for array in (scene.rgb, scene.thermal, scene.thermal16, scene.labels):
            _update(digest, array)
        digest.update(repr((scene.index, scene.is_night, scene.ambient_c, scene.thermal_shift)).encode())
    assert digest.hexdigest() == expected


@pytest.mark.parametrize("bits", sorted(FOLDERS))
def test_folders_are_pinned(tmp_path: Path, bits: int) -> None:
    root = write_scene_folder(tmp_path / "scenes", 3, SceneConfig(seed=5), start=2, thermal_bits=bits)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        if path.suffix == ".png":
            _update(digest, read_image(path))
        else:
            digest.update(json.dumps(json.loads(path.read_text()), sort_keys=True).encode())
    assert digest.hexdigest() == FOLDERS[bits]


@pytest.mark.parametrize("encoding", sorted(BAGS))
def test_bags_are_pinned(tmp_path: Path, encoding: str) -> None:
    path = write_scene_bag(tmp_path / "bag", 3, SceneConfig(seed=9), thermal_encoding=encoding)
    digest = hashlib.sha256()
    for message in read_image_messages(path):
        msg = message.msg
        digest.update(repr((message.topic, message.stamp_ns, header_stamp_ns(msg), msg.header.frame_id,
                            msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian)).encode())
        digest.update(bytes(msg.data))
    assert digest.hexdigest() == BAGS[encoding]
