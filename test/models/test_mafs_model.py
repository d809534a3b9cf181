"""MAFS family: the base tester plus MAFS-specific behaviour (stages, trunk weights, presets, engine)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from base_tester import ModelTester
from safetensors.torch import save_file

from ivf_perception.engine import Engine
from ivf_perception.models import build_model
from ivf_perception.models.mafs import MAFS, PRESET_ARGS, TrunkWeightsError, checkpoint_filter_fn


def _inputs(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 3, h, w), torch.rand(b, 1, h, w)


def _perturbed(num_classes: int = 3) -> MAFS:
    """A test model whose zero-initialised parts (timm's last-BN gammas, the channel-attention γ)
    are perturbed, so every parameter lies on a path with a non-zero gradient at step 0."""
    model = build_model("test_mafs", num_classes=num_classes).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    return model


def _stage_params(model: MAFS, stage: str) -> set[str]:
    prefixes = tuple(f"{m}." for m in MAFS.STAGE_MODULES[stage])
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def _with_grad(model: MAFS) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


class TestMAFS(ModelTester):
    model_name = "test_mafs"
    sizes = ((64, 96), (96, 64))

    def test_stage_two_backward_trains_exactly_its_modules(self) -> None:
        """Stage II path: every parameter of the stage's modules, and nothing of stage I's decoder."""
        model = _perturbed()
        out = model(*_inputs(2, 64, 96))
        aux = out.aux
        loss = (out.fused.square().mean() + out.logits.square().mean() + aux["fused_y"].mean()
                + aux["binary_logits"].square().mean() + aux["boundary_logits"].square().mean()
                + sum(s.square().mean() for s in aux["aux_logits"]))
        loss.backward()
        trained = _with_grad(model)
        expected = _stage_params(model, "fusion_seg")
        assert not expected - trained, f"no gradient reaches {sorted(expected - trained)[:10]}"
        assert trained == expected
        assert all(p.grad is None for p in model.recon_head.parameters())

    def test_odd_resolution_error_says_what_to_pad_to(self) -> None:
        """MAFS runs at any size (every resize follows the real map sizes); 32 is what the engine pads to."""
        model = self.build(num_classes=3).eval()
        assert model.input_multiple == 32 and not model.requires_divisible_input_shape
        out = model(*_inputs(1, 37, 53))
        assert out.fused.shape == (1, 3, 37, 53) and out.logits.shape == (1, 3, 37, 53)


@pytest.mark.parametrize("size, batch", [((64, 96), 3), ((96, 128), 1), ((120, 160), 2)])
def test_aux_outputs_in_training(size: tuple[int, int], batch: int) -> None:
    """The multilabel and deep-supervision outputs (fused/logits: test_model_contract)."""
    model = build_model("test_mafs", num_classes=4)
    h, w = size
    out = model.train()(*_inputs(batch, h, w))
    assert set(out.aux) == {"fused_y", "binary_logits", "boundary_logits", "aux_logits"}
    for key in ("fused_y", "binary_logits", "boundary_logits"):
        assert out.aux[key].shape == (batch, 1, h, w)
    assert out.aux["fused_y"].min() >= 0 and out.aux["fused_y"].max() <= 1
    assert [s.shape for s in out.aux["aux_logits"]] == [(batch, 4, h, w)] * 3


def test_fused_colour_is_the_visible_chroma() -> None:
    """Y comes from the fusion decoder, Cb/Cr from the visible image (BT.601)."""
    from ivf_perception.models.layers.color import rgb_to_ycbcr

    model = build_model("test_mafs", num_classes=2).eval()
    rgb = torch.rand(1, 3, 64, 64) * 0.2 + 0.4  # mid-range: no gamut clipping after recombination
    with torch.no_grad():
        fused = model(rgb, torch.rand(1, 1, 64, 64)).fused
    # 1e-3: the BT.601 constants of the forward and inverse conversion are rounded to 3 digits.
    torch.testing.assert_close(rgb_to_ycbcr(fused)[:, 1:], rgb_to_ycbcr(rgb)[:, 1:], atol=1e-3, rtol=0)


def test_reconstruction_path_shapes_and_gradients() -> None:
    """Stage I path: ``reconstruct`` trains encoder, fuser and its decoder, nothing of stage II's heads."""
    model = _perturbed()
    rgb_rec, thermal_rec = model.reconstruct(*_inputs(2, 64, 96))
    assert rgb_rec.shape == (2, 3, 64, 96) and thermal_rec.shape == (2, 1, 64, 96)
    assert rgb_rec.min() >= 0 and rgb_rec.max() <= 1 and thermal_rec.min() >= 0 and thermal_rec.max() <= 1
    (rgb_rec.square().mean() + thermal_rec.square().mean()).backward()
    trained = _with_grad(model)
    expected = _stage_params(model, "reconstruction")
    assert not expected - trained, f"no gradient reaches {sorted(expected - trained)[:10]}"
    assert trained == expected
    assert all(p.grad is None for p in [*model.fusion_head.parameters(), *model.seg_head.parameters()])


def test_stages_cover_every_module() -> None:
    model = build_model("test_mafs")
    used = {m for modules in MAFS.STAGE_MODULES.values() for m in modules}
    assert used == {n for n, _ in model.named_children()}


def test_reconstruct_rejects_wrong_inputs() -> None:
    from ivf_perception.checks import ShapeError

    with pytest.raises(ShapeError, match="thermal"):
        build_model("test_mafs").reconstruct(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


# --------------------------------------------------------------------------- trunk weights


def _imagenet_state(name: str = "test_resnet") -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of a timm/torchvision ImageNet ResNet checkpoint."""
    return {k: v.clone() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}


def test_trunk_weights_map_onto_both_trunks(tmp_path: Path) -> None:
    state = _imagenet_state()
    path = tmp_path / "resnet.safetensors"
    save_file(state, str(path))
    model = build_model("test_mafs")
    reports = model.load_trunk_weights(path)
    assert set(reports) == {"rgb", "thermal"}
    for key, trunk in (("rgb", model.encoder.trunk_rgb), ("thermal", model.encoder.trunk_thermal)):
        report = reports[key]
        assert not report.missing and not report.unexpected
        assert report.ignored and all(k.startswith(("conv1.", "fc.")) for k in report.ignored)
        for name, value in trunk.state_dict().items():
            torch.testing.assert_close(value, state[name], atol=0, rtol=0)
        assert len(report.loaded) == len(trunk.state_dict())


def test_trunk_weights_from_a_nested_pytorch_checkpoint(tmp_path: Path) -> None:
    """``torch.load(weights_only=True)`` files, with a ``state_dict`` level and DataParallel prefixes."""
    state = _imagenet_state()
    state["layer9.extra"] = torch.zeros(2)
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = build_model("test_mafs", trunk_weights=path)
    torch.testing.assert_close(model.encoder.trunk_thermal.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.load_trunk_weights(path)["rgb"].unexpected == ["layer9.extra"]


def test_trunk_weights_report_missing_tensors(tmp_path: Path) -> None:
    state = _imagenet_state()
    del state["layer4.0.conv1.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    report = build_model("test_mafs").load_trunk_weights(path)["rgb"]
    assert report.missing == ["layer4.0.conv1.weight"]


def test_different_trunks_need_their_own_weights(tmp_path: Path) -> None:
    model = build_model("mafs", preset="small", device="meta")
    with pytest.raises(TrunkWeightsError, match="trunks differ.*resnet18 weights as thermal_trunk_weights"):
        model.load_trunk_weights(tmp_path / "resnet34.safetensors")


def test_trunk_weights_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(TrunkWeightsError, match=r"nope\.safetensors not found.*test_resnet.*trunk_weights="):
        build_model("test_mafs", trunk_weights=tmp_path / "nope.safetensors")


class _Payload:
    """Stands for arbitrary pickled objects, which ``weights_only=True`` must refuse."""


def test_trunk_weights_refuse_unsafe_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(TrunkWeightsError, match="refused.*run code"):
        build_model("test_mafs").load_trunk_weights(path)


def test_trunk_weights_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(TrunkWeightsError, match="corrupt or truncated safetensors"):
        build_model("test_mafs").load_trunk_weights(path)


def test_trunk_weights_wrong_shape_is_reported(tmp_path: Path) -> None:
    state = _imagenet_state()
    state["layer2.0.conv1.weight"] = torch.zeros(7, 7, 1, 1)
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    model = build_model("test_mafs")
    own = tuple(model.encoder.trunk_rgb.layer2[0].conv1.weight.shape)
    expected = re.escape(f"layer2.0.conv1.weight: file (7, 7, 1, 1) vs trunk {own}")
    with pytest.raises(TrunkWeightsError, match=expected):
        model.load_trunk_weights(path)


def test_trunk_weights_of_another_network_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3)}, str(path))
    with pytest.raises(TrunkWeightsError, match="none of its 1 tensors has a trunk name"):
        build_model("test_mafs").load_trunk_weights(path)


# --------------------------------------------------------------------------- presets, registry, engine


def test_paper_preset_matches_the_published_configuration() -> None:
    model = build_model("mafs", preset="paper", device="meta")
    assert model.preset == "paper" and model.num_classes == 9
    trunk = model.encoder.trunk_rgb
    assert trunk.name == model.encoder.trunk_thermal.name == "resnet152"
    assert [len(trunk.layer1), len(trunk.layer2), len(trunk.layer3), len(trunk.layer4)] == [3, 8, 36, 3]
    assert len(model.fusion_head.blocks) == 5 and model.fusion_head.channels == 32
    params = sum(p.numel() for p in model.parameters()) / 1e6
    # The paper reports 128.69 M; the two trunks alone are 116.3 M.
    assert 120 < params < 135, params


def test_presets_build_and_shrink() -> None:
    small = build_model("mafs", preset="small", device="meta")
    tiny = build_model("mafs", preset="tiny", device="meta")
    assert 20e6 < sum(p.numel() for p in tiny.parameters()) < sum(p.numel() for p in small.parameters()) < 40e6
    assert (small.encoder.trunk_rgb.name, small.encoder.trunk_thermal.name) == ("resnet34", "resnet18")
    assert set(PRESET_ARGS) == {"paper", "small", "tiny", "test"}


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="Unknown MAFS preset 'huge'; expected one of paper, small, tiny, test"):
        build_model("mafs", preset="huge")
    with pytest.raises(ValueError, match="differ in width"):
        build_model("mafs", preset="tiny", thermal_trunk="resnet50", device="meta")
    with pytest.raises(ValueError, match="Unknown trunk 'resnet7'"):
        build_model("test_mafs", rgb_trunk="resnet7")
    with pytest.raises(ValueError, match="not a timm ResNet"):
        build_model("test_mafs", rgb_trunk="test_vit", device="meta")
    with pytest.raises(ValueError, match="shallow_dim must be even"):
        build_model("test_mafs", shallow_dim=7)


def test_device_and_dtype_are_passed_down() -> None:
    model = build_model("test_mafs", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float64}
    out = model.eval()(torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.rand(1, 1, 32, 32, dtype=torch.float64))
    assert out.fused.dtype == out.logits.dtype == torch.float64


def test_checkpoint_filter_hands_stage_one_weights_to_a_new_class_table() -> None:
    src = build_model("test_mafs", num_classes=9)
    dst = build_model("test_mafs", num_classes=4)
    missing, unexpected = dst.load_state_dict(checkpoint_filter_fn(src.state_dict(), dst), strict=False)
    assert not unexpected
    assert set(missing) == {"seg_head.head.semantic.weight", "seg_head.head.semantic.bias",
                            *(f"seg_head.stage_heads.{i}.{p}" for i in range(3) for p in ("weight", "bias"))}
    torch.testing.assert_close(dst.recon_head.to_rgb.weight, src.recon_head.to_rgb.weight)


def test_engine_runs_mafs_at_any_size() -> None:
    engine = Engine(build_model("test_mafs", num_classes=4), device="cpu")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    res = engine.infer(rgb, thermal)
    assert res.fused.shape == (50, 70, 3) and res.fused.dtype == np.uint8
    assert res.labels.shape == (50, 70) and res.labels.max() < 4
    assert engine.variant == "mafs" and engine.preset == "test"


def test_registered_names() -> None:
    from ivf_perception.models import list_models

    assert {"mafs", "test_mafs"} <= set(list_models())
