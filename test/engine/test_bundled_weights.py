"""The bundled default weights: format, provenance, and the quality the issue promises.

These run the real bundled model (S4Fusion tiny) on held-out generated scenes and, where
../shared/data is present, on the 50 RoadScene pairs that training never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ivf_perception.baselines import baseline_fuse
from ivf_perception.engine import DEFAULT_WEIGHTS, Engine
from ivf_perception.engine.preprocess import prepare_thermal
from ivf_perception.engine.weights import read_sidecar, training_domain
from ivf_perception.io.image_files import find_pairs, read_image, read_rgb
from ivf_perception.metrics import ConfusionAccumulator, fusion_metrics
from ivf_perception.scenes import SceneConfig, generate_scene

HELD_OUT_SEED = 4242  # no training recipe uses this seed


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default(device="cpu")


def test_file_size_and_sidecar_provenance() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    info = read_sidecar(DEFAULT_WEIGHTS)
    assert info.variant == "s4fusion" and info.num_classes == 9
    assert info.classes[2] == "person" and len(info.palette) == 9
    assert info.recipe["model"]["preset"] == info.preset
    sources = str(info.data)
    assert "llvip" in sources and "roadscene" not in sources and "tno" not in sources
    assert "mIoU" in info.metrics
    # honest about the domain: synthetic scenes (the only labels) and real pairs without labels
    assert info.training_domain == ["generated scenes", "real unlabelled pairs"]
    assert training_domain(info.data) == info.training_domain


def test_segments_held_out_generated_scenes_far_above_chance(engine: Engine) -> None:
    acc = ConfusionAccumulator(engine.num_classes)
    config = SceneConfig(seed=HELD_OUT_SEED)
    for i in range(8):
        scene = generate_scene(i, config)
        acc.update(engine.infer(scene.rgb, scene.thermal).labels, scene.labels)
    scores = acc.scores()
    # chance (uniform over 9 classes) gives an IoU of a few percent per class
    # 0.663 on these 8 scenes (0.611 before the class-offset calibration, so the floor guards it);
    # 0.667-0.677 on 100 scenes of seeds 7 and 11 (sidecar quality)
    assert scores["mIoU"] > 0.63, scores
    assert scores["per_class_iou"]["5"] > 0.2, scores  # car_stop: 0.00 before the class-weighted stages, 0.54-0.55 now


def _held_out_fusion_scores(engine: Engine, root: Path) -> dict[str, dict[str, float]]:
    """Mean metrics of the model, the pixel average and the pixel maximum over a real pair set."""
    scores: dict[str, list[dict[str, float]]] = {"model": [], "pixel_average": [], "pixel_maximum": []}
    for pair in find_pairs(root / "ir", root / "vi"):
        vi, ir = read_rgb(pair.vi_path), read_image(pair.ir_path)
        scores["model"].append(fusion_metrics(engine.infer(vi, ir).fused, ir, vi))
        for mode, name in (("mean", "pixel_average"), ("max", "pixel_maximum")):
            scores[name].append(fusion_metrics(baseline_fuse(vi, prepare_thermal(ir), mode), ir, vi))
    return {name: {k: float(np.mean([m[k] for m in rows])) for k in rows[0]} for name, rows in scores.items()}


@pytest.mark.realdata
def test_roadscene_quality_holds_what_the_sidecar_reports(engine: Engine, shared_data: Path) -> None:
    """The regression guard of issue 18: on the 50 held-out RoadScene pairs the bundled weights
    keep the CPU targets they reach (above the pixel average on EN, SD, SF, AG, VIF and Qabf,
    above the pixel maximum on SF and AG) and every metric stays at the number the sidecar's
    quality report recorded."""
    scores = _held_out_fusion_scores(engine, shared_data / "roadscene")
    model = scores["model"]
    for key in ("EN", "SD", "SF", "AG", "VIF", "Qabf"):
        assert model[key] > scores["pixel_average"][key], f"{key}: {model[key]:.4f} <= pixel average"
    for key in ("SF", "AG"):
        assert model[key] > scores["pixel_maximum"][key], f"{key}: {model[key]:.4f} <= pixel maximum"
    recorded = read_sidecar(DEFAULT_WEIGHTS).quality["held_out_real_pairs"]["roadscene"]["model"]
    for key, value in recorded.items():
        # the report went through PNG files (fuse + eval-fusion); this path stays in memory
        assert model[key] == pytest.approx(value, rel=5e-3, abs=2e-3), key
