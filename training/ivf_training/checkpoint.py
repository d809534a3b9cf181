"""Atomic, pickle-free training checkpoints.

A checkpoint is a pair of files in ``RUN_DIR/ckpt/``:

* ``<tag>.safetensors`` — the model's tensors (safetensors cannot execute code on load);
* ``<tag>.state.pt`` — optimiser, scaler, RNG states, step and best-so-far, made of tensors,
  dicts, lists, strings, ints, floats, bools and None only, so it loads with
  ``torch.load(..., weights_only=True)`` (no arbitrary unpickling). The state records the
  SHA-256 of the model file, so a mismatched or corrupted pair is detected.

Writing: both files go to ``*.tmp`` first and are flushed to disk; then the complete previous
pair is renamed to ``prev.*`` and the new pair renamed into place. A crash at any moment leaves
either the old ``last`` or the old pair as ``prev`` intact, and a kill between the four renames
is finished at the next resume or save (:func:`finish_interrupted_save`: the new pair is complete
on disk before the first rename, so the renames are rolled forward); loading verifies the pair
and, when it is broken, names the previous good checkpoint. A failed write (disk full, quota, I/O error)
removes the partial ``*.tmp`` files, touches nothing else and raises :class:`CheckpointError`
saying which checkpoint was kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import TensorFileError, read_safetensors, read_torch_file

__all__ = [
    "STATE_FORMAT",
    "CheckpointError",
    "checkpoint_paths",
    "save_checkpoint",
    "load_checkpoint",
    "finish_interrupted_save",
    "save_model_file",
    "capture_rng",
    "restore_rng",
]

STATE_FORMAT = "ivf_training.state/1"


class CheckpointError(IvfPerceptionError, ValueError):
    """A checkpoint is missing, corrupt, or its two files do not belong together."""


def checkpoint_paths(ckpt_dir: Path, tag: str) -> tuple[Path, Path]:
    """``(model file, state file)`` of checkpoint ``tag`` (``last``, ``prev``)."""
    return ckpt_dir / f"{tag}.safetensors", ckpt_dir / f"{tag}.state.pt"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_model_file(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> str:
    """Write a model state dict to ``path`` atomically; returns the file's SHA-256.

    Tensors are cloned to plain CPU storage first: safetensors refuses tensors that share
    memory (tied weights), and a state dict entry must not be a view into a larger buffer.
    """
    tmp = path.with_name(path.name + ".tmp")
    with _cleanup_on_write_error([tmp], f"{path} is unchanged"):
        digest = _write_tensors(state_dict, tmp, metadata)
    tmp.replace(path)
    return digest


@contextlib.contextmanager
def _cleanup_on_write_error(tmp_paths: Sequence[Path], kept: str) -> Iterator[None]:
    """Turn a failed write into a :class:`CheckpointError` after removing the partial files.

    ``torch.save`` reports a full disk as a ``RuntimeError`` from its zip writer, safetensors and
    ``fsync`` as an ``OSError``; both mean the same to the caller: nothing new was saved.
    """
    try:
        yield
    except (OSError, RuntimeError) as exc:
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)
        reason = "the disk is full" if getattr(exc, "errno", None) == errno.ENOSPC else "writing failed"
        raise CheckpointError(f"could not save a checkpoint: {reason} ({exc}); {kept}") from exc


def _write_tensors(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> str:
    """Write tensors to ``path``, flush to disk, return the SHA-256 of the file."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=dict(metadata))
    _fsync(path)
    return _sha256(path)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def save_checkpoint(ckpt_dir: Path, model_state: Mapping[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write ``last.*`` atomically, keeping the previous complete pair as ``prev.*``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    finish_interrupted_save(ckpt_dir)
    model_path, state_path = checkpoint_paths(ckpt_dir, "last")
    model_tmp, state_tmp = _tmp(model_path), _tmp(state_path)
    kept = (f"the previous checkpoint {model_path} is kept; once the disk has room, continue with "
            f"`ivf-train resume {ckpt_dir.parent}`" if model_path.exists() else "no checkpoint exists yet")
    with _cleanup_on_write_error([model_tmp, state_tmp], kept):
        digest = _write_tensors(model_state, model_tmp, {"format": STATE_FORMAT, "step": str(state["step"])})
        full_state = {**state, "format": STATE_FORMAT, "model_sha256": digest}
        torch.save(full_state, state_tmp)
        _fsync(state_tmp)
    _commit(ckpt_dir)


def _commit(ckpt_dir: Path) -> None:
    """The renames that put a complete ``last.*.tmp`` pair in place, from wherever a previous
    run of them stopped: R1 ``last.safetensors`` → ``prev``, R2 ``last.state.pt`` → ``prev``
    (both only when the old pair is there), R3 and R4 the new files to ``last.*``."""
    model_path, state_path = checkpoint_paths(ckpt_dir, "last")
    prev_model, prev_state = checkpoint_paths(ckpt_dir, "prev")
    model_tmp, state_tmp = _tmp(model_path), _tmp(state_path)
    if model_tmp.exists():  # R3 not done yet
        if model_path.exists() and state_path.exists():
            model_path.replace(prev_model)  # R1
        if state_path.exists():  # the old state whose model R1 already moved
            state_path.replace(prev_state)  # R2
        model_tmp.replace(model_path)  # R3
    state_tmp.replace(state_path)  # R4


def finish_interrupted_save(ckpt_dir: Path) -> None:
    """Complete or discard a :func:`save_checkpoint` that was killed (SIGKILL, power loss).

    The tmp pair is written and flushed before the first rename, so a ``last.state.pt.tmp``
    that loads and whose checksum matches the new model file (still ``.tmp``, or already renamed
    to ``last.safetensors``) means the renames had started or were about to: they are rolled
    forward. Anything else is a write that never finished; its partial tmp files are removed
    and the checkpoints on disk are left as they were.
    """
    model_path, state_path = checkpoint_paths(ckpt_dir, "last")
    model_tmp, state_tmp = _tmp(model_path), _tmp(state_path)
    if not state_tmp.exists():
        model_tmp.unlink(missing_ok=True)
        return
    new_model = model_tmp if model_tmp.exists() else model_path
    try:
        state = read_torch_file(state_tmp, what="training state")
        complete = (isinstance(state, dict) and new_model.is_file()
                    and state.get("model_sha256") == _sha256(new_model))
    except TensorFileError:
        complete = False
    if complete:
        _commit(ckpt_dir)
    else:
        for tmp in (model_tmp, state_tmp):
            tmp.unlink(missing_ok=True)


def _read_pair(ckpt_dir: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model_path, state_path = checkpoint_paths(ckpt_dir, tag)
    for p in (model_path, state_path):
        if not p.is_file():
            raise CheckpointError(f"{p} is missing")
    try:
        state = read_torch_file(state_path, what="training state")
    except TensorFileError as exc:
        raise CheckpointError(f"{state_path} is corrupt or not a training state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_path} is not an {STATE_FORMAT} training state")
    if _sha256(model_path) != state.get("model_sha256"):
        raise CheckpointError(
            f"{model_path} does not match {state_path.name} (checksum differs: the model file is "
            "corrupt or from another checkpoint)"
        )
    try:
        model_state = read_safetensors(model_path, what="checkpoint model file")
    except TensorFileError as exc:
        raise CheckpointError(f"{model_path} is corrupt ({exc})") from exc
    return model_state, state


def load_checkpoint(ckpt_dir: Path, tag: str = "last", *, recover: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify checkpoint ``tag``; on failure point to the previous good one.

    ``recover``: first finish a save killed between its renames (:func:`finish_interrupted_save`).
    Only the run's owner may (resume): a reader such as ``export`` could otherwise take a save
    in progress for a killed one.

    Raises:
        CheckpointError: the pair is missing, corrupt or inconsistent. The message says whether
            ``prev`` is intact (and at which step) and how to resume from it.
    """
    if recover and ckpt_dir.is_dir():
        finish_interrupted_save(ckpt_dir)
    try:
        return _read_pair(ckpt_dir, tag)
    except CheckpointError as exc:
        hint = ""
        if tag != "prev":
            try:
                _, prev = _read_pair(ckpt_dir, "prev")
                hint = (
                    f"; the previous checkpoint {ckpt_dir / 'prev.safetensors'} (step {prev['step']}) is "
                    f"intact: resume from it with `ivf-train resume {ckpt_dir.parent} --checkpoint prev`"
                )
            except CheckpointError:
                hint = "; no intact previous checkpoint (ckpt/prev.*) exists either"
        raise CheckpointError(f"refusing checkpoint '{tag}' in {ckpt_dir}: {exc}{hint}") from None


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/ints/floats (``weights_only``-loadable)."""
    py_version, py_keys, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(py_version),
        "python_keys": torch.tensor(py_keys, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_keys"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((
        state["numpy_name"],
        state["numpy_keys"].numpy().astype(np.uint32),
        state["numpy_pos"],
        state["numpy_has_gauss"],
        state["numpy_gauss"],
    ))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
