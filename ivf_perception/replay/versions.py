"""The software a replay ran with, for the report's configuration section.

Why: a metrics table is only comparable with another if both name the exact code, libraries and
machine that produced them.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["software_versions"]

_PACKAGES = ("torch", "numpy", "opencv-python-headless", "rosbags", "safetensors", "tqdm", "PyYAML")


def _git_commit() -> str | None:
    """The source tree's commit (with ``+dirty`` for local changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def software_versions() -> dict[str, str | None]:
    """ivf_perception, Python, key libraries, the platform, CUDA and the git commit."""
    from ivf_perception import __version__

    versions: dict[str, str | None] = {"ivf_perception": __version__, "git_commit": _git_commit(),
                                       "python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    versions["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    versions["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return versions
