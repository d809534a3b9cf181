"""``ivf-perception fuse`` on user folders, including the bad-input cases of the issue."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ivf_perception.cli import fuse
from ivf_perception.engine import WeightsInfo, save_weights
from ivf_perception.models import build_model


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir()
    vi.mkdir()
    cv2.imwrite(str(vi / "a.png"), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    cv2.imwrite(str(ir / "a.png"), rng.integers(0, 256, (40, 60), dtype=np.uint8))
    cv2.imwrite(str(vi / "b.jpg"), rng.integers(0, 256, (33, 47, 3), dtype=np.uint8))
    cv2.imwrite(str(ir / "b.png"), rng.integers(0, 256, (20, 30), dtype=np.uint8))  # other size
    cv2.imwrite(str(vi / "only_vi.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (ir / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(vi / "broken.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return ir, vi


def test_fuse_writes_outputs_and_lists_bad_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ir, vi = _folders(tmp_path)
    out = tmp_path / "out"
    rc = fuse.main(["--ir", str(ir), "--vi", str(vi), "--out", str(out), "--variant", "test_s4fusion",
                    "--weights", "none", "--device", "cpu", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 0
    for sub in ("fused", "labels", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png", "b.png"]
    assert cv2.imread(str(out / "fused" / "b.png")).shape == (33, 47, 3)
    assert cv2.imread(str(out / "labels" / "a.png"), cv2.IMREAD_UNCHANGED).shape == (40, 60)
    assert "only_vi" in captured.out
    assert "failed broken" in captured.err


def test_missing_folder_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = fuse.main(["--ir", str(tmp_path / "nope"), "--vi", str(tmp_path), "--out", str(tmp_path / "o"),
                    "--variant", "test_s4fusion", "--weights", "none", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nope" in err and "Traceback" not in err


def test_weights_of_another_variant_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ir, vi = _folders(tmp_path)
    model = build_model("test_s4fusion")
    weights = save_weights(model.state_dict(), tmp_path / "w.safetensors",
                           WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9))
    rc = fuse.main(["--ir", str(ir), "--vi", str(vi), "--out", str(tmp_path / "o"), "--variant", "s4fusion",
                    "--weights", str(weights), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "variant 'test_s4fusion' but variant 's4fusion' was requested" in err
    assert "Traceback" not in err


def test_baseline_mode_writes_pixel_fusions(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir()
    vi.mkdir()
    gray = rng.integers(0, 256, (40, 60), dtype=np.uint8)  # gray visible: no gamut clipping of colour
    cv2.imwrite(str(vi / "a.png"), np.repeat(gray[..., None], 3, axis=2))
    cv2.imwrite(str(ir / "a.png"), rng.integers(0, 256, (40, 60), dtype=np.uint8))
    out = tmp_path / "base"
    assert fuse.main(["--ir", str(ir), "--vi", str(vi), "--out", str(out), "--baseline", "max"]) == 0
    fused = cv2.imread(str(out / "fused" / "a.png"), cv2.IMREAD_GRAYSCALE).astype(int)
    ir_img = cv2.imread(str(ir / "a.png"), cv2.IMREAD_GRAYSCALE).astype(int)
    np.testing.assert_allclose(fused, np.maximum(ir_img, gray.astype(int)), atol=1)
    assert not (out / "labels").exists()


def test_fuse_with_onnx_weights_and_the_onnxruntime_backend(tmp_path: Path, onnx_cache: tuple[Path, Path],
                                                            test_weights: Path) -> None:
    """An .onnx file as --weights: no PyTorch model is built, images of other sizes are padded to the
    file's fixed size and cropped back; the labels match the PyTorch engine's."""
    _, onnx_path = onnx_cache
    ir, vi = _folders(tmp_path)
    runs = ((tmp_path / "ort", onnx_path, "onnxruntime"), (tmp_path / "torch", test_weights, "torch"))
    for out, weights, backend in runs:
        rc = fuse.main(["--ir", str(ir), "--vi", str(vi), "--out", str(out), "--weights", str(weights),
                        "--backend", backend, "--device", "cpu"])
        assert rc == 0
    for name, size in (("a.png", (40, 60)), ("b.png", (33, 47))):
        ort = cv2.imread(str(tmp_path / "ort" / "labels" / name), cv2.IMREAD_UNCHANGED)
        ref = cv2.imread(str(tmp_path / "torch" / "labels" / name), cv2.IMREAD_UNCHANGED)
        assert ort.shape == size and (ort == ref).mean() >= 0.95  # more edge padding in the 64x96 graph


def test_unknown_backend_is_refused_by_the_option_parser(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        fuse.main(["--ir", str(tmp_path), "--vi", str(tmp_path), "--out", str(tmp_path / "o"), "--backend", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_a_variant_without_weights_is_refused_unless_opted_in(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--variant cmfs` used to run random weights and exit 0; now it names the weights there are."""
    ir, vi = _folders(tmp_path)
    rc = fuse.main(["--ir", str(ir), "--vi", str(vi), "--out", str(tmp_path / "o"), "--variant", "test_s4fusion",
                    "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no weights for test_s4fusion" in err and "bundled weights ('default') are s4fusion/tiny" in err
    assert "--weights none" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "fused").exists()
