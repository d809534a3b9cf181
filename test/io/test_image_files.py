"""Image file readers/writers and visible/thermal folder pairing."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from ivf_perception.io import (
    AGCConfig,
    DatasetError,
    DatasetNotFoundError,
    ImageFileError,
    ImageFileNotFoundError,
    ThermalColourWarning,
    agc_percentile,
    find_pairs,
    read_image,
    read_mfnet_4ch,
    read_rgb,
    read_thermal,
    write_png,
)

RNG = np.random.default_rng(0)


def rand(shape, dtype=np.uint8):
    high = 256 if dtype == np.uint8 else 65536
    return RNG.integers(0, high, size=shape).astype(dtype)


class TestReadWrite:
    def test_png_round_trip_keeps_rgb_order(self, tmp_path):
        rgb = rand((6, 7, 3))
        path = write_png(tmp_path / "deep" / "er" / "x.png", rgb)
        assert path.is_file()
        np.testing.assert_array_equal(read_image(path), rgb)
        # on disk it is a normal PNG: OpenCV (BGR) sees the channels reversed
        np.testing.assert_array_equal(cv2.imread(str(path))[:, :, ::-1], rgb)

    def test_rgba_gray_and_16bit(self, tmp_path):
        rgba = rand((5, 4, 4))
        np.testing.assert_array_equal(read_image(write_png(tmp_path / "a.png", rgba)), rgba)
        gray = rand((5, 4))
        np.testing.assert_array_equal(read_image(write_png(tmp_path / "g.png", gray)), gray)
        raw = rand((5, 4), np.uint16)
        out = read_image(write_png(tmp_path / "r.png", raw))
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, raw)

    def test_read_rgb(self, tmp_path):
        gray = rand((5, 4))
        out = read_rgb(write_png(tmp_path / "g.png", gray))
        assert out.shape == (5, 4, 3) and out.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)
        rgba = rand((5, 4, 4))
        np.testing.assert_array_equal(read_rgb(write_png(tmp_path / "a.png", rgba)), rgba[:, :, :3])
        rgb16 = rand((3, 3, 3), np.uint16)
        out16 = read_rgb(write_png(tmp_path / "c16.png", rgb16))
        np.testing.assert_array_equal(out16, np.rint(rgb16 / 257.0).astype(np.uint8))

    def test_jpg_bmp_tif(self, tmp_path):
        rgb = rand((8, 8, 3))
        for ext in (".bmp", ".tif"):
            path = tmp_path / f"x{ext}"
            cv2.imwrite(str(path), rgb[:, :, ::-1])
            np.testing.assert_array_equal(read_rgb(path), rgb)
        path = tmp_path / "x.jpg"
        cv2.imwrite(str(path), np.full((8, 8, 3), (10, 120, 240), np.uint8))  # BGR on disk
        assert np.abs(read_rgb(path)[4, 4].astype(int) - [240, 120, 10]).max() <= 3

    def test_missing_file(self, tmp_path):
        missing = tmp_path / "nope" / "x.png"
        with pytest.raises(ImageFileNotFoundError, match=r"image file not found: .*nope/x\.png.*does not exist") as exc:
            read_rgb(missing)
        assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ValueError)

    def test_undecodable_file(self, tmp_path):
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image at all")
        with pytest.raises(ImageFileError, match=r"cannot decode .*bad\.png \(19 bytes\)"):
            read_thermal(bad)
        with pytest.raises(ImageFileError, match="is a directory"):
            read_image(tmp_path)

    def test_write_png_rejects(self, tmp_path):
        with pytest.raises(ImageFileError, match="needs uint8 or uint16 data, got float32"):
            write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
        with pytest.raises(ImageFileError, match=r"got shape \(2, 2, 5\)"):
            write_png(tmp_path / "f.png", np.zeros((2, 2, 5), np.uint8))


class TestReadThermal:
    def test_8bit_gray(self, tmp_path):
        gray = rand((6, 5))
        out = read_thermal(write_png(tmp_path / "t.png", gray))
        assert out.shape == (6, 5) and out.dtype == np.float32
        np.testing.assert_allclose(out, gray / 255.0, atol=1e-6)

    def test_gray_stored_in_3_channels_collapses(self, tmp_path):
        gray = rand((6, 5))
        path = write_png(tmp_path / "t3.png", np.dstack([gray] * 3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no colour warning for gray content
            out = read_thermal(path)
        assert out.shape == (6, 5)
        np.testing.assert_allclose(out, gray / 255.0, atol=1e-6)
        # alpha is ignored, near-gray (JPEG-like +-1) is still gray
        near = np.dstack([gray, np.clip(gray.astype(int) + 1, 0, 255).astype(np.uint8), gray, gray])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert read_thermal(write_png(tmp_path / "n.png", near)).shape == (6, 5)

    def test_false_colour_warns_and_uses_luminance(self, tmp_path):
        rgb = np.zeros((2, 2, 3), np.uint8)
        rgb[0, 0] = (255, 0, 0)
        rgb[1, 1] = (0, 255, 0)
        with pytest.warns(ThermalColourWarning, match="BT.601 luminance"):
            out = read_thermal(write_png(tmp_path / "c.png", rgb))
        np.testing.assert_allclose(out, [[0.299, 0.0], [0.0, 0.587]], atol=1e-6)

    def test_16bit_goes_through_agc(self, tmp_path):
        raw = (8000 + rand((20, 30), np.uint16) % 500).astype(np.uint16)
        path = write_png(tmp_path / "raw.png", raw)
        out = read_thermal(path)
        assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
        np.testing.assert_array_equal(out, agc_percentile(raw))
        np.testing.assert_array_equal(read_thermal(path, AGCConfig(0, 100)), agc_percentile(raw, 0, 100))
        # and never a fixed /65535 scale
        assert out.std() > 10 * (raw / 65535.0).std()

    def test_mfnet_4ch(self, tmp_path):
        rgbt = rand((6, 8, 4))
        rgb, thermal = read_mfnet_4ch(write_png(tmp_path / "m.png", rgbt))
        np.testing.assert_array_equal(rgb, rgbt[:, :, :3])
        np.testing.assert_allclose(thermal, rgbt[:, :, 3] / 255.0, atol=1e-6)
        assert thermal.dtype == np.float32
        with pytest.raises(ImageFileError,
                           match=r"not an MFNet 4-channel RGBT PNG: expected \(H, W, 4\) uint8, got \(6, 8, 3\)"):
            read_mfnet_4ch(write_png(tmp_path / "m3.png", rgbt[:, :, :3]))


class TestFindPairs:
    @staticmethod
    def make(folder, names):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(b"x")

    def test_matches_by_stem_with_mixed_extensions(self, tmp_path):
        self.make(tmp_path / "ir", ["b.JPG", "a.png", "c.png", "d.bmp", "e.TIF", ".hidden.png"])
        self.make(tmp_path / "vi", ["a.jpg", "b.png", "d.BMP", "e.jpeg", "f.png", "notes.txt"])
        listing = find_pairs(tmp_path / "ir", tmp_path / "vi")
        assert listing.stems == ["a", "b", "d", "e"]
        assert len(listing) == 4
        assert listing.missing_vi == ["c"]
        assert listing.missing_ir == ["f"]
        first = listing.pairs[0]
        assert first.ir_path == tmp_path / "ir" / "a.png" and first.vi_path == tmp_path / "vi" / "a.jpg"
        assert [p.stem for p in listing] == listing.stems

    def test_missing_directory(self, tmp_path):
        self.make(tmp_path / "vi", ["a.png"])
        with pytest.raises(DatasetNotFoundError, match=r"thermal \(ir\) folder .*ir does not exist"):
            find_pairs(tmp_path / "ir", tmp_path / "vi")

    def test_nothing_matches(self, tmp_path):
        self.make(tmp_path / "ir", ["a.png"])
        self.make(tmp_path / "vi", ["b.png"])
        with pytest.raises(DatasetError, match=r"no image stems match .*\(1 images: a\) .*\(1 images: b\)"):
            find_pairs(tmp_path / "ir", tmp_path / "vi")

    def test_duplicate_stem(self, tmp_path):
        self.make(tmp_path / "ir", ["a.png", "a.jpg"])
        self.make(tmp_path / "vi", ["a.png"])
        with pytest.raises(DatasetError, match="two images with the stem 'a'"):
            find_pairs(tmp_path / "ir", tmp_path / "vi")
