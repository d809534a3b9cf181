"""ImageNet VMamba-T checkpoint mapping onto CMFS's two encoder branches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ivf_perception.models import build_model
from ivf_perception.models.cmfs.backbone import VMambaBranch, map_vmamba_checkpoint


def _vmamba_state_dict(model) -> dict[str, torch.Tensor]:
    """A checkpoint with VMamba-T's key names and shapes: an RGB branch plus the classifier head."""
    torch.manual_seed(7)
    ref = VMambaBranch(3, dims=model._args["dims"], depths=model._args["depths"], drop_path_rate=0.0,
                       d_state=model._args["d_state"], ssm_ratio=model._args["ssm_ratio"],
                       mlp_ratio=model._args["mlp_ratio"], scan_backend="auto")
    state = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    dims = model._args["dims"]
    state["classifier.head.weight"] = torch.randn(1000, dims[-1])
    state["classifier.norm.weight"] = torch.randn(dims[-1])
    return state


def test_vmamba_key_names_match_the_published_layout() -> None:
    """The names VMamba-T's checkpoint uses exist in each branch (no renaming needed)."""
    model = build_model("test_cmfs")
    names = set(model.encoder_rgb.state_dict())
    for key in ("patch_embed.0.weight", "patch_embed.2.weight", "patch_embed.5.weight", "patch_embed.7.bias",
                "layers.0.blocks.0.norm.weight", "layers.0.blocks.0.op.in_proj.weight",
                "layers.0.blocks.0.op.conv2d.weight", "layers.0.blocks.0.op.x_proj_weight",
                "layers.0.blocks.0.op.dt_projs_weight", "layers.0.blocks.0.op.dt_projs_bias",
                "layers.0.blocks.0.op.A_logs", "layers.0.blocks.0.op.Ds", "layers.0.blocks.0.op.out_norm.weight",
                "layers.0.blocks.0.op.out_proj.weight", "layers.0.blocks.0.norm2.weight",
                "layers.0.blocks.0.mlp.fc1.weight", "layers.0.blocks.0.mlp.fc2.weight",
                "layers.0.downsample.1.weight", "layers.0.downsample.3.weight"):
        assert key in names, key
    op = model.encoder_rgb.layers[0].blocks[0].op
    dim = model._args["dims"][0]
    # VMamba-T 0230s: no z branch (in_proj D -> d_inner), no conv bias, d_state 1, 4 directions
    assert op.in_proj.weight.shape == (dim, dim)
    assert op.conv2d.bias is None
    assert op.A_logs.shape == (4 * dim, 1)


def test_mapping_loads_both_branches_and_reports_the_rest() -> None:
    model = build_model("test_cmfs")
    state = _vmamba_state_dict(model)
    state["layers.0.blocks.0.norm.bias"] = torch.zeros(3)  # wrong shape
    state["pos_embed"] = torch.zeros(1)  # unknown
    mapped, report = map_vmamba_checkpoint(state, {"encoder_rgb": model.encoder_rgb,
                                                   "encoder_thermal": model.encoder_thermal})
    n_branch = len(model.encoder_rgb.state_dict())
    assert len(report.loaded) == 2 * (n_branch - 1)
    assert report.mismatched == [
        f"encoder_rgb.layers.0.blocks.0.norm.bias (3,) vs ({model._args['dims'][0]},)",
        f"encoder_thermal.layers.0.blocks.0.norm.bias (3,) vs ({model._args['dims'][0]},)",
    ]
    assert report.unexpected == ["pos_embed"]  # the classifier head is ignored, not reported
    assert report.missing == []
    key = "layers.1.blocks.0.op.x_proj_weight"
    assert torch.equal(mapped[f"encoder_rgb.{key}"], state[key])
    assert torch.equal(mapped[f"encoder_thermal.{key}"], state[key])
    # the one-channel thermal stem gets the RGB stem summed over its input channels
    assert torch.allclose(mapped["encoder_thermal.patch_embed.0.weight"],
                          state["patch_embed.0.weight"].sum(1, keepdim=True))
    assert "patch_embed.0.weight" in report.summary() or "loaded" in report.summary()


def test_mapping_reports_missing_keys() -> None:
    model = build_model("test_cmfs")
    state = _vmamba_state_dict(model)
    del state["layers.2.downsample.1.weight"]
    _, report = map_vmamba_checkpoint({"model": state}, {"encoder_rgb": model.encoder_rgb})
    assert report.missing == ["encoder_rgb.layers.2.downsample.1.weight"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_encoder_checkpoint_from_file(tmp_path: Path, suffix: str) -> None:
    model = build_model("test_cmfs")
    state = _vmamba_state_dict(model)
    path = tmp_path / f"vssm_tiny{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)
    report = model.load_encoder_checkpoint(path)
    assert not report.missing and not report.mismatched
    assert torch.equal(model.encoder_thermal.layers[0].blocks[0].op.Ds, state["layers.0.blocks.0.op.Ds"])


def test_build_model_takes_encoder_weights(tmp_path: Path) -> None:
    model = build_model("test_cmfs")
    path = tmp_path / "vmamba.safetensors"
    save_file({k: v.contiguous() for k, v in _vmamba_state_dict(model).items()}, str(path))
    loaded = build_model("test_cmfs", encoder_weights=str(path))
    assert torch.equal(loaded.encoder_rgb.patch_embed[0].weight, _vmamba_state_dict(model)["patch_embed.0.weight"])


class _Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("unpickled!",))


def test_bad_checkpoint_files_are_refused(tmp_path: Path) -> None:
    model = build_model("test_cmfs")
    with pytest.raises(FileNotFoundError, match="VMamba-T checkpoint not found"):
        model.load_encoder_checkpoint(tmp_path / "missing.pth")
    pickled = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, pickled)
    with pytest.raises(ValueError, match="cannot read VMamba checkpoint"):
        model.load_encoder_checkpoint(pickled)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read VMamba checkpoint"):
        model.load_encoder_checkpoint(corrupt)
    foreign = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 7, 7)}, str(foreign))
    with pytest.raises(ValueError, match="nothing in .* fits the CMFS encoders"):
        model.load_encoder_checkpoint(foreign)
