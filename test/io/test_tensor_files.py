"""The one tensor-file reader: every failure is a TensorFileError naming the file, and no pickle
ever runs code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import (
    TensorFileError,
    TensorFileNotFoundError,
    read_safetensors,
    read_safetensors_with_metadata,
    read_tensor_file,
    read_torch_file,
)

STATE = {"layer.weight": torch.arange(6, dtype=torch.float32).view(2, 3), "layer.bias": torch.ones(2)}


class _Touch:
    """Unpickling this object creates ``path``: the code a malicious checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


def _assert_state(got: dict[str, torch.Tensor]) -> None:
    assert got.keys() == STATE.keys()
    for key, value in STATE.items():
        torch.testing.assert_close(got[key], value)


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(STATE, str(path), metadata={"source": "test"})
    _assert_state(read_tensor_file(path))
    _assert_state(read_safetensors(path))
    tensors, metadata = read_safetensors_with_metadata(path)
    _assert_state(tensors)
    assert metadata == {"source": "test"}


def test_plain_state_dict_pt(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(STATE, path)
    _assert_state(read_tensor_file(path))


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_ema"])
def test_nested_state_dict_is_unwrapped(tmp_path: Path, wrapper: str) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in STATE.items()}, "epoch": 300}, path)
    _assert_state(read_tensor_file(path))


def test_non_tensor_entries_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({**STATE, "epoch": 3, "arch": "resnet"}, path)
    _assert_state(read_tensor_file(path))


def test_torch_file_keeps_plain_containers(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save({"step": 7, "nested": {"lr": [0.1, 0.2]}, "t": torch.zeros(2)}, path)
    obj = read_torch_file(path, what="training state")
    assert obj["step"] == 7 and obj["nested"] == {"lr": [0.1, 0.2]}


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    for read in (read_tensor_file, read_safetensors, read_torch_file, read_safetensors_with_metadata):
        with pytest.raises(TensorFileNotFoundError, match=f"cannot read trunk weights {path}: not found"):
            read(path, what="trunk weights")
    with pytest.raises(FileNotFoundError):
        read_tensor_file(tmp_path / "none.pt")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "weights.safetensors"
    folder.mkdir()
    with pytest.raises(TensorFileError, match="is a directory, not a file") as exc:
        read_tensor_file(folder)
    assert not isinstance(exc.value, FileNotFoundError)
    with pytest.raises(TensorFileError, match="is a directory"):
        read_torch_file(tmp_path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(STATE, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    for read in (read_tensor_file, read_safetensors, read_safetensors_with_metadata):
        with pytest.raises(TensorFileError, match=f"{path.name}: corrupt or truncated safetensors file"):
            read(path)


def test_truncated_pt(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(STATE, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TensorFileError, match="w.pt: corrupt or truncated PyTorch file"):
        read_tensor_file(path)


@pytest.mark.parametrize("name", ["random.safetensors", "random.pt", "random.bin"])
def test_random_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(512))
    with pytest.raises(TensorFileError, match=f"cannot read tensor file {path}: corrupt"):
        read_tensor_file(path)


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"layer.weight": torch.zeros(1), "payload": _Touch(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps({"payload": _Touch(marker)}, protocol=2))
    with pytest.raises(TensorFileError) as exc:
        read_tensor_file(path, what="VMamba checkpoint")
    assert not marker.exists()
    assert f"cannot read VMamba checkpoint {path}" in str(exc.value)
    if how == "torch.save":
        assert "refused" in str(exc.value) and "could run code" in str(exc.value)
    with pytest.raises(TensorFileError):
        read_torch_file(path)
    assert not marker.exists()


def test_a_file_without_a_state_dict(tmp_path: Path) -> None:
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(TensorFileError, match="holds a list, not a state dict"):
        read_tensor_file(listed)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(TensorFileError, match="holds no tensors"):
        read_tensor_file(empty)


def test_errors_are_package_errors_and_value_errors() -> None:
    assert issubclass(TensorFileError, IvfPerceptionError) and issubclass(TensorFileError, ValueError)
    assert issubclass(TensorFileNotFoundError, TensorFileError)
    assert issubclass(TensorFileNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("data", [b"truncated", b"\x80\x02}q\x00(X", b""])
def test_short_garbage_torch_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(data)
    with pytest.raises(TensorFileError, match="state.pt: corrupt"):
        read_torch_file(path)
