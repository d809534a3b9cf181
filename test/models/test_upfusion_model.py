"""The UP-Fusion network: shapes, contract, faithfulness properties, parameter count, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ivf_perception.checks import ShapeError
from ivf_perception.models import build_model
from ivf_perception.models.layers.color import rgb_to_gray, rgb_to_ycbcr
from ivf_perception.models.upfusion import UPFusion
from ivf_perception.models.upfusion.selection import recorded_margins, top_channels, top_entries
from ivf_perception.models.upfusion.semantic import SemanticWeightsError, build_semantic_backbone
from ivf_perception.models.upfusion.text import PROMPT, TextFeaturesError, prompt_embedding

NEVER_TRAINED = ("scpm.fc.", "scpm.semantic_fc.", "scpm.to_rgb.", "scpm.alpha", ".text_fc.", ".se_fc.")


@pytest.fixture(scope="module")
def model() -> UPFusion:
    torch.manual_seed(0)
    net = build_model("test_upfusion", num_classes=3)
    net.set_text_embedding(torch.randn(512))
    return net


def _pair(h: int = 16, w: int = 24, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_feature_shapes_at_every_level(model: UPFusion) -> None:
    rgb, th = _pair()
    model.eval()
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: shapes.__setitem__(k, tuple(o.shape)))
             for k, m in [*((f"enc{i}", model.encoder_vi[i]) for i in range(4)),
                          *((f"dec{i}", model.decoder[i]) for i in range(3)), ("split", model.split_conv)]]
    try:
        with torch.no_grad():
            feats = model.forward_features(rgb, th)
        out = model(rgb, th)
    finally:
        for h in hooks:
            h.remove()
    d = model._args["dim"]
    assert shapes["split"] == (2, 2 * d, 16, 24)
    assert feats.selections["scpm"].shape == (2, int(0.7 * d))
    for i in range(4):
        assert shapes[f"enc{i}"] == (2, d * 2 ** i, 16 // 2 ** i, 24 // 2 ** i)
        sel = feats.selections[f"tcpm{i + 1}"]
        assert sel.shape == (2, d * 2 ** i) and sel.dtype == torch.int64 and int(sel.max()) < 2 * d * 2 ** i
    assert shapes["dec0"] == (2, 2 * d, 16, 24) and shapes["dec1"] == (2, 2 * d, 8, 12)
    assert shapes["dec2"] == (2, 4 * d, 4, 6)
    assert out.fused.shape == (2, 3, 16, 24) and out.logits is not None and out.logits.shape == (2, 3, 16, 24)
    assert out.fused.min() >= 0 and out.fused.max() <= 1 and out.aux == {}


def test_fused_colour_is_the_clamped_luminance_with_the_visible_chroma(model: UPFusion) -> None:
    rgb, th = _pair()
    model.train()
    out = model(rgb, th)
    model.eval()
    y = out.aux["fused_y"]
    assert y.shape == (2, 1, 16, 24)
    ycc_fused, ycc_rgb = rgb_to_ycbcr(out.fused), rgb_to_ycbcr(rgb)
    inside = ((out.fused > 1e-3) & (out.fused < 1 - 1e-3)).all(dim=1, keepdim=True)
    torch.testing.assert_close(ycc_fused[:, :1][inside], y.clamp(0, 1)[inside], atol=2e-3, rtol=0)
    torch.testing.assert_close(ycc_fused[:, 1:][inside.expand(-1, 2, -1, -1)],
                               ycc_rgb[:, 1:][inside.expand(-1, 2, -1, -1)], atol=2e-3, rtol=0)


def test_network_sees_bt601_luminance_of_the_visible_image(model: UPFusion) -> None:
    seen = []
    hook = model.embed_vi.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    rgb, th = _pair()
    with torch.no_grad():
        model.eval()(rgb, th)
    hook.remove()
    torch.testing.assert_close(seen[0], rgb_to_gray(rgb))


def test_input_not_divisible_by_8_or_too_small_is_refused(model: UPFusion) -> None:
    with pytest.raises(ShapeError, match="divisible by 8"):
        model(*_pair(12, 16))
    with pytest.raises(ShapeError, match="divisible by 8"):
        model(*_pair(4, 4))


def test_scorers_get_no_gradient_as_in_the_released_code() -> None:
    torch.manual_seed(3)
    net = build_model("test_upfusion", num_classes=0).train()
    net.set_text_embedding(torch.randn(512))
    out = net(*_pair())
    (out.aux["fused_y"].square().mean()).backward()
    none = {n for n, p in net.named_parameters() if p.requires_grad and p.grad is None}
    expected = {n for n, p in net.named_parameters() if p.requires_grad and any(t in n for t in NEVER_TRAINED)}
    assert none == expected and len(expected) == 8 + 4 * 6
    assert not any(p.requires_grad for p in net.scpm.backbone.parameters())  # frozen ConvNeXt
    assert net.scpm.expand_conv.weight.grad is not None and net.tcpm[0].conv_out.weight.grad is not None


def test_paper_parameter_count_on_the_meta_device() -> None:
    net = build_model("upfusion", preset="paper", num_classes=0, device="meta")
    tower = sum(p.numel() for p in net.scpm.backbone.parameters())
    total = sum(p.numel() for p in net.parameters())
    assert tower == 87_564_416  # torchvision ConvNeXt-B features
    assert total - tower == 49_309_724  # the released model's used parameters (spec §1.9)
    assert not any(n.endswith("_gt") or "_gt." in n for n, _ in net.named_parameters())


def test_text_embedding_and_permutations_are_stored_in_the_weights(model: UPFusion) -> None:
    state = model.state_dict()
    for i in range(4):
        pi = state[f"tcpm.{i}.text_permutation"]
        assert pi.dtype == torch.int64 and sorted(pi.tolist()) == list(range(pi.numel()))
    fresh = build_model("test_upfusion", num_classes=3)
    assert not fresh.has_text_embedding()
    fresh.load_state_dict(state)
    assert fresh.has_text_embedding()
    for a, b in zip(fresh.permutations(), model.permutations()):
        assert torch.equal(a, b)
    rgb, th = _pair()
    torch.testing.assert_close(fresh.eval()(rgb, th).fused, model.eval()(rgb, th).fused)
    # recomputing π from the stored embedding reproduces the stored one
    stored = [p.clone() for p in fresh.permutations()]
    fresh.refresh_permutations()
    assert all(torch.equal(a, b) for a, b in zip(stored, fresh.permutations()))
    assert all(m > 0 for m in fresh.permutation_margins())


def test_stored_permutation_wins_over_the_text_mlp() -> None:
    """Inference uses the stored π, not a recomputation (which another precision could change)."""
    torch.manual_seed(4)
    net = build_model("test_upfusion", num_classes=0).eval()
    net.set_text_embedding(torch.randn(512))
    rgb, th = _pair()
    before = net(rgb, th).fused
    with torch.no_grad():
        for m in net.tcpm:
            m.text_fc[2].weight.mul_(-1)
    torch.testing.assert_close(net(rgb, th).fused, before)
    net.refresh_permutations()
    assert not torch.allclose(net(rgb, th).fused, before)


@pytest.mark.parametrize("bad, match", [
    (torch.full((512,), float("nan")), "non-finite"),
    (torch.tensor([float("inf")] * 512), "non-finite"),
    (torch.zeros(2, 512), "shape"),
])
def test_bad_text_embedding_is_refused(bad: torch.Tensor, match: str) -> None:
    net = build_model("test_upfusion", num_classes=0)
    with pytest.raises(TextFeaturesError, match=match):
        net.set_text_embedding(bad)


def test_text_embedding_file(tmp_path: Path) -> None:
    path = tmp_path / "prompt.safetensors"
    t = torch.randn(1, 512)
    save_file({"text_features": t}, str(path))
    net = build_model("test_upfusion", num_classes=0, text_embedding=str(path))
    torch.testing.assert_close(net.text_embedding, t[0])
    save_file({"other": t}, str(tmp_path / "x.safetensors"))
    with pytest.raises(TextFeaturesError, match="x.safetensors.*no 'text_embedding'"):
        build_model("test_upfusion", num_classes=0, text_embedding=str(tmp_path / "x.safetensors"))
    with pytest.raises(TextFeaturesError, match="missing.safetensors"):
        build_model("test_upfusion", num_classes=0, text_embedding=str(tmp_path / "missing.safetensors"))


def test_convnext_loads_strictly_from_a_local_torchvision_file(tmp_path: Path) -> None:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(5)
    ref = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)])
    path = tmp_path / "tower.pth"
    torch.save(ref.state_dict(), path)
    tower, _ = build_semantic_backbone("test", path)
    for k, v in ref.features.state_dict().items():
        assert torch.equal(tower.state_dict()[k], v), k
    net = build_model("test_upfusion", num_classes=0, semantic_weights=str(path))
    assert torch.equal(net.scpm.backbone.state_dict()["0.0.weight"], ref.features[0][0].weight)


def test_missing_or_foreign_convnext_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SemanticWeightsError, match=r"nope\.pth.*convnext_base-6075fbad\.pth"):
        build_model("upfusion", preset="paper", semantic_weights=str(tmp_path / "nope.pth"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(SemanticWeightsError, match="foreign.pth is not a torchvision test"):
        build_semantic_backbone("test", foreign)
    with pytest.raises(SemanticWeightsError, match="convnext_base, convnext_tiny"):
        build_semantic_backbone("resnet")


def test_missing_clip_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TextFeaturesError, match=r"CLIP weights not found: .*clip\.bin"):
        build_model("test_upfusion", clip_weights=str(tmp_path / "clip.bin"))


def test_prompt_embedding_from_a_seeded_random_open_clip_tower() -> None:
    """open_clip ViT-B-32-quickgelu with random weights (no CLIP file here): the real encoder
    path, deterministic, and the permutations follow it."""
    open_clip = pytest.importorskip("open_clip")
    tokens = open_clip.get_tokenizer("ViT-B-32-quickgelu")([PROMPT])
    assert 40 < int((tokens != 0).sum()) < 77  # fits CLIP's context: nothing truncated
    t = prompt_embedding("random")
    assert t.shape == (512,) and torch.isfinite(t).all()
    torch.manual_seed(6)
    net = build_model("test_upfusion", num_classes=0, clip_weights="random")
    torch.testing.assert_close(net.text_embedding, t)
    for m in net.tcpm:
        assert torch.equal(m.text_permutation, torch.topk(m.text_scores(t), m.text_permutation.numel()).indices)


def test_paper_gmacs_on_the_meta_device_match_the_public_code() -> None:
    """Spec §1.9, measured with the public model file: 138 GMAC at 192², 1035 at 480×640."""
    from ivf_perception.engine.profiling import count_gmacs

    net = build_model("upfusion", preset="paper", num_classes=0, device="meta")
    assert count_gmacs(net, 192, 192, device="meta") == pytest.approx(137.7, abs=0.5)
    assert count_gmacs(net, 480, 640, device="meta") == pytest.approx(1035.0, abs=0.5)


def test_recorded_margins_are_the_gaps_that_decide_each_top_k() -> None:
    """k-th vs (k+1)-th score always; between kept entries only where their order matters."""
    scores = torch.tensor([[0.9, 0.5, 0.88, 0.1]])
    with recorded_margins() as margins:
        assert top_channels(scores, 2).tolist() == [[0, 2]]  # ordered: 0.9 - 0.88 decides
        assert top_entries(scores, 2, ordered=False).tolist() == [[0, 2]]  # a set: 0.88 - 0.5 decides
    assert margins == pytest.approx([0.02, 0.38])
    top_channels(scores, 2)  # nothing recorded outside the context
    assert len(margins) == 2


def test_selection_margin_covers_every_hard_selection(model: UPFusion) -> None:
    """SCPM, four TCPM SE selections and four top-m masks; the smallest one is reported."""
    rgb, thermal = torch.rand(1, 3, 32, 40), torch.rand(1, 1, 32, 40)
    with recorded_margins() as margins:
        model.forward_features(rgb, thermal)
    assert len(margins) == 9
    assert model.selection_margin(rgb, thermal) == min(margins) > 0.0
