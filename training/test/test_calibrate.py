"""Class-offset calibration (``ivf-train calibrate``): the fit, the fold into the classifier, the
written weights, and the quality report's refusal of the seeds a calibration saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, read_sidecar, save_weights
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
from ivf_perception.metrics.segmentation import miou
from ivf_perception.models import build_model
from ivf_perception.models.base import FusionSegOutput
from ivf_training.augment import IGNORE_INDEX
from ivf_training.calibrate import (
    CalibrationError,
    calibrate_weights,
    calibration_scene_seeds,
    collect_logits,
    confusion_with_biases,
    fit_class_biases,
    fold_class_biases,
)
from ivf_training.cli import main

K = len(MFNET_CLASSES)
SCENES = {"config": {"seed": 3, "height": 64, "width": 64}, "count": 2}


def _scores(conf: torch.Tensor) -> float:
    return miou(conf.numpy())


def _reference_fit(logits: torch.Tensor, labels: torch.Tensor, grid: list[float], sweeps: int) -> list[float]:
    """The same coordinate ascent by brute force: one full argmax per candidate."""
    biases = torch.zeros(logits.shape[0])
    for _ in range(sweeps):
        for c in range(len(biases)):
            scores = []
            for value in grid:
                trial = biases.clone()
                trial[c] = value
                scores.append(_scores(confusion_with_biases(logits, labels, trial)))
            current = scores[grid.index(float(biases[c]))]
            best = max(range(len(grid)), key=scores.__getitem__)
            if scores[best] > current + 1e-9:
                biases[c] = grid[best]
    return biases.tolist()


def _overconfident(pixels: int = 20000, k: int = 4, boost: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy scores whose class 2 is pushed up by ``boost``: it steals pixels from the others."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (pixels,), generator=gen)
    logits = 2.0 * nn.functional.one_hot(labels, k).T.float() + torch.randn(k, pixels, generator=gen)
    logits[2] += boost
    return logits, labels


def test_the_fit_equals_brute_force_coordinate_ascent() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (3000,), generator=gen)
    logits = torch.randn(5, 3000, generator=gen) + 1.2 * nn.functional.one_hot(labels, 5).T
    logits[1] += 0.8
    grid = [x / 4 for x in range(-8, 9)]
    fit = fit_class_biases(logits, labels, grid=grid, sweeps=2)
    assert fit.biases == _reference_fit(logits, labels, grid, sweeps=2)
    assert fit.miou_after == pytest.approx(_scores(confusion_with_biases(logits, labels, torch.tensor(fit.biases))))


def test_ties_are_counted_as_argmax_breaks_them() -> None:
    """Scores on a 1/8 grid (as float16 scores plus 1/8 offsets often are) tie exactly; argmax
    gives a tie to the lower class index and the one-pass scoring must do the same."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (4000,), generator=gen)
    logits = torch.randint(-8, 9, (4, 4000), generator=gen).float() / 8 + 0.25 * nn.functional.one_hot(labels, 4).T
    grid = [x / 8 for x in range(-8, 9)]
    fit = fit_class_biases(logits.half(), labels, grid=grid, sweeps=2)
    assert fit.biases == _reference_fit(logits, labels, grid, sweeps=2)


def test_an_over_predicted_class_is_pulled_back_and_miou_rises() -> None:
    logits, labels = _overconfident()
    fit = fit_class_biases(logits, labels)
    relative = fit.biases[2] - sum(b for c, b in enumerate(fit.biases) if c != 2) / 3
    assert -2.0 < relative < -1.0  # undoes most of the +1.5
    assert fit.miou_after > fit.miou_before + 0.05
    assert fit.iou_after[2] > fit.iou_before[2]
    assert fit.miou_before == pytest.approx(_scores(confusion_with_biases(logits, labels, torch.zeros(4))))


def test_well_calibrated_scores_keep_zero_offsets_and_never_lose() -> None:
    logits, labels = _overconfident(boost=0.0)
    fit = fit_class_biases(logits, labels, grid=[-1.0, 0.0, 1.0])
    assert fit.biases == [0.0] * 4
    assert fit.miou_after == fit.miou_before


def test_ignored_pixels_do_not_count() -> None:
    logits, labels = _overconfident(pixels=4000)
    noisy = torch.cat([logits, torch.full((4, 3000), -5.0)], dim=1)
    noisy[2, 4000:] = 9.0  # would be confidently "class 2" ...
    padded = torch.cat([labels, torch.full((3000,), IGNORE_INDEX)])  # ... but the labels ignore them
    assert fit_class_biases(noisy, padded).biases == fit_class_biases(logits, labels).biases


@pytest.mark.parametrize(("logits", "labels", "kwargs", "message"), [
    (torch.zeros(4, 10), torch.zeros(9, dtype=torch.long), {}, "do not match"),
    (torch.zeros(1, 10), torch.zeros(10, dtype=torch.long), {}, "at least 2 classes"),
    (torch.zeros(4, 10), torch.full((10,), IGNORE_INDEX), {}, "no labelled pixel"),
    (torch.zeros(4, 10), torch.tensor([0] * 9 + [7]), {}, r"label ids \[7\] are outside \[0, 4\)"),
    (torch.zeros(4, 10), torch.zeros(10, dtype=torch.long), {"grid": []}, "non-empty grid"),
    (torch.zeros(4, 10), torch.zeros(10, dtype=torch.long), {"sweeps": 0}, "sweeps >= 1"),
])
def test_bad_fit_input_is_a_calibration_error(logits, labels, kwargs, message) -> None:  # noqa: ANN001
    with pytest.raises(CalibrationError, match=message):
        fit_class_biases(logits, labels, **kwargs)


def _probe() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 1, 64, 64, generator=gen)


@pytest.mark.parametrize(("variant", "layer"), [
    ("test_s4fusion", "seg_head.classifier"), ("test_cmfs", "seg_head.classifier"),
    ("test_upfusion", "seg_head.classifier"), ("test_tesg", "seg_head.head.classifier"),
    ("test_mafs", "seg_head.head.semantic"),  # not its deep-supervision heads, which also have K outputs
])
def test_the_fold_shifts_the_logits_by_the_offsets_and_leaves_the_fused_image(variant: str, layer: str) -> None:
    torch.manual_seed(0)
    model = build_model(variant, num_classes=K).eval()
    rgb, thermal = _probe()
    with torch.no_grad():
        before = model(rgb, thermal)
    offsets = [0.5 * (c - 4) for c in range(K)]
    assert fold_class_biases(model, offsets, rgb, thermal) == layer
    with torch.no_grad():
        after = model(rgb, thermal)
    torch.testing.assert_close(after.logits - before.logits, torch.tensor(offsets).view(1, K, 1, 1).expand_as(
        before.logits), atol=1e-4, rtol=0)
    torch.testing.assert_close(after.fused, before.fused, atol=0, rtol=0)


class _SquaredScores(nn.Module):
    """Logits that are the square of a 1×1 convolution: no bias shifts them by a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, 3, 1)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        return FusionSegOutput(fused=rgb, logits=self.classifier(rgb) ** 2, aux={})


def test_a_model_without_a_foldable_layer_is_refused_and_left_unchanged() -> None:
    model = _SquaredScores()
    original = model.classifier.bias.detach().clone()
    with pytest.raises(CalibrationError, match="cannot be folded"):
        fold_class_biases(model, [1.0, -1.0, 0.5], *_probe())
    assert torch.equal(model.classifier.bias, original)


def _weights(path: Path, num_classes: int = K) -> Path:
    torch.manual_seed(1234)
    model = build_model("test_s4fusion", num_classes=num_classes)
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=num_classes,
                       classes=list(MFNET_CLASSES) if num_classes else [],
                       palette=list(MFNET_PALETTE) if num_classes else [],
                       quality={"held_out_generated": {"seed 7": {"mIoU": 0.1}}},
                       lineage=[{"run": "stage1", "recipe": "r.yaml"}])
    return save_weights(model.state_dict(), path, info)


def test_calibrate_weights_writes_folded_weights_and_a_lineage_record(tmp_path: Path) -> None:
    source = _weights(tmp_path / "w.safetensors")
    result = calibrate_weights(source, tmp_path / "cal.safetensors", "generated", options=SCENES, device="cpu")
    info = read_sidecar(result.out)
    assert info.quality == {}  # measured on the uncalibrated model: cleared
    assert info.lineage[0] == {"run": "stage1", "recipe": "r.yaml"}
    record = info.lineage[1]
    assert record["calibration"] == "class_bias" and record["layer"] == "seg_head.classifier"
    assert record["biases"] == result.fit.biases
    assert record["dataset"]["labelled_pixels"] == 2 * 64 * 64
    assert record["mIoU_before"] == round(result.fit.miou_before, 4) <= record["mIoU_after"]
    assert calibration_scene_seeds(info) == {3} and calibration_scene_seeds(read_sidecar(source)) == set()
    old, _ = build_model_from_weights(source)
    new, _ = build_model_from_weights(result.out)
    for key, value in old.state_dict().items():
        if key == "seg_head.classifier.bias":
            torch.testing.assert_close(new.state_dict()[key] - value, torch.tensor(result.fit.biases))
        else:
            assert torch.equal(new.state_dict()[key], value), key


def test_an_output_without_the_safetensors_suffix_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    import ivf_training.calibrate as module

    monkeypatch.setattr(module, "collect_logits", lambda *a, **k: pytest.fail("scores collected"))
    source = _weights(tmp_path / "w.safetensors")
    with pytest.raises(CalibrationError, match=r"out\.pt: engine weights must use the \.safetensors suffix"):
        calibrate_weights(source, tmp_path / "out.pt", "generated", options=SCENES, device="cpu")
    with pytest.raises(CalibrationError, match="sweeps >= 1"):
        calibrate_weights(source, tmp_path / "out.safetensors", "generated", options=SCENES, sweeps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]


def test_a_set_without_labels_is_refused_without_running_the_model() -> None:
    """A folder of unlabelled pairs (e.g. a bag extraction without a label topic): every image is
    skipped before the forward pass, and the error names the set."""

    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"rgb": torch.rand(3, 64, 64), "thermal": torch.rand(1, 64, 64),
                    "labels": torch.full((64, 64), IGNORE_INDEX)}

        def describe(self) -> dict[str, str]:
            return {"kind": "folder", "root": "night_drive"}

    def never_run(rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        raise AssertionError("the model ran on an unlabelled image")

    with pytest.raises(CalibrationError, match="night_drive.*no labelled pixel in its 3 images"):
        collect_logits(never_run, Unlabelled(), torch.device("cpu"))  # type: ignore[arg-type]


def test_fusion_only_weights_are_refused(tmp_path: Path) -> None:
    source = _weights(tmp_path / "fusion.safetensors", num_classes=0)
    with pytest.raises(CalibrationError, match="fusion-only"):
        calibrate_weights(source, tmp_path / "out.safetensors", "generated", options=SCENES, device="cpu")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_cli_calibrates_in_place_and_reports_errors_in_one_line(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source = _weights(tmp_path / "w.safetensors")
    options = ["-o", "config={seed: 3, height: 64, width: 64}", "-o", "count=2"]
    assert main(["calibrate", str(source), "--out", str(source), "--dataset", "generated", *options]) == 0
    out = capsys.readouterr().out
    assert "folded into seg_head.classifier" in out and "calibration set mIoU" in out
    assert read_sidecar(source).lineage[-1]["calibration"] == "class_bias"
    assert main(["calibrate", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o.safetensors"),
                 "--dataset", "generated", *options]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_the_quality_report_refuses_a_seed_the_calibration_used(tmp_path: Path) -> None:
    import quality_report  # scripts/ is on pytest's path (pytest.ini)

    source = _weights(tmp_path / "w.safetensors")
    calibrated = calibrate_weights(source, tmp_path / "cal.safetensors", "generated", options=SCENES,
                                   device="cpu").out
    with pytest.raises(SystemExit, match=r"calibrated on generated seed\(s\) \[3\]"):
        quality_report._refuse_calibration_seeds(calibrated, [3, 7])
    quality_report._refuse_calibration_seeds(calibrated, [7, 11])
    quality_report._refuse_calibration_seeds(source, [3])
    with pytest.raises(SystemExit, match="missing.safetensors"):
        quality_report._refuse_calibration_seeds(tmp_path / "missing.safetensors", [7])
