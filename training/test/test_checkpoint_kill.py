"""A training process killed while it saves a checkpoint leaves a run that resumes.

The kill is simulated by an exception out of ``Path.replace`` at the k-th rename (nothing in
``save_checkpoint`` catches it, so the files are left exactly as a SIGKILL at that moment would
leave them), and by partial tmp files for a kill during the writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ivf_training.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so no handler on the way cleans anything up."""


def _save(ckpt: Path, step: int) -> None:
    save_checkpoint(ckpt, {"w": torch.full((3,), float(step))}, {"step": step})


def _step(ckpt: Path, tag: str, recover: bool = True) -> int:
    model, state = load_checkpoint(ckpt, tag, recover=recover)
    assert torch.equal(model["w"], torch.full((3,), float(state["step"]))), "model and state belong together"
    return int(state["step"])


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_a_kill_between_the_renames_is_rolled_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     kill_at: int) -> None:
    ckpt = tmp_path / "ckpt"
    _save(ckpt, 1)
    _save(ckpt, 2)
    real_replace = Path.replace
    calls = {"n": 0}

    def replace(self: Path, target):  # noqa: ANN001, ANN202 - Path.replace's signature
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(Killed):
        _save(ckpt, 3)
    monkeypatch.setattr(Path, "replace", real_replace)
    # what resume sees: the new checkpoint completed, the one before it as prev, no tmp files left
    assert _step(ckpt, "last") == 3 and _step(ckpt, "prev") == 2
    assert not list(ckpt.glob("*.tmp"))
    _save(ckpt, 4)  # and training goes on saving normally
    assert _step(ckpt, "last") == 4 and _step(ckpt, "prev") == 3


def test_without_recovery_a_kill_after_the_first_rename_was_not_resumable(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The state the old code left behind: last's model moved away, prev a mismatched pair."""
    ckpt = tmp_path / "ckpt"
    _save(ckpt, 1)
    _save(ckpt, 2)
    real_replace = Path.replace
    calls = {"n": 0}

    def replace(self: Path, target):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(Killed):
        _save(ckpt, 3)
    monkeypatch.setattr(Path, "replace", real_replace)
    with pytest.raises(CheckpointError, match="no intact previous checkpoint"):
        load_checkpoint(ckpt, "last")  # a reader (export) does not touch the files
    assert _step(ckpt, "last", recover=True) == 3


@pytest.mark.parametrize("partial", ["model", "state"])
def test_a_kill_while_writing_keeps_the_old_checkpoint(tmp_path: Path, partial: str) -> None:
    ckpt = tmp_path / "ckpt"
    _save(ckpt, 1)
    _save(ckpt, 2)
    model_path, state_path = checkpoint_paths(ckpt, "last")
    model_tmp = model_path.with_name(model_path.name + ".tmp")
    model_tmp.write_bytes(b"partial")  # the model file was being written ...
    if partial == "state":  # ... or it was complete and the state file was being written
        save_checkpoint(tmp_path / "other", {"w": torch.full((3,), 3.0)}, {"step": 3})
        model_tmp.write_bytes(checkpoint_paths(tmp_path / "other", "last")[0].read_bytes())
        state_path.with_name(state_path.name + ".tmp").write_bytes(b"PK\x03\x04 partial")
    assert _step(ckpt, "last") == 2 and _step(ckpt, "prev") == 1
    assert not list(ckpt.glob("*.tmp"))
