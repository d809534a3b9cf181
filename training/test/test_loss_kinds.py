"""``loss.kind``: one settings class and one objective per kind, chosen by the kind alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ivf_perception.models import build_model
from ivf_training.build import TextGuided
from ivf_training.cmfs_losses import CMFSLoss
from ivf_training.config import (
    CMFSLossConfig,
    ConfigError,
    FusedSegTeacherLossConfig,
    LossConfig,
    MAFSStage1LossConfig,
    MAFSStage2LossConfig,
    S4FusionLossConfig,
    TeSGLossConfig,
    TrainConfig,
    UPFusionLossConfig,
)
from ivf_training.config.schema import tagged_classes
from ivf_training.losses import FusionSegLoss, PerceptionWeightsError
from ivf_training.mafs_losses import MAFSStage1Loss, MAFSStage2Loss
from ivf_training.objectives import (
    OBJECTIVES,
    CMFSObjective,
    DistilledFusionSegObjective,
    FusedInputSegObjective,
    GuidedFusionObjective,
    MaskedReconstructionObjective,
    S4FusionObjective,
    UPFusionObjective,
    build_objective,
    objective_class,
)
from ivf_training.teacher import SegmentationOnlyLoss
from ivf_training.tesg_losses import TeSGLoss
from ivf_training.upfusion_losses import UPFusionLoss

MakeConfig = Callable[..., TrainConfig]

EXPECTED = {
    "s4fusion": (S4FusionLossConfig, S4FusionObjective, FusionSegLoss),
    "cmfs": (CMFSLossConfig, CMFSObjective, CMFSLoss),
    "mafs_stage1": (MAFSStage1LossConfig, MaskedReconstructionObjective, MAFSStage1Loss),
    "mafs_stage2": (MAFSStage2LossConfig, DistilledFusionSegObjective, MAFSStage2Loss),
    "upfusion": (UPFusionLossConfig, UPFusionObjective, UPFusionLoss),
    "tesg": (TeSGLossConfig, GuidedFusionObjective, TeSGLoss),
    "fused_seg_teacher": (FusedSegTeacherLossConfig, FusedInputSegObjective, SegmentationOnlyLoss),
}
BUNDLED = str(Path(__file__).resolve().parents[2] / "ivf_perception" / "weights" / "s4fusion_tiny_default.safetensors")


def test_every_settings_class_has_its_objective() -> None:
    assert tagged_classes(LossConfig) == {k: v[0] for k, v in EXPECTED.items()}
    assert {k: v[1] for k, v in EXPECTED.items()} == OBJECTIVES


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_the_objective_builds_the_kinds_loss(kind: str) -> None:
    settings_cls, objective_cls, loss_cls = EXPECTED[kind]
    settings = (settings_cls(perception=0.0, perception_texture=0.0) if kind == "s4fusion"
                else settings_cls(fusion_weights=BUNDLED) if kind == "fused_seg_teacher" else settings_cls())
    objective, loss = build_objective(settings, num_classes=9)
    assert type(objective) is objective_cls and isinstance(loss, loss_cls)
    assert (objective_cls.export_refusal is not None) == (kind == "mafs_stage1")
    assert objective_cls.scores_outputs == (kind != "mafs_stage1")


def test_settings_of_another_kind_are_refused(make_config: MakeConfig) -> None:
    with pytest.raises(ConfigError, match=r"loss.gamma is a setting of loss.kind cmfs only \(got loss.kind s4fusion\)"):
        make_config("loss.gamma=0.8")
    with pytest.raises(ConfigError, match="loss.ssim is a setting of loss.kind s4fusion / upfusion / tesg only"):
        make_config("loss.kind=mafs_stage2", "loss.ssim=1.0")
    with pytest.raises(ConfigError,
                       match="loss.kind must be one of s4fusion, cmfs, upfusion, tesg, mafs_stage1, mafs_stage2"):
        objective_class("focal")
    cfg = make_config("loss.gamma=0.8", "loss.kind=cmfs")  # the kind may come after its settings
    assert cfg.loss == CMFSLossConfig(gamma=0.8)


def test_s4fusion_paper_loss_settings_are_checked(make_config: MakeConfig, tmp_path: Path) -> None:
    """ω weighting needs the ResNet-50 file: refused at configuration time without one, and a
    configured but missing file stops the run naming the file and how to get it."""
    with pytest.raises(ConfigError, match="loss.source_weights: resnet .* set loss.resnet50_weights"):
        make_config("loss.source_weights=resnet")
    with pytest.raises(ConfigError, match="loss.omega_c must be > 0"):
        make_config("loss.omega_c=0")
    with pytest.raises(ConfigError, match="loss.ssim must be >= 0"):
        make_config("loss.ssim=-1")
    missing = tmp_path / "resnet50.pth"
    settings = S4FusionLossConfig(source_weights="resnet", perception=0.0, perception_texture=0.0,
                                  resnet50_weights=str(missing))
    with pytest.raises(PerceptionWeightsError, match=f"ResNet-50 weights not found: {missing}"):
        build_objective(settings, num_classes=9)


def test_text_guidance_is_a_model_capability() -> None:
    assert isinstance(build_model("test_cmfs", preset="test"), TextGuided)
    assert not isinstance(build_model("test_mafs"), TextGuided)
