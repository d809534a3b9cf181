"""build_dataset, the data.kind / split fields of the configuration, and the trainer reading benchmarks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from layout_builders import write_scene

from ivf_perception.io.errors import DatasetError
from ivf_training.build import build_datasets
from ivf_training.config import ConfigError, TrainConfig
from ivf_training.datasets import DATASET_KINDS, MSRSDataset, build_dataset, describe_dataset
from ivf_training.trainer import start_run

MakeConfig = Callable[..., TrainConfig]


@pytest.fixture
def msrs(tmp_path: Path) -> Path:
    root = tmp_path / "MSRS"
    for split, names in {"train": ["00001D", "00002D", "00003N"], "test": ["00004N", "00005D"]}.items():
        for shift, name in enumerate(names):
            folder = root / split
            write_scene(9, shift, rgb=folder / "vi" / f"{name}.png", thermal=folder / "ir" / f"{name}.png",
                        labels=folder / "Segmentation_labels" / f"{name}.png")
    return root


def test_kinds_and_bad_requests(msrs: Path) -> None:
    assert list(DATASET_KINDS) == ["folder", "extract", "mfnet", "msrs", "pst900", "fmb", "generated"]
    with pytest.raises(DatasetError,
                       match="unknown dataset kind 'kaist'; supported kinds: folder, extract, mfnet, msrs"):
        build_dataset("kaist", msrs)
    with pytest.raises(DatasetError, match="dataset kind 'msrs' needs a root folder"):
        build_dataset("msrs")
    ds = build_dataset("msrs", msrs, check_labels=False)
    assert ds.split == "train" and ds.label_stats is None


def test_config_fields_and_their_validation(make_config: MakeConfig, msrs: Path) -> None:
    cfg = make_config("data.kind=pst900", "data.train_split=train", "data.val_split=test_night",
                      "data.loader_options={thermal: thermal_raw}")
    assert (cfg.data.kind, cfg.data.train_split, cfg.data.val_split) == ("pst900", "train", "test_night")
    assert cfg.data.loader_options == {"thermal": "thermal_raw"}
    assert make_config().data.kind == "folder" and make_config().data.val_split is None
    for override, message in [
        ("data.kind=kaist", "data.kind must be one of folder, extract, mfnet, msrs, pst900, fmb; got 'kaist'"),
        ("data.val_split=../test", "data.val_split must be a split name such as 'train' or 'test'"),
        ("data.train_split=a/b", "data.train_split must be a split name"),
        ("data.loader_options={short_side: 4}", "data.loader_options cannot set short_side"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make_config(override)


def test_trainer_reads_a_benchmark_and_records_it(make_config: MakeConfig, msrs: Path) -> None:
    common = ("data.generated.train_count=0", "data.generated.val_count=0", "data.kind=msrs",
              f"data.train_folders=[{msrs}]", f"data.val_folders=[{msrs}]")
    train, val = build_datasets(make_config(*common))
    assert isinstance(train, MSRSDataset) and train.split == "train" and len(train) == 3
    assert isinstance(val, MSRSDataset) and val.split == "test" and len(val) == 2  # MSRS validates on test
    assert describe_dataset(val)["class_pixels"][0] == 0

    with pytest.raises(DatasetError, match="the labels have 9 classes .* but num_classes=5"):
        build_datasets(make_config(*common, "model.num_classes=5"))
    with pytest.raises(DatasetError, match="unknown option\\(s\\) thermal for dataset kind 'msrs'; accepted: none"):
        build_datasets(make_config(*common, "data.loader_options={thermal: thermal_raw}"))

    trainer = start_run(make_config(*common, "batch_size=2", "crop=16", "max_steps=2", "val_every=0", "ckpt_every=0"))
    trainer.fit()
    data = json.loads((trainer.run_dir / "data.json").read_text())
    assert data["train"]["kind"] == "msrs" and data["train"]["samples"] == 3 and data["val"]["split"] == "test"
    assert sum(data["train"]["class_pixels"]) == 3 * (24 * 32 - 4)
    log = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    assert any(rec["kind"] == "val" and "mIoU" in rec for rec in log)
