"""``generate`` and ``bench`` commands (bench on a micro model: tables, not timings, are tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivf_perception.cli import generate
from ivf_perception.cli.main import main as cli_main
from ivf_perception.io.bag import list_topics
from ivf_perception.models.ops import has_cpu_scan


def test_generate_folder_and_bag(tmp_path: Path) -> None:
    rc = generate.main(["--out", str(tmp_path / "ds"), "--bag", str(tmp_path / "bag"), "--count", "3",
                        "--size", "64x96", "--seed", "5"])
    assert rc == 0
    assert len(list((tmp_path / "ds" / "vi").iterdir())) == 3
    assert len(list((tmp_path / "ds" / "labels").iterdir())) == 3
    topics = list_topics(tmp_path / "bag")
    assert all(t == "sensor_msgs/msg/Image" for t in topics.values()) and len(topics) == 3


def test_generate_rejects_bad_size(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        generate.main(["--out", "x", "--size", "12by3"])
    assert "HxW" in capsys.readouterr().err


def test_bench_prints_a_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    rc = cli_main(["bench", "--variants", "test_s4fusion", "--presets", "test", "--sizes", "32x32",
                   "--repeats", "1", "--device", "cpu", "--scan-length", "256", "--bundled-size", "32x32",
                   "--scan-backends", "cpu,chunked", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| test_s4fusion | test | CPU | 32x32 | torch | fp32 | chunked |" in text
    assert "| selective scan |" in text
    result = json.loads(out.read_text())
    row = result["models"][-1]
    assert row["scan"] == "chunked" and row["label_agreement_pct"] == 100.0
    assert row["params_M"] > 0 and row["gmacs_480x640"] > 0 and row["latency_ms"] > 0
    assert result["selective_scan"]["max_abs_err"] < 1e-4
    if has_cpu_scan():  # the fused kernel's rows, where it is built
        assert "| test_s4fusion | test | CPU | 32x32 | torch | fp32 | cpu |" in text
        assert result["selective_scan"]["fused_max_abs_err"] < 1e-4
        assert not result["skipped"]
        bundled = result["bundled"]
        assert bundled["size"] == "32x32" and bundled["labels_equal"] > 0.999 and bundled["new_ms"] > 0
        assert "| bundled weights (CPU fp32) |" in text
    else:  # the fused kernel is not built: its row is listed as skipped with the reason
        assert any("cpu scan" in line for line in result["skipped"])
