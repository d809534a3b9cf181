"""The common base class of every error this package raises on purpose.

Why one base: the front doors (the CLI commands, the live node, ``ivf-train``) must turn a known
problem (a missing file, a corrupt weight file, a bad image, an unknown model name) into one clear
line, and let a genuine bug surface with its traceback. Catching :class:`IvfPerceptionError` does
exactly that, without a list of exception types that drifts out of date as errors are added.

Each package error also keeps its builtin base (``class WeightsError(IvfPerceptionError,
ValueError)``), so callers that catch ``ValueError``, ``KeyError`` or ``FileNotFoundError`` keep
working. This module is a leaf: it imports nothing from the package, so any layer may use it.
"""

from __future__ import annotations

__all__ = ["IvfPerceptionError"]


class IvfPerceptionError(Exception):
    """Base class of the errors ``ivf_perception`` (and ``ivf_training``) raise for known problems.

    Subclasses add a builtin base that says what kind of problem it is (``ValueError`` for bad
    data or arguments, ``KeyError`` for an unknown name, ``FileNotFoundError`` for a missing file).
    """
