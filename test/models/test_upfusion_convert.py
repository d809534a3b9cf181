"""Conversion of the released ``Fuse.pth`` layout, on synthetic state dicts of that layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ivf_perception.models import build_model
from ivf_perception.models.upfusion.convert import (
    COMPUTED_KEYS,
    ReleasedCheckpointError,
    convert_released_state_dict,
    load_released_into,
    map_released_key,
    read_released_checkpoint,
)


def released_name(ours: str) -> str:
    """Our key written with the released ``model/framework.py`` attribute names (independent of
    the converter: spelled out level by level from the release's ``__init__``)."""
    level = {"0": "1", "1": "2", "2": "3"}
    subs = [
        (r"^embed_vi\.", "patch_embed.proj."), (r"^embed_ir\.", "ir_imb.proj."),
        (r"^scpm\.backbone\.", "channel_select.convnext.0."), (r"^scpm\.semantic_fc\.", "channel_select.convnext_fc."),
        (r"^scpm\.to_rgb\.", "channel_select.suo_conv."), (r"^scpm\.", "channel_select."),
        (r"^split_conv\.", "expand_conv."), (r"^gam_(vi|ir)\.affine\.", r"GEO_\1.affine_fc."),
        (r"^encoder_(vi|ir)\.3\.", r"latent_\1."),
        (r"^encoder_(vi|ir)\.([012])\.", lambda m: f"encoder_level{level[m.group(2)]}_{m.group(1)}."),
        (r"^down\.([012])\.", lambda m: {"0": "down1_2", "1": "down2_3", "2": "down3_4"}[m.group(1)] + ".body."),
        (r"^tcpm\.3\.", "latent_shuffle_channel."),
        (r"^tcpm\.([012])\.", lambda m: f"encoder_shuffle_channel{level[m.group(1)]}."),
        (r"^up\.([012])\.", lambda m: {"0": "up2_1", "1": "up3_2", "2": "up4_3"}[m.group(1)] + ".body."),
        (r"^reduce\.([01])\.", lambda m: {"0": "reduce_chan_level2", "1": "reduce_chan_level3"}[m.group(1)] + "."),
        (r"^decoder\.([012])\.", lambda m: f"decoder_level{level[m.group(1)]}."),
        (r"\.attn\.scale$", ".select_attn.attn4"),
        (r"(shuffle_channel\d?|latent_shuffle_channel)\.expand_conv\.", r"\1.conv1x1."),
        (r"(shuffle_channel\d?)\.attn\.", r"\1.select_attn."),
        (r"\.(norm[123])\.(weight|bias)$", r".\1.body.\2"),
    ]
    name = ours
    for pattern, repl in subs:
        name = re.sub(pattern, repl, name)  # type: ignore[arg-type]
    return name


def released_state(model) -> dict[str, torch.Tensor]:
    """A synthetic ``Fuse.pth`` content: random tensors under the released names, the dead
    ``_gt`` encoder, ``module.`` prefixes, no text buffers."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in model.state_dict().items():
        if COMPUTED_KEYS.match(k):
            continue
        state["module." + released_name(k)] = torch.randn(v.shape, generator=g) if v.is_floating_point() else v
    for k, v in list(state.items()):
        if k.startswith("module.encoder_level1_vi.") or k.startswith("module.latent_vi."):
            state[k.replace("_vi.", "_gt.")] = torch.randn(v.shape, generator=g)
    return state


def test_spot_checks_of_released_names() -> None:
    cases = {
        "patch_embed.proj.weight": "embed_vi.weight",
        "channel_select.convnext.0.1.0.block.0.weight": "scpm.backbone.1.0.block.0.weight",
        "channel_select.alpha": "scpm.alpha",
        "channel_select.expand_conv.weight": "scpm.expand_conv.weight",
        "expand_conv.bias": "split_conv.bias",
        "encoder_level2_ir.3.norm1.body.bias": "encoder_ir.1.3.norm1.bias",
        "latent_vi.7.attn.qkv_dwconv.weight": "encoder_vi.3.7.attn.qkv_dwconv.weight",
        "down3_4.body.0.weight": "down.2.0.weight",
        "up4_3.body.0.weight": "up.2.0.weight",
        "reduce_chan_level2.weight": "reduce.0.weight",
        "decoder_level1.0.ffn.project_in.weight": "decoder.0.0.ffn.project_in.weight",
        "encoder_shuffle_channel1.select_attn.attn4": "tcpm.0.attn.scale",
        "latent_shuffle_channel.conv1x1.bias": "tcpm.3.expand_conv.bias",
        "encoder_shuffle_channel3.norm3.body.weight": "tcpm.2.norm3.weight",
        "GEO_ir.affine_fc.2.bias": "gam_ir.affine.2.bias",
    }
    for released, ours in cases.items():
        assert map_released_key(released) == ours, released
    assert map_released_key("encoder_level3_gt.0.attn.temperature") is None
    assert map_released_key("latent_gt.1.ffn.dwconv.weight") is None


def test_paper_layout_maps_onto_every_parameter() -> None:
    model = build_model("upfusion", preset="paper", num_classes=0, device="meta")
    ours = {k for k in model.state_dict() if not COMPUTED_KEYS.match(k)}
    assert {map_released_key(released_name(k)) for k in ours} == ours
    # torchvision's convnext_base has 344 tensors, 4 of them in the classifier the release drops
    assert sum(1 for k in ours if k.startswith("scpm.backbone.")) == 340


def test_released_checkpoint_loads_strictly_and_reproduces_the_tensors(tmp_path: Path) -> None:
    model = build_model("test_upfusion", num_classes=0)
    state = released_state(model)
    path = tmp_path / "Fuse.pth"
    torch.save({"AWF": state}, path)
    text = torch.randn(512)
    margins = load_released_into(model, path, text)
    assert len(margins) == 4 and all(m >= 0 for m in margins)
    own = model.state_dict()
    for k, v in state.items():
        if "_gt." in k:
            continue
        assert torch.equal(own[map_released_key(k.removeprefix("module."))], v), k
    torch.testing.assert_close(model.text_embedding, text)
    for m in model.tcpm:  # π from the checkpoint's own text_fc
        assert torch.equal(m.text_permutation, torch.topk(m.text_scores(text), m.text_permutation.numel()).indices)
    model.eval()(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))


def test_other_layouts_and_other_presets_are_refused(tmp_path: Path) -> None:
    model = build_model("test_upfusion", num_classes=0)
    foreign = tmp_path / "other.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(ReleasedCheckpointError, match=r"other\.pth is not a released UP-Fusion checkpoint"):
        read_released_checkpoint(foreign)
    with pytest.raises(ReleasedCheckpointError, match="missing.pth"):
        read_released_checkpoint(tmp_path / "missing.pth")
    state = {k.removeprefix("module."): v for k, v in released_state(model).items()}
    state["channel_select.extra.weight"] = torch.zeros(1)
    del state["output.weight"]
    with pytest.raises(ReleasedCheckpointError, match=r"1 unexpected keys \['channel_select.extra.weight'\], "
                                                      r"1 missing \['output.weight'\]"):
        convert_released_state_dict(state, model)
    wider = build_model("test_upfusion", num_classes=0, dim=24, heads=(1, 2, 4, 4))
    with pytest.raises(ReleasedCheckpointError, match="shape mismatches"):
        convert_released_state_dict({k.removeprefix("module."): v for k, v in released_state(model).items()}, wider)


def test_convert_command_writes_engine_weights_the_engine_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ivf_perception.cli.convert_upfusion import main
    from ivf_perception.engine.weights import build_model_from_weights

    source = build_model("upfusion", preset="test", num_classes=0)
    path = tmp_path / "Fuse.pth"
    torch.save({"AWF": released_state(source)}, path)
    text = tmp_path / "prompt.safetensors"
    save_file({"text_embedding": torch.randn(512)}, str(text))
    out = tmp_path / "upfusion.safetensors"
    assert main(["--checkpoint", str(path), "--text-embedding", str(text), "--preset", "test", "--out", str(out)]) == 0
    model, info = build_model_from_weights(out)
    assert info.variant == "upfusion" and info.num_classes == 0 and len(info.metrics["permutation_margins"]) == 4
    assert model.has_text_embedding()
    state = released_state(source)
    assert torch.equal(model.state_dict()["decoder.1.0.attn.temperature"],
                       state["module.decoder_level2.0.attn.temperature"])
    assert main(["--checkpoint", str(tmp_path / "none.pth"), "--text-embedding", str(text), "--preset", "test",
                 "--out", str(out)]) == 2
