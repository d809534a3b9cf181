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
                   "--repeats", "1", "--device", "cpu", "--scan-length", "256", "--scan-backends", "cpu,chunked",
                   "--fused-vs-chunked", "s4fusion/default", "test_s4fusion/test", "--fused-size", "32x32",
                   "--json", str(out)])
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
        bundled, micro = result["fused_vs_chunked"]
        assert bundled["model"] == "s4fusion/tiny (bundled)" and micro["model"] == "test_s4fusion/test"
        for row in (bundled, micro):
            assert row["size"] == "32x32" and row["labels_equal"] > 0.999 and row["new_ms"] > 0
        assert "| s4fusion/tiny (bundled) | 32x32 |" in text
    else:  # the fused kernel is not built: its row is listed as skipped with the reason
        assert any("cpu scan" in line for line in result["skipped"])


def test_bench_compares_backends_against_torch_fp32(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A randomly initialised model through onnxruntime (exported into the bench's own cache folder)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    rc = cli_main(["bench", "--variants", "test_s4fusion", "--presets", "test", "--sizes", "32x48", "--repeats", "1",
                   "--device", "cpu", "--skip-scan", "--backends", "torch,onnxruntime", "--precisions", "fp32,bf16",
                   "--backend-cache-dir", str(tmp_path / "cache"), "--fused-vs-chunked", "--json", str(out)])
    assert rc == 0
    rows = {(r["backend"], r["precision"]): r for r in json.loads(out.read_text())["models"]}
    assert set(rows) == {("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32")}
    assert rows[("onnxruntime", "fp32")]["fused_max_abs_diff"] <= 1e-4
    assert rows[("onnxruntime", "fp32")]["label_agreement_pct"] >= 99.9
    assert rows[("onnxruntime", "fp32")]["build_s"] > 0 and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    assert "skipped test_s4fusion/test CPU 32x48 onnxruntime bf16" in capsys.readouterr().out


def test_bench_refuses_an_unknown_backend(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["bench", "--backends", "torch,tpu"])
    assert "comma-separated list of torch, compile, onnxruntime" in capsys.readouterr().err
