"""Generated scenes: determinism, label coverage, physics sanity, folder and bag writers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivf_perception.io import (
    MFNET_CLASSES,
    MFNET_PALETTE,
    BagError,
    IVFIOError,
    find_pairs,
    header_stamp_ns,
    image_to_numpy,
    list_topics,
    palette_to_array,
    read_image,
    read_image_messages,
    read_rgb,
)
from ivf_perception.scenes import (
    BASE_STAMP_NS,
    PERSON,
    UNLABELLED,
    SceneConfig,
    generate_scene,
    iter_scenes,
    scene_stamp_ns,
    write_scene_bag,
    write_scene_folder,
)


@pytest.fixture(scope="module")
def scenes():
    return list(iter_scenes(8, SceneConfig()))


class TestClasses:
    def test_names_and_palette(self):
        assert MFNET_CLASSES == (
            "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
        )
        expected = [(0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0),
                    (64, 64, 128), (192, 128, 128), (192, 64, 0)]
        assert palette_to_array(MFNET_PALETTE).tolist() == [list(c) for c in expected]
        with pytest.raises(ValueError, match="palette entry 1 must be an integer 0xRRGGBB"):
            palette_to_array([0, 0x1000000])


class TestGenerateScene:
    def test_cardinality(self, scenes):
        for scene in scenes:
            assert scene.rgb.shape == (240, 320, 3) and scene.rgb.dtype == np.uint8
            assert scene.thermal.shape == (240, 320) and scene.thermal.dtype == np.uint8
            assert scene.thermal16.shape == (240, 320) and scene.thermal16.dtype == np.uint16
            assert scene.labels.shape == (240, 320) and scene.labels.dtype == np.uint8
            assert scene.labels.max() < len(MFNET_CLASSES)
        small = generate_scene(0, SceneConfig(height=96, width=128))
        assert small.rgb.shape == (96, 128, 3) and small.labels.shape == (96, 128)

    def test_deterministic(self):
        cfg = SceneConfig(seed=7, thermal_misregistration_px=3)
        a, b = generate_scene(5, cfg), generate_scene(5, cfg)
        for name in ("rgb", "thermal", "thermal16", "labels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.is_night == b.is_night and a.ambient_c == b.ambient_c
        # independent of generation order and of other indices
        list(iter_scenes(3, cfg))
        np.testing.assert_array_equal(generate_scene(5, cfg).rgb, a.rgb)
        assert not np.array_equal(generate_scene(6, cfg).rgb, a.rgb)
        assert not np.array_equal(generate_scene(5, SceneConfig(seed=8)).rgb, a.rgb)

    def test_all_classes_appear(self, scenes):
        present = set()
        for scene in scenes:
            present |= set(np.unique(scene.labels).tolist())
        assert present == set(range(9)), f"missing classes {set(range(9)) - present}"

    def test_objects_are_not_specks(self, scenes):
        """Every class that appears covers enough pixels to learn from."""
        for scene in scenes:
            counts = np.bincount(scene.labels.ravel(), minlength=9)
            for cls in np.nonzero(counts)[0]:
                assert counts[cls] >= 8, (scene.index, MFNET_CLASSES[cls], counts[cls])

    def test_night_rgb_darker_than_day(self):
        day = [generate_scene(i, SceneConfig(night=False)) for i in range(3)]
        night = [generate_scene(i, SceneConfig(night=True)) for i in range(3)]
        assert all(not s.is_night for s in day) and all(s.is_night for s in night)
        day_mean = np.mean([s.rgb.mean() for s in day])
        night_mean = np.mean([s.rgb.mean() for s in night])
        assert night_mean < 0.5 * day_mean, (day_mean, night_mean)

    def test_forcing_night_keeps_the_layout(self):
        for i in range(3):
            day, night = generate_scene(i, SceneConfig(night=False)), generate_scene(i, SceneConfig(night=True))
            np.testing.assert_array_equal(day.labels, night.labels)
            assert day.rgb.mean() > 2 * night.rgb.mean()

    def test_night_needs_thermal(self):
        """People at night: weak RGB contrast, strong thermal contrast against the background."""
        rgb_contrast, thermal_contrast = [], []
        for i in range(6):
            s = generate_scene(i, SceneConfig(night=True))
            person, bg = s.labels == PERSON, s.labels == UNLABELLED
            if person.sum() < 30:
                continue
            gray = s.rgb.mean(axis=2)
            rgb_contrast.append(abs(gray[person].mean() - gray[bg].mean()) / 255.0)
            thermal_contrast.append(abs(float(s.thermal[person].mean()) - s.thermal[bg].mean()) / 255.0)
        assert len(thermal_contrast) >= 2
        assert np.mean(thermal_contrast) > 2 * np.mean(rgb_contrast)

    def test_persons_hotter_than_background(self, scenes):
        checked = 0
        for scene in scenes:
            person = scene.labels == PERSON
            if person.sum() < 30:
                continue
            background = scene.labels == UNLABELLED
            assert scene.thermal16[person].mean() > scene.thermal16[background].mean() + 100
            assert scene.thermal[person].mean() > scene.thermal[background].mean() + 20
            checked += 1
        assert checked >= 3

    def test_thermal8_is_agc_of_thermal16(self, scenes):
        from ivf_perception.io import agc_percentile

        s = scenes[0]
        np.testing.assert_array_equal(s.thermal, np.rint(agc_percentile(s.thermal16) * 255).astype(np.uint8))

    def test_misregistration_shifts_thermal_only(self):
        quiet = dict(thermal_noise_std=0.0, thermal_fpn_std=0.0)
        base = generate_scene(2, SceneConfig(**quiet))
        shifted = generate_scene(2, SceneConfig(thermal_misregistration_px=(4, 2), **quiet))
        np.testing.assert_array_equal(shifted.rgb, base.rgb)
        np.testing.assert_array_equal(shifted.labels, base.labels)
        np.testing.assert_array_equal(shifted.thermal16[10:-10, 10:-10], base.thermal16[8:-12, 6:-14])
        assert shifted.thermal_shift == (4.0, 2.0)

    def test_exception(self):
        with pytest.raises(IVFIOError, match="at least 64x64"):
            SceneConfig(height=10)
        with pytest.raises(IVFIOError, match="rgb_noise_std must be a finite number >= 0"):
            SceneConfig(rgb_noise_std=-1)
        with pytest.raises(IVFIOError, match=r"number or \(dx, dy\)"):
            SceneConfig(thermal_misregistration_px="left")
        with pytest.raises(IVFIOError, match="non-negative integer"):
            generate_scene(-1)
        with pytest.raises(IVFIOError, match="seed must be a non-negative integer"):
            SceneConfig(seed=-3)


class TestWriters:
    def test_folder(self, tmp_path):
        cfg = SceneConfig(height=64, width=96, seed=3)
        root = write_scene_folder(tmp_path / "ds", 3, cfg, start=10)
        meta = json.loads((root / "index.json").read_text())
        assert [f["name"] for f in meta["frames"]] == ["000010", "000011", "000012"]
        assert meta["classes"] == list(MFNET_CLASSES) and meta["config"]["seed"] == 3
        listing = find_pairs(root / "ir", root / "vi")
        assert listing.stems == ["000010", "000011", "000012"] and not listing.missing_ir
        for frame in meta["frames"]:
            scene = generate_scene(frame["index"], cfg)
            assert frame["is_night"] == scene.is_night
            assert frame["stamp_ns"] == scene_stamp_ns(frame["index"])
            name = frame["name"]
            np.testing.assert_array_equal(read_rgb(root / "vi" / f"{name}.png"), scene.rgb)
            np.testing.assert_array_equal(read_image(root / "ir" / f"{name}.png"), scene.thermal)
            np.testing.assert_array_equal(read_image(root / "labels" / f"{name}.png"), scene.labels)
        root16 = write_scene_folder(tmp_path / "ds16", 1, cfg, thermal_bits=16)
        np.testing.assert_array_equal(read_image(root16 / "ir" / "000000.png"), generate_scene(0, cfg).thermal16)

    def test_mcap_bag(self, tmp_path):
        cfg = SceneConfig(height=64, width=96, seed=1)
        bag = write_scene_bag(tmp_path / "scenes", 4, cfg, fps=10.0, jitter_ns=4_000_000)
        assert list_topics(bag) == {
            "/camera/rgb/image": "sensor_msgs/msg/Image",
            "/camera/thermal/image": "sensor_msgs/msg/Image",
            "/camera/rgb/labels": "sensor_msgs/msg/Image",
        }
        by_topic: dict[str, list] = {}
        last = -1
        for topic, stamp, msg in read_image_messages(bag):
            assert stamp >= last  # record-time order
            last = stamp
            assert header_stamp_ns(msg) == stamp
            by_topic.setdefault(topic, []).append(msg)
        assert {t: len(v) for t, v in by_topic.items()} == {
            "/camera/rgb/image": 4, "/camera/thermal/image": 4, "/camera/rgb/labels": 4,
        }
        offsets = []
        streams = zip(by_topic["/camera/rgb/image"], by_topic["/camera/thermal/image"], by_topic["/camera/rgb/labels"])
        for i, (rgb, th, lab) in enumerate(streams):
            scene = generate_scene(i, cfg)
            assert header_stamp_ns(rgb) == BASE_STAMP_NS + i * 100_000_000 == scene_stamp_ns(i)
            assert header_stamp_ns(lab) == header_stamp_ns(rgb)
            offsets.append(header_stamp_ns(th) - header_stamp_ns(rgb))
            assert rgb.encoding == "rgb8" and th.encoding == "mono8" and lab.encoding == "mono8"
            assert rgb.header.frame_id == lab.header.frame_id != th.header.frame_id
            np.testing.assert_array_equal(image_to_numpy(rgb), scene.rgb)
            np.testing.assert_array_equal(image_to_numpy(th), scene.thermal)
            np.testing.assert_array_equal(image_to_numpy(lab), scene.labels)
        assert all(abs(o) <= 4_000_000 for o in offsets) and any(o != 0 for o in offsets)
        # deterministic jitter
        again = write_scene_bag(tmp_path / "again", 4, cfg, fps=10.0, jitter_ns=4_000_000)
        stamps = [header_stamp_ns(m) for _, _, m in read_image_messages(again, ["/camera/thermal/image"])]
        assert [s - scene_stamp_ns(i) for i, s in enumerate(stamps)] == offsets

    def test_sqlite_mono16_without_labels(self, tmp_path):
        cfg = SceneConfig(height=64, width=64)
        bag = write_scene_bag(
            tmp_path / "raw", 2, cfg, storage="sqlite3", thermal_encoding="mono16", label_topic=None, jitter_ns=0
        )
        assert sorted(list_topics(bag)) == ["/camera/rgb/image", "/camera/thermal/image"]
        msgs = list(read_image_messages(bag, topics=["/camera/thermal/image"]))
        assert [m.msg.encoding for m in msgs] == ["mono16", "mono16"]
        np.testing.assert_array_equal(image_to_numpy(msgs[1].msg), generate_scene(1, cfg).thermal16)
        assert [m.stamp_ns for m in msgs] == [scene_stamp_ns(0), scene_stamp_ns(1)]

    def test_bag_errors(self, tmp_path):
        with pytest.raises(IVFIOError, match=r"jitter_ns must be an integer in \[0, period/2\)"):
            write_scene_bag(tmp_path / "b", 1, fps=10.0, jitter_ns=60_000_000)
        with pytest.raises(IVFIOError, match="thermal_encoding must be 'mono8' or 'mono16'"):
            write_scene_bag(tmp_path / "b", 1, thermal_encoding="rgb8")
        bag = write_scene_bag(tmp_path / "b", 1, SceneConfig(height=64, width=64))
        with pytest.raises(BagError, match="already exists; .* overwrite=True"):
            write_scene_bag(bag, 1)
        assert write_scene_bag(bag, 2, SceneConfig(height=64, width=64), overwrite=True) == bag
        assert len(list(read_image_messages(bag, ["/camera/rgb/image"]))) == 2
        precious = tmp_path / "precious"
        precious.mkdir()
        (precious / "notes.txt").write_text("keep me")
        with pytest.raises(BagError, match="refusing to overwrite .*notes.txt"):
            write_scene_bag(precious, 1, overwrite=True)
        assert (precious / "notes.txt").is_file()
        with pytest.raises(BagError, match=r"topics \['/nope'\] are not in bag .* it has: /camera/rgb/image"):
            read_image_messages(bag, ["/nope"])
        with pytest.raises(FileNotFoundError, match="bag not found"):
            read_image_messages(tmp_path / "missing")
        with pytest.raises(BagError, match=r"not a rosbag2 folder \(no metadata.yaml\); it is a folder containing: b/"):
            read_image_messages(tmp_path)
