"""TeSG training (spec §2.5–2.6, §4.3, §5.3): the loss terms against hand computations, the
guidance cache written by ``tesg-guidance`` and read back in training with crops aligned, the
objective's per-sample guidance routing and dropout, and the recipes' clear failures.

The SIG components are test doubles (``sig_doubles``: no BLIP/SD weights or packages here); their
masks are arbitrary, which is all the cache and crop checks need.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sig_doubles import tiny_components
from torch import nn

from ivf_perception.guidance import Guidance, GuidanceCache, pair_key
from ivf_perception.io.errors import DatasetError
from ivf_perception.models import FusionSegOutput, build_model
from ivf_perception.models.layers.color import rgb_to_ycbcr
from ivf_training.augment import JointAugment
from ivf_training.build import build_datasets
from ivf_training.config import ConfigError, TeSGLossConfig, load_config
from ivf_training.datasets import AugmentedDataset, GeneratedScenesDataset, build_dataset
from ivf_training.datasets.guidance import (
    GUIDANCE_CACHE,
    GUIDANCE_NONE,
    GUIDANCE_SCENE_OBJECTS,
    CachedGuidance,
    with_guidance,
)
from ivf_training.objectives import GuidedFusionObjective, GuidedPath
from ivf_training.sig import SemanticInformationGenerator, SIGSettings
from ivf_training.tesg_guidance import bag_pairs, dataset_pairs, write_guidance
from ivf_training.tesg_losses import TeSGLoss, tesg_color, tesg_gradient, tesg_intensity, tesg_ssim

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"

# ---------------------------------------------------------------------------------------------
# loss terms


def test_intensity_targets_the_brighter_source_per_pixel() -> None:
    rgb = torch.full((1, 3, 2, 2), 0.5)
    thermal = torch.tensor([[[[0.9, 0.1], [0.5, 0.7]]]])  # brighter than 0.5 at (0,0) and (1,1); tie keeps rgb
    fused = torch.zeros(1, 3, 2, 2)
    # target per pixel (replicated over 3 channels): 0.9, 0.5, 0.5, 0.7 → mean 0.65
    assert tesg_intensity(fused, rgb, thermal).item() == pytest.approx(0.65)
    target = torch.tensor([[[[0.9, 0.5], [0.5, 0.7]]]]).expand(1, 3, 2, 2)
    assert tesg_intensity(target, rgb, thermal).item() == pytest.approx(0.0)


def test_gradient_of_a_step_edge_by_hand() -> None:
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[..., 4:] = 1.0  # vertical step: unnormalised Sobel |Gx| = 4 on columns 3 and 4, Gy = 0
    thermal = torch.zeros(1, 1, 8, 8)
    fused = torch.zeros(1, 3, 8, 8)
    assert tesg_gradient(fused, rgb, thermal).item() == pytest.approx(2 * 8 * 4 / 64)  # = 1.0
    assert tesg_gradient(rgb, rgb, thermal).item() == pytest.approx(0.0, abs=1e-6)
    # the larger source counts: a thermal step twice as high is the target
    assert tesg_gradient(rgb, rgb, 2 * rgb[:, :1]).item() == pytest.approx(1.0, abs=1e-5)


def test_color_is_the_cb_cr_distance() -> None:
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 6, 6)
    grey = rgb.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # Cb = Cr = 0.5 for grey
    ycc = rgb_to_ycbcr(rgb)
    expected = (ycc[:, 1] - 0.5).abs().mean() + (ycc[:, 2] - 0.5).abs().mean()
    assert tesg_color(grey, rgb).item() == pytest.approx(expected.item(), rel=1e-5)
    assert tesg_color(rgb, rgb).item() == pytest.approx(0.0, abs=1e-7)


def test_ssim_term_is_zero_for_identical_sources_and_window_is_checked() -> None:
    torch.manual_seed(0)
    rgb = torch.rand(1, 3, 64, 64)
    thermal = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:])
    assert tesg_ssim(rgb, rgb, thermal).item() == pytest.approx(0.0, abs=1e-5)
    assert tesg_ssim(torch.zeros_like(rgb), rgb, thermal).item() > 1.5  # both terms near 1
    with pytest.raises(ValueError, match="at least 48x48"):
        tesg_ssim(rgb[..., :40, :40], rgb[..., :40, :40], thermal[..., :40, :40])


def test_total_uses_the_reconstructed_weights() -> None:
    lc = TeSGLossConfig()
    assert (lc.intensity, lc.ssim, lc.color, lc.gradient, lc.ssim_window, lc.guidance_dropout) == (4, 1, 12, 10, 48, 0)
    torch.manual_seed(1)
    rgb, thermal, fused = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64), torch.rand(2, 3, 64, 64)
    total, terms = TeSGLoss()(FusionSegOutput(fused=fused, logits=None), rgb, thermal)
    expected = 4 * terms["fus_intensity"] + terms["fus_ssim"] + 12 * terms["fus_color"] + 10 * terms["fus_gradient"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "seg_ce" not in terms
    labels = torch.randint(0, 3, (2, 64, 64))
    total_seg, terms_seg = TeSGLoss(seg=0.5)(FusionSegOutput(fused=fused, logits=torch.randn(2, 3, 64, 64)), rgb,
                                            thermal, labels)
    assert total_seg.item() == pytest.approx((expected + 0.5 * terms_seg["seg_ce"]).item(), rel=1e-6)


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ConfigError, match="guidance_dropout is a probability"):
        TeSGLossConfig(guidance_dropout=1.5)
    with pytest.raises(ConfigError, match="loss.color must be >= 0"):
        TeSGLossConfig(color=-1.0)


# ---------------------------------------------------------------------------------------------
# cache written by tesg-guidance, read back in training


def _coordinate_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image whose red/green channels are the column/row (to find a crop's window), blue random."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    rgb = np.dstack([xx, yy, rng.integers(0, 256, (h, w))]).astype(np.uint8)
    return rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)


def _folder(root: Path, count: int, h: int = 48, w: int = 64) -> Path:
    for sub in ("vi", "ir"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rgb, thermal = _coordinate_pair(h, w, i)
        cv2.imwrite(str(root / "vi" / f"{i:03d}.png"), rgb[..., ::-1])
        cv2.imwrite(str(root / "ir" / f"{i:03d}.png"), thermal)
    return root


SMALL = SIGSettings(num_maps_per_mask=2, num_inference_steps=10, max_side=64, size_multiple=16,
                    mask_thresholding_ratio=1.5)


@pytest.fixture()
def cached_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = _folder(tmp_path / "pairs", 3)
    sig = SemanticInformationGenerator(tiny_components(caption="a man next to a car"), SMALL)
    cache = GuidanceCache(tmp_path / "cache", SMALL.to_dict())
    summary = write_guidance(sig, cache, dataset_pairs("folder", root))
    assert (summary.written, summary.kept, summary.no_keyword) == (3, 0, [])
    again = write_guidance(sig, cache, dataset_pairs("folder", root))  # resumable: existing entries kept
    assert (again.written, again.kept) == (0, 3)
    return root, tmp_path / "cache"


def test_cache_round_trip_into_training_samples(cached_folder: tuple[Path, Path]) -> None:
    root, cache_dir = cached_folder
    cache = GuidanceCache(cache_dir)  # a reader takes the settings the cache records
    dataset = CachedGuidance(build_dataset("folder", root), cache)
    sig = SemanticInformationGenerator(tiny_components(caption="a man next to a car"), SMALL)
    for i in range(3):
        sample = dataset[i]
        rgb, thermal = _coordinate_pair(48, 64, i)
        expected = sig(rgb, thermal.astype(np.float32) / 255.0)
        assert sample["guided"].item() == GUIDANCE_CACHE
        assert torch.equal(sample["mask"][0], expected.mask.float())
        assert torch.equal(sample["text_tokens"], expected.text_tokens.float())
        assert sample["mask"].any() and not sample["mask"].all()  # a real mask: the crop check below means something


def test_random_crops_crop_the_mask_with_the_images(cached_folder: tuple[Path, Path]) -> None:
    root, cache_dir = cached_folder
    dataset = CachedGuidance(build_dataset("folder", root), GuidanceCache(cache_dir))
    augmented = AugmentedDataset(dataset, JointAugment(32, scale_range=(1.0, 1.0), hflip=True, rot90=True), seed=3)
    seen_flip = False
    for epoch in range(3):
        augmented.set_epoch(epoch)
        for i in range(3):
            full, out = dataset[i], augmented[i]
            assert out["mask"].shape == (1, 32, 32)
            # undo the quarter turn and flip with the coordinate channels, then read the window
            xs, ys = (out["rgb"][0] * 255).round().long(), (out["rgb"][1] * 255).round().long()
            expected = full["mask"][0][ys, xs]
            assert torch.equal(out["mask"][0], expected)
            seen_flip |= bool(xs[0, 0] > xs[0, -1]) or bool(ys[0, 0] > ys[-1, 0])
    assert seen_flip


def test_missing_entry_is_an_error_naming_the_sample(cached_folder: tuple[Path, Path], tmp_path: Path) -> None:
    root, cache_dir = cached_folder
    rgb, thermal = _coordinate_pair(48, 64, 99)
    cv2.imwrite(str(root / "vi" / "new.png"), rgb[..., ::-1])
    cv2.imwrite(str(root / "ir" / "new.png"), thermal)
    with pytest.raises(DatasetError, match=r"no guidance for 1 of 4 samples \(new\).*ivf-train tesg-guidance"):
        CachedGuidance(build_dataset("folder", root), GuidanceCache(cache_dir))


def test_bag_pairs_are_the_node_pairing_keyed_by_the_decoded_messages(tmp_path: Path) -> None:
    """The bag path reads through the core's bag modules (pairing as the live node pairs)."""
    from ivf_perception.scenes import SceneConfig, write_scene_bag

    bag = write_scene_bag(tmp_path / "bag", 3, SceneConfig(height=64, width=64, seed=1))
    pairs = list(bag_pairs(bag))
    assert [p.name for p in pairs] == [f"bag#{i}" for i in range(3)]
    for pair in pairs:
        raw_rgb, raw_thermal = pair.key_arrays
        assert pair.key == pair_key(raw_rgb, raw_thermal)
        assert pair.rgb.shape == (64, 64, 3) and pair.thermal.shape[:2] == (64, 64)
    assert len(list(bag_pairs(bag, max_pairs=2))) == 2


def test_tesg_guidance_command_names_missing_model_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ivf_training.cli import main

    root = _folder(tmp_path / "pairs", 1)
    rc = main(["tesg-guidance", "--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "cache"),
               "--blip", str(tmp_path / "blip"), "--diffusion", str(tmp_path / "sd")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "SIG model files missing" in err and str(tmp_path / "blip" / "model.safetensors") in err
    assert str(tmp_path / "sd" / "vae" / "diffusion_pytorch_model.safetensors") in err


# ---------------------------------------------------------------------------------------------
# guidance in the mix and the objective


def test_mix_with_scene_object_masks_and_fallback(cached_folder: tuple[Path, Path]) -> None:
    root, cache_dir = cached_folder
    generated = GeneratedScenesDataset(2, {"height": 64, "width": 64})
    parts = with_guidance([generated, build_dataset("folder", root)], GuidanceCache(cache_dir), True)
    scene = parts[0][0]
    assert scene["guided"].item() == GUIDANCE_SCENE_OBJECTS
    assert torch.equal(scene["mask"][0], ((scene["labels"] > 0) & (scene["labels"] != 255)).float())
    assert scene["text_tokens"].shape == parts[1][0]["text_tokens"].shape == (8, 12)  # batchable together
    plain = with_guidance([generated], None, False)[0][1]
    assert plain["guided"].item() == GUIDANCE_NONE and not plain["mask"].any() and "text_tokens" not in plain


class RecordingModel(nn.Module):
    """Records each call's guidance; fused = a per-sample constant so the output order is checkable."""

    accepts_guidance = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fallback_text", torch.full((8, 12), 7.0))
        self.calls: list[Guidance | None] = []

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor, guidance: Guidance | None = None) -> FusionSegOutput:
        self.calls.append(guidance)
        return FusionSegOutput(fused=rgb, logits=None)


def _batch() -> dict[str, torch.Tensor]:
    rgb = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 64, 64) / 4
    return {"rgb": rgb, "thermal": rgb[:, :1], "mask": torch.ones(4, 1, 64, 64),
            "guided": torch.tensor([GUIDANCE_CACHE, GUIDANCE_NONE, GUIDANCE_SCENE_OBJECTS, GUIDANCE_NONE]),
            "text_tokens": torch.arange(4.0).view(4, 1, 1).expand(4, 8, 12).clone()}


def test_objective_routes_each_sample_to_its_guidance() -> None:
    model, b = RecordingModel(), _batch()
    out = GuidedPath(model)(b["rgb"], b["thermal"], b["mask"], b["guided"], b["text_tokens"])
    assert torch.equal(out.fused, b["rgb"])  # outputs back in batch order
    guided, fallback = model.calls
    assert fallback is None
    assert guided is not None and guided.mask.shape[0] == 2
    assert torch.equal(guided.text_tokens[0], torch.zeros(8, 12))  # sample 0: its cached text
    assert torch.equal(guided.text_tokens[1], torch.full((8, 12), 7.0))  # sample 2: the model's fallback text


def test_guidance_dropout_runs_the_whole_batch_with_the_fallback() -> None:
    model, b = RecordingModel(), _batch()
    loss = TeSGLoss()
    torch.manual_seed(0)
    GuidedFusionObjective(guidance_dropout=1.0).train_step(GuidedPath(model), loss, b["rgb"], b["thermal"],
                                                           torch.full((4, 64, 64), 255), _no_autocast,
                                                           mask=b["mask"], guided=b["guided"],
                                                           text_tokens=b["text_tokens"])
    assert model.calls == [None]
    GuidedFusionObjective(guidance_dropout=0.0).train_step(GuidedPath(model), loss, b["rgb"], b["thermal"],
                                                           torch.full((4, 64, 64), 255), _no_autocast,
                                                           mask=b["mask"], guided=b["guided"],
                                                           text_tokens=b["text_tokens"])
    assert len(model.calls) == 3 and model.calls[1] is not None


def _no_autocast() -> torch.autocast:
    return torch.autocast("cpu", enabled=False)


def test_objective_refuses_a_model_without_guidance() -> None:
    with pytest.raises(ConfigError, match="takes no guidance"):
        GuidedFusionObjective().prepare(build_model("test_mafs"))


def test_real_tesg_trains_a_mixed_batch() -> None:
    model = build_model("test_tesg", num_classes=0)
    b = _batch()
    b["text_tokens"] = torch.randn(4, 6, 16)
    loss, terms = GuidedFusionObjective().train_step(GuidedPath(model), TeSGLoss(), b["rgb"], b["thermal"],
                                                     torch.full((4, 64, 64), 255), _no_autocast, mask=b["mask"],
                                                     guided=b["guided"], text_tokens=b["text_tokens"])
    loss.backward()
    assert torch.isfinite(loss) and set(terms) >= {"fus_intensity", "fus_ssim", "fus_color", "fus_gradient"}
    assert all(p.grad is not None for name, p in model.named_parameters() if name.startswith("mgca.")
               and p.requires_grad)  # the mask-split cross-attentions trained: the guided pass ran


# ---------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("dataset", ["msrs", "mfnet", "pst900", "fmb"])
def test_benchmark_recipes_fail_clearly_without_their_data(dataset: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(RECIPES / f"tesg_{dataset}.yaml")
    assert cfg.loss.kind == "tesg" and cfg.loss.guidance_dropout == 0.0 and cfg.crop == 96
    assert cfg.batch_size == 8 and cfg.epochs == 140
    with pytest.raises(DatasetError, match=f"data/{dataset}"):
        build_datasets(cfg)


def test_recipe_without_cache_folder_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "pairs", 2)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(RECIPES / "tesg_msrs.yaml", ["data.kind=folder", f"data.train_folders=[{root}]",
                                                   f"data.val_folders=[{root}]"])
    with pytest.raises(ConfigError, match="loss.guidance_cache: .*msrs_tesg_guidance.*not a guidance cache"):
        build_datasets(cfg)


def test_validation_pads_the_mask_with_the_images() -> None:
    torch.manual_seed(0)
    model = build_model("test_tesg", num_classes=3).eval()  # segmenting: inputs padded to a multiple of 8
    rgb, thermal = torch.rand(1, 3, 60, 60), torch.rand(1, 1, 60, 60)
    mask = torch.zeros(1, 1, 60, 60)
    mask[..., 40:60, 20:60] = 1.0  # touches the bottom/right border: the padding must stay background
    text = torch.randn(1, 6, 16)
    with torch.no_grad():
        out, terms = GuidedFusionObjective().validation_step(
            model, TeSGLoss(), rgb, thermal, None, _no_autocast, 8, 0, mask=mask,
            guided=torch.tensor([GUIDANCE_CACHE]), text_tokens=text)
        padded = Guidance(mask=torch.nn.functional.pad(mask, (0, 4, 0, 4)), text_tokens=text)
        reference = model(torch.nn.functional.pad(rgb, (0, 4, 0, 4), mode="replicate"),
                          torch.nn.functional.pad(thermal, (0, 4, 0, 4), mode="replicate"), guidance=padded)
    assert out is not None and out.fused.shape == (1, 3, 60, 60) and out.logits.shape == (1, 3, 60, 60)
    assert torch.allclose(out.fused, reference.fused[..., :60, :60])
    assert torch.isfinite(terms["total"])


def test_bag_guidance_is_found_by_replay(tmp_path: Path) -> None:
    """``tesg-guidance --bag`` keys entries as replay decodes frames: a strict cache replay of the
    same bag runs every frame guided."""
    import json

    from ivf_perception.cli.replay import main as replay_main
    from ivf_perception.scenes import SceneConfig, write_scene_bag
    from ivf_training.tesg_guidance import bag_pairs

    bag = write_scene_bag(tmp_path / "bag", 3, SceneConfig(height=64, width=96, seed=3), storage="mcap")
    sig = SemanticInformationGenerator(tiny_components(caption="a car", text_dim=16), SMALL)
    summary = write_guidance(sig, GuidanceCache(tmp_path / "cache", SMALL.to_dict()), bag_pairs(bag))
    assert summary.written == 3
    out = tmp_path / "out"
    assert replay_main([str(bag), "--out", str(out), "--variant", "test_tesg", "--weights", "none", "--device",
                        "cpu", "--threads", "1", "--no-progress", "--guidance-mode", "cache",
                        "--guidance-cache", str(tmp_path / "cache")]) == 0
    assert json.loads((out / "metrics.json").read_text())["guidance_frames"] == {"cache": 3}


@pytest.mark.slow
def test_two_gloo_ranks_train_mixed_guided_batches(tmp_path: Path) -> None:
    """Under torchrun each step is one forward of GuidedPath through DDP, also when a rank's share
    mixes object-mask and fallback samples or drops its guidance."""
    import os
    import subprocess
    import sys

    import yaml

    from ivf_training.config import config_to_dict

    pairs = _folder(tmp_path / "pairs", 4, 64, 64)
    cfg = load_config(RECIPES / "tesg_generated_check.yaml", [
        "model.variant=test_tesg", "model.preset=test", "model.overrides={}", "data.generated.train_count=4",
        "data.generated.scene={height: 64, width: 64}", f"data.train_real=[{pairs}]", "data.real_repeat=1",
        "data.real_short_side=null", "data.val_real=[]", "max_steps=3", "batch_size=4", "crop=48",
        "loss.guidance_dropout=0.3", "val_every=0", "ckpt_every=0", "log_every=1", "progress=false",
        "tensorboard=false", "best_metric=loss/total", "best_mode=min", f"out_dir={tmp_path / 'runs'}", "name=ddp"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(cfg)))
    entry = Path(__file__).resolve().parent / "ddp_entry.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(entry), "run", str(recipe)], cwd=RECIPES.parents[1],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished at step 3" in done.stdout
