"""``ivf-perception eval-fusion``: matching by stem, mixed formats, skips, JSON, exit codes."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from ivf_perception.cli import eval_fusion
from ivf_perception.metrics import FUSION_METRIC_NAMES, fusion_metrics, to_gray_u8
from ivf_perception.metrics.prepare import prepare_for_metrics


def _img(seed, shape):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (3, 3), 1)


@pytest.fixture
def folders(tmp_path):
    """ir/vi/fused with png/jpg, gray and 3-channel; 'c' has no fused image; 'd' is resized."""
    ir, vi, fused = (tmp_path / n for n in ("ir", "vi", "fused"))
    for d in (ir, vi, fused):
        d.mkdir()
    h, w = 24, 32
    # a: gray png ir, colour png vi (BGR on disk), gray png fused
    cv2.imwrite(str(ir / "a.png"), _img(1, (h, w)))
    cv2.imwrite(str(vi / "a.png"), _img(2, (h, w, 3)))
    cv2.imwrite(str(fused / "a.png"), _img(3, (h, w)))
    # b: ir stored as 3 equal channels (jpg), vi gray jpg, fused colour png
    g = _img(4, (h, w))
    cv2.imwrite(str(ir / "b.jpg"), np.stack([g, g, g], axis=2))
    cv2.imwrite(str(vi / "b.jpeg"), _img(5, (h, w)))
    cv2.imwrite(str(fused / "b.png"), _img(6, (h, w, 3)))
    # c: no fused counterpart
    cv2.imwrite(str(ir / "c.png"), _img(7, (h, w)))
    cv2.imwrite(str(vi / "c.png"), _img(8, (h, w)))
    # d: fused has another size
    cv2.imwrite(str(ir / "d.bmp"), _img(9, (h, w)))
    cv2.imwrite(str(vi / "d.png"), _img(10, (h, w)))
    cv2.imwrite(str(fused / "d.png"), _img(11, (h // 2, w)))
    (fused / "notes.txt").write_text("not an image")
    return ir, vi, fused


def test_evaluate_folders(folders):
    ir, vi, fused = folders
    result = eval_fusion.evaluate_folders(ir, vi, fused)
    assert sorted(result.per_image) == ["a", "b"]
    assert result.missing == {"c": ["fused"]}
    assert set(result.errors) == {"d"} and "32x12" in result.errors["d"] and "32x24" in result.errors["d"]
    # lossless PNGs: the same numbers as calling the metrics directly (vi read as RGB)
    expected = fusion_metrics(
        cv2.imread(str(fused / "a.png"), cv2.IMREAD_UNCHANGED),
        cv2.imread(str(ir / "a.png"), cv2.IMREAD_UNCHANGED),
        cv2.cvtColor(cv2.imread(str(vi / "a.png")), cv2.COLOR_BGR2RGB),
    )
    assert result.per_image["a"] == pytest.approx(expected)
    for name in FUSION_METRIC_NAMES:
        assert result.mean[name] == pytest.approx((result.per_image["a"][name] + result.per_image["b"][name]) / 2)


def test_main_table_skips_and_json(folders, tmp_path, capsys):
    ir, vi, fused = folders
    out = tmp_path / "report" / "metrics.json"
    code = eval_fusion.main(["--ir", str(ir), "--vi", str(vi), "--fused", str(fused), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    header = captured.out.splitlines()[0].split()
    assert header[-len(FUSION_METRIC_NAMES):] == list(FUSION_METRIC_NAMES)
    assert "2 images" in captured.out
    assert "c: no fused image" in captured.err
    assert "error: d: fused image is 32x12 but the sources are 32x24; skipped" in captured.err

    data = json.loads(out.read_text())
    assert set(data) == {"mean", "per_image"}
    assert list(data["mean"]) == list(FUSION_METRIC_NAMES)
    assert set(data["per_image"]) == {"a", "b"}
    for metrics in data["per_image"].values():
        assert list(metrics) == list(FUSION_METRIC_NAMES)
        assert all(math.isfinite(v) for v in metrics.values())


def test_sixteen_bit_thermal_and_alpha(tmp_path):
    ir, vi, fused = (tmp_path / n for n in ("ir", "vi", "fused"))
    for d in (ir, vi, fused):
        d.mkdir()
    raw = (np.linspace(20000, 30000, 20 * 20).reshape(20, 20)).astype(np.uint16)
    cv2.imwrite(str(ir / "x.png"), raw)
    rgba = np.dstack([_img(1, (20, 20, 3)), np.full((20, 20), 7, np.uint8)])
    cv2.imwrite(str(vi / "x.png"), rgba)
    cv2.imwrite(str(fused / "x.tif"), _img(2, (20, 20)))
    result = eval_fusion.evaluate_folders(ir, vi, fused)
    assert list(result.per_image) == ["x"] and not result.errors
    prepared = prepare_for_metrics(cv2.imread(str(ir / "x.png"), cv2.IMREAD_UNCHANGED), "ir")
    assert prepared.min() == 0 and prepared.max() == 255  # percentile gain control, not /65535
    # alpha dropped: the same as the RGB image alone
    rgb = cv2.cvtColor(rgba[:, :, :3], cv2.COLOR_BGR2RGB)
    rgba_rgb = np.dstack([rgb, np.full((20, 20), 7, np.uint8)])
    np.testing.assert_array_equal(prepare_for_metrics(rgba_rgb), to_gray_u8(rgb))


def test_duplicate_stem_is_reported(folders):
    ir, vi, fused = folders
    cv2.imwrite(str(fused / "a.jpg"), _img(3, (24, 32)))
    result = eval_fusion.evaluate_folders(ir, vi, fused)
    assert "a" in result.errors and "a.jpg" in result.errors["a"] and "a.png" in result.errors["a"]
    assert list(result.per_image) == ["b"]


def test_exception_missing_folder(folders, capsys):
    ir, vi, fused = folders
    code = eval_fusion.main(["--ir", str(ir), "--vi", str(vi), "--fused", str(fused.parent / "nope")])
    assert code == 2
    assert "--fused folder does not exist" in capsys.readouterr().err


def test_exception_nothing_matched(tmp_path, capsys):
    for n, stem in (("ir", "p"), ("vi", "q"), ("fused", "p")):
        (tmp_path / n).mkdir()
        cv2.imwrite(str(tmp_path / n / f"{stem}.png"), _img(0, (10, 10)))
    code = eval_fusion.main(["--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                             "--fused", str(tmp_path / "fused")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no image stem is present in all three folders" in err
    assert "p: no vi image" in err and "q: no ir, fused image" in err


def test_dispatcher_and_parser(folders, capsys):
    from ivf_perception.cli.main import main as cli_main

    ir, vi, fused = folders
    assert cli_main(["eval-fusion", "--ir", str(ir), "--vi", str(vi), "--fused", str(fused)]) == 0
    assert "2 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        eval_fusion.build_parser().parse_args(["--ir", "x"])
    assert exc.value.code == 2
