"""``ivf-train`` for the data-parallel tests, with the stand-in model registered.

``torchrun`` starts fresh interpreters that never import ``conftest.py``, where the stand-in
model (``test_training_standin``) is registered; this script imports it first, then runs the
real command line: ``torchrun ... training/test/ddp_entry.py run RECIPE.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: E402,F401  (registers test_training_standin)

from ivf_training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
