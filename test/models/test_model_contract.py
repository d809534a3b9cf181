"""The forward contract (DESIGN §3), checked once for every ``test_*`` variant in the registry.

timm's registry sweep: a new family is covered as soon as it registers its micro variant. What
is specific to a family (auxiliary outputs, stages, ablations, weights files) stays in the
family's own test file; what every model promises is checked here and nowhere else:

* ``fused`` is B×3×H×W in [0, 1], ``logits`` B×K×H×W and finite, ``aux`` empty in eval;
* any H, W runs once padded to ``input_multiple`` and cropped back (what the engine does);
* in eval, the output is deterministic and a batch equals its items run alone;
* gradients reach every parameter on the forward path (non-zero, after a small perturbation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from base_tester import package_models
from torch import nn

from ivf_perception.models import FusionSegOutput, build_model

NUM_CLASSES = 5
TEST_MODELS = package_models("test_*")

# Parameters one forward pass leaves without gradient by design: CMFS routes each sample to one
# expert of its mixture (top-1; test_cmfs_mmfe forces every expert), MAFS's stage I
# reconstruction decoder runs only in ``reconstruct`` (test_mafs_model covers that path).
OFF_FORWARD_PATH: dict[str, tuple[str, ...]] = {
    "test_cmfs": (".experts.",), "test_mafs": ("recon_head.",),
    # UP-Fusion's scorers act only through top-k indices, so (as in the released code) they never
    # get a gradient; test_upfusion_model.py documents exactly which.
    "test_upfusion": ("scpm.fc.", "scpm.semantic_fc.", "scpm.to_rgb.", "scpm.alpha", ".text_fc.", ".se_fc."),
    # TeSG without guidance runs its fallback (whole-image wiring): the background (1 - M) cross-
    # attentions serve only guided batches; test_tesg_model.py checks them with a mask.
    "test_tesg": ("mgca.ca_vi_mbar.", "mgca.ca_iv_mbar."),
}

# Share of parameter tensors whose gradient may be exactly zero for one batch: a squeeze MLP of
# one hidden unit in the micro CMFS can sit behind an inactive ReLU (a zero, not a missing,
# gradient). Every other micro model must give every tensor a non-zero gradient.
MAY_BE_ZERO: dict[str, float] = {"test_cmfs": 0.02}

# What a trained model carries beyond its parameters: CMFS's CLIP text features (zeros until
# set, which would zero the region map's gradients), TeSG's fallback text tokens.
PREPARE: dict[str, Callable[[Any], None]] = {
    "test_cmfs": lambda m: m.set_text_features(torch.randn(m.num_prompts, 512)),
    # TeSG's fallback caption tokens (zeros until set: LayerNorm of zeros has no weight gradient).
    "test_tesg": lambda m: m.set_fallback_text(torch.randn_like(m.fallback_text)),
}


def test_the_sweep_covers_every_family() -> None:
    families = {n for n in package_models() if not n.startswith("test_")}
    assert {n.removeprefix("test_") for n in TEST_MODELS} == families


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES)
    PREPARE.get(name, lambda m: None)(model)
    return model


def _inputs(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def _sizes(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Two small sizes the model accepts as they are, one portrait, one landscape."""
    m = model.input_multiple
    return (2 * m, 3 * m), (3 * m, 2 * m)


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad bottom/right to a multiple, as the engine's pre-processing does."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


def _assert_contract(out: FusionSegOutput, batch: int, h: int, w: int) -> None:
    assert isinstance(out, FusionSegOutput)
    assert out.fused.shape == (batch, 3, h, w)
    assert float(out.fused.min()) >= 0.0 and float(out.fused.max()) <= 1.0
    assert out.logits is not None and out.logits.shape == (batch, NUM_CLASSES, h, w)
    assert torch.isfinite(out.logits).all()


@pytest.fixture(scope="module", params=TEST_MODELS)
def model(request: pytest.FixtureRequest) -> nn.Module:
    return _build(request.param)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_forward_shapes_and_ranges(model: nn.Module, batch: int, training: bool) -> None:
    model.train(training)
    for h, w in _sizes(model):
        with torch.no_grad():
            out = model(*_inputs(batch, h, w))
        _assert_contract(out, batch, h, w)
        if not training:
            assert out.aux == {}


def test_any_size_runs_once_padded_to_the_multiple(model: nn.Module) -> None:
    model.eval()
    m = model.input_multiple
    h, w = 2 * m - 3, 3 * m - 5
    rgb, thermal = _inputs(2, h, w)
    with torch.no_grad():
        out = model(_pad(rgb, m), _pad(thermal, m))
    out.fused, out.logits = out.fused[..., :h, :w], out.logits[..., :h, :w]
    _assert_contract(out, 2, h, w)


def test_eval_is_deterministic_and_a_batch_equals_its_items(model: nn.Module) -> None:
    model.eval()
    h, w = _sizes(model)[0]
    rgb, thermal = _inputs(3, h, w)
    with torch.no_grad():
        a, b = model(rgb, thermal), model(rgb, thermal)
        single = model(rgb[1:2], thermal[1:2])
    assert torch.equal(a.fused, b.fused) and torch.equal(a.logits, b.logits)
    torch.testing.assert_close(single.fused, a.fused[1:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single.logits, a.logits[1:2], rtol=1e-4, atol=1e-4)


def _aux_tensors(aux: Any) -> list[torch.Tensor]:
    if isinstance(aux, torch.Tensor):
        return [aux] if aux.is_floating_point() else []
    if isinstance(aux, dict):
        return [t for v in aux.values() for t in _aux_tensors(v)]
    if isinstance(aux, (list, tuple)):
        return [t for v in aux for t in _aux_tensors(v)]
    return []


@pytest.mark.parametrize("name", TEST_MODELS)
def test_gradients_reach_every_parameter_on_the_forward_path(name: str) -> None:
    model = _build(name).train()
    # Zero-initialised parts (fusion corrections, last-BN gammas, attention γ) would stop the
    # gradient to the layers before them at step 0; perturb so every path carries one.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    out = model(*_inputs(2, *_sizes(model)[0]))
    loss = out.fused.square().mean() + out.logits.square().mean()
    loss = loss + sum(t.square().mean() for t in _aux_tensors(out.aux))
    loss.backward()
    exempt = OFF_FORWARD_PATH.get(name, ())
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not any(e in n for e in exempt)]
    unreached = [n for n, p in params if p.grad is None]
    assert not unreached, f"no gradient reaches {unreached}"
    zero = [n for n, p in params if not p.grad.abs().sum()]
    assert len(zero) <= MAY_BE_ZERO.get(name, 0.0) * len(params), f"parameters with zero gradient: {zero}"
