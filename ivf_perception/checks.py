"""Shape checking shared by ops, models and the engine.

One helper instead of ad-hoc asserts, so every shape error says what was expected and what
arrived (kornia's ``KORNIA_CHECK_SHAPE`` habit). Checks can be switched off globally for
production loops with ``set_checks_enabled(False)``; they are skipped automatically while
tracing, scripting or compiling so exported graphs stay free of Python-side branches.
"""

from __future__ import annotations

import torch

from ivf_perception.errors import IvfPerceptionError

__all__ = ["ShapeError", "check_shape", "set_checks_enabled", "checks_enabled"]

_ENABLED = True


class ShapeError(IvfPerceptionError, ValueError):
    """A tensor's shape does not match the documented layout."""


def set_checks_enabled(enabled: bool) -> None:
    """Enable or disable shape checks globally (they are cheap; disable only in hot loops)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def checks_enabled() -> bool:
    """Whether checks run now: globally enabled and not tracing/scripting/compiling."""
    if not _ENABLED:
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling():
        return False
    try:
        if torch.onnx.is_in_onnx_export():
            return False
    except AttributeError:  # pragma: no cover - very old torch
        pass
    return True


def check_shape(x: torch.Tensor, layout: str, *, name: str = "input", **sizes: int) -> None:
    """Check that ``x`` has the layout ``layout`` (space-separated dimension names).

    A dimension written as a digit must equal that number; a name that appears in ``sizes``
    must equal the given value; other names only fix the number of dimensions. A leading
    ``*`` allows any number of leading dimensions.

    Args:
        x: the tensor to check.
        layout: e.g. ``"B C H W"``, ``"B 3 H W"`` or ``"* L"``.
        name: the argument's name, used in the message.
        **sizes: required sizes of named dimensions, e.g. ``C=3``.

    Raises:
        ShapeError: naming the argument, the expected layout and the actual shape.
    """
    if not checks_enabled():
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor with layout ({layout}), got {type(x).__name__}")
    dims = layout.split()
    shape = tuple(x.shape)
    if dims and dims[0] == "*":
        dims = dims[1:]
        if len(shape) < len(dims):
            raise ShapeError(f"{name}: expected layout (*, {', '.join(dims)}), got shape {shape}")
        shape = shape[len(shape) - len(dims):]
    elif len(shape) != len(dims):
        raise ShapeError(
            f"{name}: expected {len(dims)} dimensions ({' '.join(dims)}), got shape {tuple(x.shape)}"
        )
    for dim_name, actual in zip(dims, shape):
        expected = int(dim_name) if dim_name.isdigit() else sizes.get(dim_name)
        if expected is not None and actual != expected:
            raise ShapeError(
                f"{name}: expected {dim_name}={expected} in layout ({' '.join(dims)}), "
                f"got shape {tuple(x.shape)}"
            )
