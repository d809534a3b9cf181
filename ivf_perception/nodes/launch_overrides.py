"""Which launch arguments override the fusion node's parameter file.

Why: a launch argument with a default (``variant:=auto``) used to be passed on every launch,
silently replacing the ``variant``/``weights`` a user wrote in their ``params_file``. These
arguments now default to empty, and only the ones the user gave become parameter overrides.
Kept out of the launch file so it is testable without ``launch``/``launch_ros`` installed.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["OVERRIDABLE", "user_overrides"]

# launch argument = parameter of the fusion node that it overrides when given
OVERRIDABLE = ("variant", "weights")


def user_overrides(arguments: Mapping[str, str]) -> dict[str, str]:
    """The parameter overrides of the launch arguments the user set (non-empty values only)."""
    return {name: arguments[name].strip() for name in OVERRIDABLE if arguments.get(name, "").strip()}
