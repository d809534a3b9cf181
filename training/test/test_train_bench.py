"""``ivf-train bench``: throughput rows and the data loader's share."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivf_training.bench import BenchRow, bench_variant, format_rows, recipe_for
from ivf_training.cli import main

STANDIN = "test_training_standin"  # registered by conftest.py


def test_bench_measures_a_variant(tmp_path: Path) -> None:
    row = bench_variant(STANDIN, preset="tiny", batch_size=2, crop=64, steps=2, warmup=1, recipes=tmp_path)
    assert (row.variant, row.preset, row.device, row.precision, row.batch_size, row.crop) == (
        STANDIN, "tiny", "cpu", "fp32", 2, 64)
    assert row.images_per_s > 0 and 0 < row.data_s < row.step_s and 0 < row.data_share < 1
    table = format_rows([row], ["a note"])
    assert table.splitlines()[0].startswith("| variant | preset |") and f"| {STANDIN} | tiny | cpu |" in table
    assert table.endswith("a note")


def test_recipe_choice(tmp_path: Path) -> None:
    for name in ("mafs_stage1_generated.yaml", "mafs_stage2_generated.yaml", "s4fusion_generated_finetune.yaml"):
        (tmp_path / name).touch()
    assert recipe_for("mafs", tmp_path) == tmp_path / "mafs_stage2_generated.yaml"  # the full network's stage
    assert recipe_for("s4fusion", tmp_path) is None
    assert BenchRow("v", "p", "cpu", "fp32", 1, 1, 1.0, 0.0, 0.0).data_share == 0.0


def test_bench_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.md"
    args = ["bench", "--variants", STANDIN, "--preset", "tiny", "--crop", "64", "--steps", "1", "--warmup", "0",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| images/s |" in printed and f"| {STANDIN} | tiny | cpu | fp32 | 2 | 64 |" in printed
    assert out.read_text().strip() == printed.strip()
