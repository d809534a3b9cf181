"""compare: two engines on the same bag, side by side."""

from __future__ import annotations

import json

from replay_helpers import FRAMES

from ivf_perception.cli.compare import main as compare_main
from ivf_perception.replay.compare import comparison_rows


def test_compare_two_engines_on_the_same_bag(mcap_bag, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = compare_main([str(mcap_bag), "--out", str(out), "--a-variant", "test_s4fusion", "--a-weights", "none",
                         "--b-variant", "test_s4fusion", "--b-weights", "none", "--device", "cpu", "--threads", "1",
                         "--no-progress", "--max-frames", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU all" in printed and "EN all" in printed
    data = json.loads((out / "compare.json").read_text())
    assert data["same_frames"] and data["a"]["status"] == data["b"]["status"] == "complete"
    rows = {r["metric"]: r for r in data["rows"]}
    for metric in ("mIoU all", "IoU car", "Qabf all", "pipeline latency p95 (ms)", "throughput engine (frames/s)"):
        assert metric in rows
    r = rows["mIoU all"]
    assert r["diff"] == r["b"] - r["a"] and r["better"] in ("A", "B", "=")
    for side in ("a", "b"):
        assert json.loads((out / side / "metrics.json").read_text())["frames"] == 4
        assert (out / side / "bag" / "metadata.yaml").is_file()
    md = (out / "compare.md").read_text()
    assert "| mIoU all |" in md and "B − A" in md and "<table>" in (out / "compare.html").read_text()
    assert FRAMES >= 4


def test_comparison_direction_and_missing_values():
    a = {"segmentation": {"all": {"mIoU": 0.5, "pixel_accuracy": 0.9, "per_class_iou": {"car": 0.4}}},
         "latency_ms": {"pipeline": {"p50": 10.0, "p95": 12.0, "p99": 13.0}},
         "throughput": {"fps_engine": 50.0, "fps_pipeline": 40.0}}
    b = {"segmentation": {"all": {"mIoU": 0.6, "pixel_accuracy": 0.9, "per_class_iou": {"car": None}}},
         "latency_ms": {"pipeline": {"p50": 8.0, "p95": 12.0, "p99": 20.0}},
         "throughput": {"fps_engine": 40.0, "fps_pipeline": 40.0}}
    rows = {r["metric"]: r for r in comparison_rows(a, b)}
    assert rows["mIoU all"]["better"] == "B" and abs(rows["mIoU all"]["rel"] - 0.2) < 1e-9
    assert rows["pipeline latency p50 (ms)"]["better"] == "B" and rows["pipeline latency p99 (ms)"]["better"] == "A"
    assert rows["pixel accuracy all"]["better"] == "=" and rows["IoU car"]["better"] is None
    assert rows["throughput engine (frames/s)"]["better"] == "A"
    assert rows["inference latency p50 (ms)"]["a"] is None


def test_compare_backends_of_the_same_weights(mcap_bag, tmp_path, test_weights, onnx_cache):
    """--backend for both sides, --b-backend for one: eager torch against onnxruntime (the cached export)."""
    cache, _ = onnx_cache
    out = tmp_path / "cmp"
    code = compare_main([str(mcap_bag), "--out", str(out), "--a-weights", str(test_weights), "--b-weights",
                         str(test_weights), "--backend", "torch", "--b-backend", "onnxruntime", "--backend-cache-dir",
                         str(cache), "--device", "cpu", "--threads", "1", "--no-progress", "--max-frames", "3",
                         "--no-fusion-metrics"])
    assert code == 0
    data = json.loads((out / "compare.json").read_text())
    rows = {r["metric"]: r for r in data["rows"]}
    assert abs(rows["mIoU all"]["diff"]) < 1e-3, "the same network through two backends"
