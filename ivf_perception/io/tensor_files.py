"""Reading tensor files without running code from them: one reader, one error type.

Why one module: weight files come from outside (ImageNet trunks, CLIP towers, VMamba
checkpoints, our own exports), and a pickled ``.pt`` can execute arbitrary code when unpickled
(DESIGN §3). Every reader in the package goes through here, so each one refuses the same files
in the same words:

* ``.safetensors`` is parsed by the safetensors library, which cannot execute code;
* anything else goes through ``torch.load(weights_only=True)``, whose unpickler only builds
  tensors and plain containers and refuses a pickle that names any other object;
* a missing path, a directory, a truncated or corrupt file, or a refused pickle raises
  :class:`TensorFileError`, whose message names the file and the problem. Callers add their own
  context (what to download, which option to change) by catching it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "STATE_DICT_WRAPPERS",
    "TensorFileError",
    "TensorFileNotFoundError",
    "read_safetensors",
    "read_safetensors_with_metadata",
    "read_tensor_file",
    "read_torch_file",
]

STATE_DICT_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
"""Keys under which training scripts (timm, torchvision references, VMamba, open_clip) nest the
state dict in a ``torch.save``'d checkpoint; the first one present is unwrapped."""


class TensorFileError(IvfPerceptionError, ValueError):
    """A tensor file is missing, a directory, corrupt or truncated, refused as an unsafe pickle,
    or holds no state dict. The message names the file and the problem."""


class TensorFileNotFoundError(TensorFileError, FileNotFoundError):
    """A tensor file does not exist (also a ``FileNotFoundError``, as ``open`` would raise)."""


def _fail(what: str, path: Path, problem: str) -> TensorFileError:
    return TensorFileError(f"cannot read {what} {path}: {problem}")


def _check_path(path: Path, what: str) -> None:
    if path.is_dir():
        raise _fail(what, path, "it is a directory, not a file")
    if not path.is_file():
        raise TensorFileNotFoundError(f"cannot read {what} {path}: not found")


def read_safetensors(path: str | os.PathLike[str], *, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, whatever its suffix (for files that are safetensors by
    contract: engine weights, training checkpoints), as CPU tensors.

    Raises:
        TensorFileError: missing, a directory, or not a complete safetensors file.
    """
    path = Path(path)
    _check_path(path, what)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _fail(what, path, f"corrupt or truncated safetensors file ({exc})") from exc


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's multi-paragraph weights-only message that says what failed."""
    text = str(exc)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else text).splitlines() if line.strip()]
    return lines[0].split(". Please")[0] if lines else type(exc).__name__


def read_torch_file(path: str | os.PathLike[str], *, what: str = "PyTorch file") -> Any:
    """The object in a ``torch.save`` file, unpickled with ``weights_only=True``.

    For files of tensors, numbers, strings and containers that are not a flat state dict (a
    training state with optimiser and RNG states). Use :func:`read_tensor_file` for weights.

    Args:
        path: the file.
        what: what the file is, for messages (``"training state"``).

    Raises:
        TensorFileError: missing, a directory, corrupt or truncated, or a pickle that names an
            object other than tensors and plain containers (refused: unpickling it could run
            code). :class:`TensorFileNotFoundError` when it does not exist.
    """
    path = Path(path)
    _check_path(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "Unsupported global" in reason:
            raise _fail(what, path, (
                f"refused: the pickle holds objects other than tensors and plain containers ({reason}) "
                "and unpickling it could run code; convert it to .safetensors on a trusted machine "
                "(safetensors.torch.save_file(state_dict, path))")) from exc
        raise _fail(what, path, f"corrupt, truncated or not a PyTorch file ({reason})") from exc
    except Exception as exc:  # on garbage, the zip reader and unpickler raise any type (IndexError, EOFError, ...)
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise _fail(what, path, f"corrupt or truncated PyTorch file ({reason})") from exc


def read_tensor_file(path: str | os.PathLike[str], *, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """The state dict (name → CPU tensor) of a ``.safetensors`` or ``torch.save`` file.

    For files other libraries wrote (ImageNet trunks, CLIP, VMamba). A ``torch.save``
    checkpoint is read with ``weights_only=True``; a state dict nested under one of
    :data:`STATE_DICT_WRAPPERS` is unwrapped and entries that are not tensors (epoch counters)
    are dropped. The ``module.`` prefix that DataParallel adds is removed from every key. Our
    own files (engine weights, checkpoints) are read as stored with :func:`read_safetensors`.

    Args:
        path: the file; ``.safetensors`` by suffix, anything else is a PyTorch file.
        what: what the file is, for messages (``"VMamba checkpoint"``, ``"engine weights"``).

    Raises:
        TensorFileError: as :func:`read_torch_file`, and when the file holds no state dict or no
            tensors.
    """
    path = Path(path)
    obj: Any
    if path.suffix.lower() == ".safetensors":
        obj = read_safetensors(path, what=what)
    else:
        obj = read_torch_file(path, what=what)
        if isinstance(obj, Mapping):
            nested = next((obj[k] for k in STATE_DICT_WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            obj = obj if nested is None else nested
    if not isinstance(obj, Mapping):
        raise _fail(what, path, f"it holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise _fail(what, path, "it holds no tensors")
    return state


def read_safetensors_with_metadata(path: str | os.PathLike[str], *, what: str = "safetensors file"
                                   ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a safetensors file (provenance its writer recorded).

    Raises:
        TensorFileError: as :func:`read_tensor_file`.
    """
    path = Path(path)
    _check_path(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            # a safe_open handle is no dict: keys() is its API for listing tensors
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise _fail(what, path, f"corrupt or truncated safetensors file ({exc})") from exc
    return tensors, metadata
