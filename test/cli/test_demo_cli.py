"""``ivf-perception demo`` end to end (micro random model here; bundled weights in test/engine)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from ivf_perception.cli import demo


def test_demo_writes_every_output_and_a_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--frames", "3", "--size", "64x96", "--variant", "test_s4fusion",
                    "--weights", "none", "--device", "cpu"])
    assert rc == 0
    for sub in ("fused", "labels", "overlay", "baselines/mean", "baselines/max", "sample/vi", "sample/ir"):
        assert len(list((out / sub).glob("*.png"))) == 3, sub
    assert (out / "sample.mcap").is_dir()
    assert cv2.imread(str(out / "fused" / "000000.png")).shape == (64, 96, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["fusion_mean"]) == {"model", "pixel_mean", "pixel_max"}
    assert set(metrics["fusion_mean"]["model"]) == {"EN", "SD", "SF", "AG", "MI", "CC", "PSNR", "SCD", "VIF",
                                                    "Qabf", "SSIM"}
    assert 0.0 <= metrics["segmentation"]["all"]["mIoU"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| pixel_mean |" in report and "mIoU" in report
    assert str(out.resolve()) in capsys.readouterr().out
