"""The replay overhead benchmark runs and reports its ratios (timings themselves are not asserted)."""

from __future__ import annotations

import math

from ivf_perception.cli.replay import main as replay_main
from ivf_perception.replay.bench import bench_replay, format_bench_table


def test_bench_replay_reports_ratios(mcap_bag, micro_engine, tmp_path):
    row = bench_replay(mcap_bag, micro_engine, tmp_path / "work", frames=3)
    assert row["frames"] == 3 and row["size"] == "96x64"
    keys = ("bare_engine_ms", "replay_ms", "engine_in_replay_ms", "io_total_ms", "throughput_ratio", "overhead_ratio")
    for key in keys:
        assert math.isfinite(row[key]) and row[key] > 0
    assert set(row["io_ms"]) == {"read", "decode", "write"}
    table = format_bench_table([row])
    assert "overhead" in table and "scenes_mcap" in table


def test_bench_cli_with_a_given_bag(mcap_bag, tmp_path, capsys):
    code = replay_main(["--bench", str(mcap_bag), "--bench-frames", "2", "--out", str(tmp_path / "b"),
                        "--variant", "test_s4fusion", "--weights", "none", "--device", "cpu", "--threads", "1"])
    assert code == 0
    assert "fps ratio" in capsys.readouterr().out and (tmp_path / "b" / "bench_replay.json").is_file()
