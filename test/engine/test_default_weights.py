"""``weights: default`` picks per device: the GPU default on CUDA when bundled, else the CPU default.

No GPU runs these: the resolver only looks at the device's kind and at which files exist, so
``device="cuda"`` is passed to it directly. Whether a GPU default is bundled is simulated with a
temporary weights folder (today only the CPU default is shipped, so the "GPU file present" case
cannot be seen with the real package data).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch

from ivf_perception.cli._common import add_engine_arguments, engine_from_args
from ivf_perception.cli.replay import weights_label
from ivf_perception.engine import DEFAULT_WEIGHTS, Engine
from ivf_perception.engine.default_weights import (
    DEFAULT_WEIGHTS_TABLE,
    WEIGHTS_DIR,
    DefaultWeights,
    resolve_default_weights,
)

CPU_NAME = "s4fusion_tiny_default"
GPU_NAME = next(row.name for row in DEFAULT_WEIGHTS_TABLE if row.device == "cuda")


def test_table_has_one_entry_per_device_and_cpu_file_is_bundled() -> None:
    assert sorted(row.device for row in DEFAULT_WEIGHTS_TABLE) == ["cpu", "cuda"]
    assert WEIGHTS_DIR / f"{CPU_NAME}.safetensors" == DEFAULT_WEIGHTS and DEFAULT_WEIGHTS.is_file()


def test_cpu_resolves_to_cpu_default() -> None:
    choice = resolve_default_weights("cpu")
    assert choice.path == DEFAULT_WEIGHTS
    assert choice.reason == f"weights 'default' on cpu: using the CPU default {CPU_NAME}"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_without_gpu_file_falls_back_and_says_so(tmp_path: Path, device: str | torch.device) -> None:
    (tmp_path / f"{CPU_NAME}.safetensors").write_bytes(b"x")
    choice = resolve_default_weights(device, directory=tmp_path)
    assert choice.path == tmp_path / f"{CPU_NAME}.safetensors"
    assert "no GPU default bundled" in choice.reason
    assert choice.reason.endswith(f"using the CPU default {CPU_NAME}")


def test_cuda_with_gpu_file_uses_it(tmp_path: Path) -> None:
    # a stand-in file: the resolver checks presence only, loading is the engine's job
    (tmp_path / f"{CPU_NAME}.safetensors").write_bytes(b"x")
    (tmp_path / f"{GPU_NAME}.safetensors").write_bytes(b"x")
    choice = resolve_default_weights("cuda", directory=tmp_path)
    assert choice.path == tmp_path / f"{GPU_NAME}.safetensors"
    assert choice.reason == f"weights 'default' on cuda: using the GPU default {GPU_NAME}"
    # the CPU never gets the GPU file, even when it is bundled
    assert resolve_default_weights("cpu", directory=tmp_path).path == tmp_path / f"{CPU_NAME}.safetensors"


def test_custom_table_is_honoured(tmp_path: Path) -> None:
    table = (DefaultWeights("a_cpu", "cpu"), DefaultWeights("b_gpu", "cuda"))
    (tmp_path / "b_gpu.safetensors").write_bytes(b"x")
    assert resolve_default_weights("cuda", table=table, directory=tmp_path).path.name == "b_gpu.safetensors"
    with pytest.raises(ValueError, match="no 'cuda' entry"):
        resolve_default_weights("cuda", table=table[:1], directory=tmp_path)


def test_engine_records_and_logs_the_choice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ivf_perception.engine.engine"):
        engine = Engine("auto", weights="default", device="cpu")
    expected = f"weights 'default' on cpu: using the CPU default {CPU_NAME}"
    assert engine.weights_path == DEFAULT_WEIGHTS and engine.weights_choice == expected
    assert expected in caplog.messages
    assert Engine("auto", weights=DEFAULT_WEIGHTS, device="cpu").weights_choice == ""  # an explicit file


def test_cli_prints_the_choice_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    engine_from_args(parser.parse_args(["--weights", "default", "--device", "cpu"]))
    captured = capsys.readouterr()
    assert f"using the CPU default {CPU_NAME}" in captured.err and CPU_NAME not in captured.out


def test_replay_report_names_the_file_default_resolved_to() -> None:
    engine = Engine("auto", weights="default", device="cpu")
    assert weights_label(argparse.Namespace(weights="default"), engine) == str(DEFAULT_WEIGHTS)
    assert weights_label(argparse.Namespace(weights=None), engine) == str(engine.weights_path)
