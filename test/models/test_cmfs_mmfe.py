"""CMFS MMFE: routing, expert ranks, balance loss by hand, shapes, gradients, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ivf_perception.checks import ShapeError
from ivf_perception.models.cmfs.mmfe import (
    ChannelEmbed,
    LowRankMoE,
    MultiModalFeatureEnhancement,
    ResMoEBlock,
    SequenceMamba,
    StripConv,
    channel_shuffle,
    load_balancing_loss,
)

DIM = 8


def _mmfe(**kw) -> MultiModalFeatureEnhancement:
    return MultiModalFeatureEnhancement(DIM, **{"mamba_d_state": 4, **kw})


def _pair(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, DIM, h, w), torch.randn(b, DIM, h, w)


def _forced_moe(top_k: int = 1) -> LowRankMoE:
    """A router whose logit for expert e is 10 × the mean of channel e: the input picks the expert."""
    moe = LowRankMoE(DIM, ranks=(2, 4, 8), top_k=top_k)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :3] = 10.0 * torch.eye(3)
    return moe


def _inputs_choosing(experts: list[int], h: int = 3, w: int = 4) -> torch.Tensor:
    x = 0.1 * torch.randn(len(experts), DIM, h, w)
    for s, e in enumerate(experts):
        x[s, e] += 1.0
    return x


def _grad_is_nonzero(p: nn.Parameter) -> bool:
    return p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0


class TestHelpers:
    def test_channel_shuffle_hand(self) -> None:
        x = torch.arange(6.0).view(1, 6, 1, 1)
        assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
        with pytest.raises(ValueError, match="C=5 is not divisible by groups=2"):
            channel_shuffle(torch.zeros(1, 5, 2, 2), 2)

    def test_balance_loss_hand(self) -> None:
        probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
        index = torch.tensor([[0], [1]])
        # f = (1/2, 1/2, 0), P = (0.4, 0.4, 0.2): 3 * (0.2 + 0.2) = 1.2
        assert float(load_balancing_loss(probs, index)) == pytest.approx(1.2)
        # top-2 slots: f = (2, 1, 1) / 4, P = (0.4, 0.4, 0.2): 3 * (0.2 + 0.1 + 0.05) = 1.05
        assert float(load_balancing_loss(probs, torch.tensor([[0, 1], [0, 2]]))) == pytest.approx(1.05)

    def test_balance_loss_uniform_is_minimal(self) -> None:
        uniform = torch.full((3, 3), 1 / 3)
        assert float(load_balancing_loss(uniform, torch.tensor([[0], [1], [2]]))) == pytest.approx(1.0)
        assert float(load_balancing_loss(uniform, torch.tensor([[0, 1], [1, 2], [2, 0]]))) == pytest.approx(1.0)
        # every image with the same router distribution p goes to argmax p: loss = E·max(p) >= 1
        for _ in range(5):
            p = torch.rand(3).softmax(0)
            probs = p.expand(4, 3)
            loss = float(load_balancing_loss(probs, probs.argmax(1, keepdim=True)))
            assert loss == pytest.approx(3 * float(p.max())) and loss > 1.0
        collapsed = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)
        assert float(load_balancing_loss(collapsed, torch.zeros(4, 1, dtype=torch.long))) == pytest.approx(3.0)

    def test_balance_loss_gradient_lowers_the_overloaded_expert(self) -> None:
        logits = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.0, 1.0]], requires_grad=True)
        probs = logits.softmax(1)
        load_balancing_loss(probs, probs.argmax(1, keepdim=True)).backward()
        assert (logits.grad[:, 0] > 0).all()  # descending lowers expert 0, which got every image


class TestLowRankMoE:
    def test_expert_ranks(self) -> None:
        moe = LowRankMoE(DIM)
        assert [e.rank for e in moe.experts] == [2, 4, 8]
        for expert, r in zip(moe.experts, (2, 4, 8)):
            assert expert.down_x.weight.shape == (r, DIM, 1, 1)
            assert expert.down_ctx.weight.shape == (r, DIM, 1, 1)
            assert expert.up.weight.shape == (DIM, r, 1, 1)
        assert moe.router.weight.shape == (3, DIM) and moe.router.bias is None

    def test_routes_each_image_to_its_forced_expert(self) -> None:
        moe = _forced_moe()
        x = _inputs_choosing([2, 0, 1, 2])
        ctx = torch.randn_like(x)
        probs, index = moe.route(x)
        assert index.flatten().tolist() == [2, 0, 1, 2]
        y, _ = moe(x, ctx)
        for s, e in enumerate([2, 0, 1, 2]):
            expected = x[s] + probs[s, e] * moe.experts[e](x[s:s + 1], ctx[s:s + 1])[0]
            torch.testing.assert_close(y[s], expected)

    def test_top_k_uses_exactly_k_experts(self) -> None:
        moe = _forced_moe(top_k=2)
        x = _inputs_choosing([1])
        x[0, 2] += 0.5  # second choice: expert 2
        ctx = torch.randn_like(x)
        probs, index = moe.route(x)
        assert sorted(index.flatten().tolist()) == [1, 2]
        y, _ = moe(x, ctx)
        expected = x + probs[0, 1] * moe.experts[1](x, ctx) + probs[0, 2] * moe.experts[2](x, ctx)
        torch.testing.assert_close(y, expected)

    def test_returned_loss_is_the_balance_loss(self) -> None:
        moe = _forced_moe()
        x = _inputs_choosing([0, 0, 1])
        _, loss = moe(x, torch.randn_like(x))
        probs, index = moe.route(x)
        torch.testing.assert_close(loss, load_balancing_loss(probs, index))

    def test_router_and_chosen_expert_get_gradients_others_none(self) -> None:
        moe = _forced_moe()
        x = _inputs_choosing([1])
        y, _ = moe(x, torch.randn_like(x))
        y.square().sum().backward()  # task loss only: the gate probability carries the gradient
        assert _grad_is_nonzero(moe.router.weight)
        assert all(_grad_is_nonzero(p) for p in moe.experts[1].parameters())
        for e in (0, 2):
            assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in moe.experts[e].parameters())

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="top_k must be between 1 and the number of experts \\(3\\), got 4"):
            LowRankMoE(DIM, top_k=4)
        with pytest.raises(ValueError, match="ranks must be a non-empty sequence of positive ints"):
            LowRankMoE(DIM, ranks=(2, 0))
        with pytest.raises(ShapeError, match="context: expected H=3"):
            LowRankMoE(DIM)(torch.randn(1, DIM, 3, 4), torch.randn(1, DIM, 4, 4))


class TestBlocks:
    def test_channel_embed(self) -> None:
        embed = ChannelEmbed(2 * DIM, DIM)
        assert embed(torch.randn(2, 2 * DIM, 5, 7)).shape == (2, DIM, 5, 7)
        assert embed.residual.bias is None and embed.residual.kernel_size == (1, 1)
        assert isinstance(embed.norm, nn.BatchNorm2d)
        with pytest.raises(ShapeError, match="expected C=16"):
            embed(torch.randn(1, DIM, 5, 7))

    def test_sequence_mamba_is_causal(self) -> None:
        mixer = SequenceMamba(DIM, d_state=4)
        x = torch.randn(2, 11, DIM)
        y = mixer(x)
        x2 = x.clone()
        x2[:, 7:] += 1.0
        y2 = mixer(x2)
        torch.testing.assert_close(y2[:, :7], y[:, :7])
        assert not torch.allclose(y2[:, 7:], y[:, 7:])

    def test_sequence_mamba_ref_matches_chunked(self) -> None:
        chunked = SequenceMamba(DIM, d_state=4, scan_backend="chunked")
        ref = SequenceMamba(DIM, d_state=4, scan_backend="ref")
        ref.load_state_dict(chunked.state_dict())
        x = torch.randn(1, 13, DIM)
        torch.testing.assert_close(ref(x), chunked(x), rtol=1e-4, atol=1e-5)

    def test_strip_conv_receptive_field(self) -> None:
        block = StripConv(DIM, kernel_size=11)
        assert block.strip[0].weight.shape == (DIM, 1, 1, 11)
        assert block.strip[1].weight.shape == (DIM, 1, 11, 1)
        x = torch.randn(1, DIM, 25, 25, requires_grad=True)
        block(x)[0, :, 12, 12].sum().backward()
        support = x.grad.abs().sum(1)[0] > 0
        # 11×11 strips, then the feed-forward gate's 3×3: a 13×13 box centred on (12, 12)
        expected = torch.zeros(25, 25, dtype=torch.bool)
        expected[6:19, 6:19] = True
        assert torch.equal(support, expected)
        with pytest.raises(ValueError, match="positive odd int"):
            StripConv(DIM, kernel_size=10)

    def test_res_moe_block(self) -> None:
        block = ResMoEBlock(DIM, mamba_d_state=4)
        y, loss = block(torch.randn(2, DIM, 5, 6))
        assert y.shape == (2, DIM, 5, 6) and loss.shape == ()
        plain = ResMoEBlock(DIM, mamba_d_state=None)
        assert isinstance(plain.token_mixer, nn.Identity)


class TestMMFE:
    def test_defaults(self) -> None:
        m = MultiModalFeatureEnhancement(DIM)
        assert len(m.moe_blocks) == 2 and len(m.strip_blocks) == 2
        assert [e.rank for e in m.moe_blocks[0].moe.experts] == [2, 4, 8]
        assert m.moe_blocks[0].moe.top_k == 1 and m.strip_blocks[0].kernel_size == 11
        assert m.moe_blocks[0].token_mixer.d_state == 64 and m.moe_blocks[0].use_shuffle
        y, loss = m(*_pair(1, 6, 5))
        assert y.shape == (1, DIM, 6, 5) and torch.isfinite(loss)

    @pytest.mark.parametrize("training", [True, False])
    @pytest.mark.parametrize("batch", [1, 2, 3])
    def test_shapes(self, batch: int, training: bool) -> None:
        m = _mmfe().train(training)
        for h, w in [(15, 20), (30, 40), (7, 9)]:
            fused, loss = m(*_pair(batch, h, w))
            assert fused.shape == (batch, DIM, h, w)
            assert loss.shape == () and torch.isfinite(loss) and float(loss.detach()) > 0
            assert torch.isfinite(fused).all()

    def test_gradients_reach_every_parameter(self) -> None:
        m = _mmfe(top_k=3).train()  # every expert active, so every expert must get a gradient
        fused, loss = m(*_pair(2, 6, 7))
        (fused.square().mean() + loss).backward()
        missing = [n for n, p in m.named_parameters() if not _grad_is_nonzero(p)]
        assert not missing, f"no gradient reached {missing}"

    def test_top1_router_is_trained_by_the_task_loss(self) -> None:
        m = _mmfe().train()
        fused, _ = m(*_pair(2, 6, 7))
        fused.square().mean().backward()
        for block in m.moe_blocks:
            assert _grad_is_nonzero(block.moe.router.weight)

    def test_eval_is_deterministic_and_per_image(self) -> None:
        m = _mmfe().eval()
        rgb, thermal = _pair(3, 9, 11)
        with torch.no_grad():
            a, loss_a = m(rgb, thermal)
            b, loss_b = m(rgb, thermal)
            alone, _ = m(rgb[1:2], thermal[1:2])
        assert torch.equal(a, b) and torch.equal(loss_a, loss_b)
        torch.testing.assert_close(alone[0], a[1], rtol=1e-5, atol=1e-5)  # routing is per image

    def test_device_dtype(self) -> None:
        m = _mmfe(device="cpu", dtype=torch.float64)
        assert {p.dtype for p in m.parameters()} == {torch.float64}
        fused, loss = m(*(t.double() for t in _pair(1, 5, 6)))
        assert fused.dtype == torch.float64 and loss.dtype == torch.float64

    def test_exception(self) -> None:
        m = _mmfe()
        with pytest.raises(ShapeError, match="x_thermal: expected H=5"):
            m(torch.randn(1, DIM, 5, 6), torch.randn(1, DIM, 6, 6))
        with pytest.raises(ShapeError, match="x_rgb: expected C=8"):
            m(torch.randn(1, 3, 5, 6), torch.randn(1, 3, 5, 6))
        with pytest.raises(ValueError, match="num_blocks must be >= 1"):
            MultiModalFeatureEnhancement(DIM, num_blocks=0)
