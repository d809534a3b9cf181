"""Data-parallel training: sharding, reductions, and 2 gloo processes against 1 process.

Why the 2-process run matches the 1-process run here: the stand-in uses GroupNorm (per-sample
statistics, no BatchNorm), its dropout is switched off (each rank draws its own masks), and the
generated scenes with ``scale_range`` ≥ 1 have no ignored pixels, so every loss term is a mean
over equally many values per rank and DDP's gradient average equals the global-batch gradient.
What remains is floating-point summation order (all-reduce of gradients, reduction of the
validation sums), hence a tolerance instead of bit equality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ivf_training.config import ConfigError, TrainConfig, config_to_dict
from ivf_training.datasets import ResumableBatchSampler
from ivf_training.distributed import DistContext, ShardedBatchSampler, mean_across_ranks, shard_dataset, split_batch
from ivf_training.trainer import start_run

MakeConfig = Callable[..., TrainConfig]
ENTRY = Path(__file__).resolve().parent / "ddp_entry.py"
REPO = Path(__file__).resolve().parents[2]


def test_shards_partition_every_global_batch_in_order() -> None:
    base = ResumableBatchSampler(12, 4, seed=3)
    base.set_epoch(1, skip_batches=1)
    global_batches = list(base)
    shards = [list(ShardedBatchSampler(base, rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(global_batches) == 2
    for step, batch in enumerate(global_batches):
        assert shards[0][step] + shards[1][step] == batch  # rank 0 takes the first half, rank 1 the second


def test_global_batch_must_split_over_ranks() -> None:
    with pytest.raises(ConfigError, match="batch_size 6 .* not divisible by the 4 ranks"):
        ShardedBatchSampler(ResumableBatchSampler(12, 6, seed=0), 0, 4)


def test_validation_shards_cover_the_set_once() -> None:
    data = list(range(7))
    parts = [list(shard_dataset(data, DistContext(rank, 3))) for rank in range(3)]  # type: ignore[arg-type]
    assert sorted(sum(parts, [])) == data and parts[0] == [0, 3, 6]
    assert shard_dataset(data, DistContext()) is data  # type: ignore[arg-type]


def test_split_batch_and_single_process_reductions() -> None:
    batch = {"rgb": torch.arange(8.0).view(4, 2), "name": ["a", "b", "c", "d"]}
    parts = split_batch(batch, 2)
    assert [p["name"] for p in parts] == [["a", "b"], ["c", "d"]]
    assert torch.equal(torch.cat([p["rgb"] for p in parts]), batch["rgb"])
    with pytest.raises(ConfigError, match="does not split into accum_steps=3"):
        split_batch(batch, 3)
    assert mean_across_ranks({"total": 1.5}, DistContext()) == {"total": 1.5}


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(ENTRY), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _log(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_and_resume(make_config: MakeConfig, tmp_path: Path) -> None:
    common = ("model.overrides={dropout: 0.0}", "device=cpu", "data.generated.train_count=16", "max_steps=4",
              "val_every=2", "ckpt_every=2", "data.scale_range=[1.0, 1.5]", "tensorboard=false")
    reference = start_run(make_config(*common, root=tmp_path / "one"))
    reference.fit()

    cfg = make_config(*common, "name=ddp", root=tmp_path / "two")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(cfg)))
    first = _torchrun("run", str(recipe), "--stop-at-step", "2")  # stop, then resume: the data order must continue
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("run directory:") == 1  # rank 0 alone talks
    run_dir = Path(cfg.out_dir) / "ddp"
    second = _torchrun("resume", str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout and "finished at step 4" in second.stdout

    ddp = load_file(str(run_dir / "ckpt" / "last.safetensors"))
    one = reference.model.state_dict()
    assert ddp.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=2e-5, rtol=1e-4, msg=key)

    state = torch.load(run_dir / "ckpt" / "last.state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2  # every rank's random stream is kept
    train_one, train_two = _log(reference.run_dir, "train"), _log(run_dir, "train")
    assert [r["step"] for r in train_two] == [1, 2, 3, 4]  # one line per step: rank 0 alone writes
    for a, b in zip(train_one, train_two):
        assert b["total"] == pytest.approx(a["total"], rel=1e-4)
        assert b["imgs_per_s"] > 0
    val_one, val_two = _log(reference.run_dir, "val"), _log(run_dir, "val")
    assert [r["step"] for r in val_two] == [2, 4]
    for a, b in zip(val_one, val_two):  # reduced over both shards of the validation set
        for key in ("loss/total", "fusion/Qabf", "fusion/EN", "pixel_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
