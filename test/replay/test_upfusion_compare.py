"""UP-Fusion in replay/compare, side by side with S4Fusion on the same bag."""

from __future__ import annotations

import json

from ivf_perception.cli.compare import main as compare_main


def test_compare_upfusion_with_s4fusion(mcap_bag, tmp_path):
    out = tmp_path / "cmp"
    code = compare_main([str(mcap_bag), "--out", str(out), "--a-variant", "test_s4fusion", "--a-weights", "none",
                         "--b-variant", "test_upfusion", "--b-weights", "none", "--device", "cpu", "--threads", "1",
                         "--no-progress", "--max-frames", "3"])
    assert code == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["same_frames"] and data["b"]["status"] == "complete"
    rows = {r["metric"]: r for r in data["rows"]}
    assert rows["EN all"]["b"] is not None and rows["mIoU all"]["b"] is not None
    assert json.loads((out / "b" / "metrics.json").read_text())["frames"] == 3
