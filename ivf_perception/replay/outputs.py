"""Output folders of replay, compare and extract: never clobber what the user did not ask to replace.

Why: a replay takes minutes to hours; silently overwriting the previous report (or, worse, an
unrelated folder given by mistake) loses work. An existing non-empty folder is refused unless
``--overwrite`` is given, and even then only the entries this tool writes are removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.errors import IvfPerceptionError

__all__ = ["OutputExistsError", "prepare_output_dir"]


class OutputExistsError(IvfPerceptionError, ValueError):
    """The output folder exists and holds files (pass --overwrite to replace this tool's outputs)."""


def prepare_output_dir(out: Path, owned: Sequence[str], overwrite: bool) -> Path:
    """Create ``out``; if it exists and is not empty, refuse, or (``overwrite``) remove the ``owned`` entries.

    Args:
        out: the output folder.
        owned: names of the files and folders this tool writes directly inside ``out``.
        overwrite: replace those entries instead of refusing.

    Raises:
        OutputExistsError: ``out`` holds files and ``overwrite`` is False, or ``out`` is a file.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} is a file, not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
        raise OutputExistsError(f"output folder {out} already exists and is not empty ({shown}); pass --overwrite "
                                "to replace its results, or choose another --out")
    for name in owned:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
