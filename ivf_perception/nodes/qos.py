"""QoS of the fusion node's topics the ROS way: REP-2003 overrides and incompatible-QoS reports.

Why: a QoS mismatch is the most reported problem in the issue trackers of comparable nodes, and
without help it shows only as "stream silent". Two standard mechanisms fix that:

- **Overrides** (REP-2003, rclpy ``QoSOverridingOptions``): every subscription and publisher
  accepts ``qos_overrides.<topic>.<subscription|publisher>.<policy>`` parameters at startup
  (``--params-file`` or ``-p``) for the policies in :data:`OVERRIDABLE`. ``<topic>`` is the
  fully resolved name after remapping (``/rgb/image``, or ``/camera/color/image_raw`` with
  ``-r rgb/image:=/camera/color/image_raw``). The node-wide ``qos_reliability``/``qos_depth``
  give the defaults; an override wins for its topic.
- **Incompatible-QoS events** on every entity: a peer whose QoS cannot match ours is described
  (:func:`incompatibility`: "/rgb/image: publisher offers BEST_EFFORT, we request RELIABLE"),
  logged once per topic and shown in ``/diagnostics`` while that peer exists.

The node declares the override parameters itself just before creating its entities (rclpy then
finds them declared and applies them), so their values are validated by :func:`check_override`
in the node's set-parameters callback and a bad one fails ``configure`` naming the parameter,
and so they can be undeclared at cleanup: the next configure then takes its defaults from the
current ``qos_reliability``/``qos_depth`` again (rclpy's own declarations would pin the first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ivf_perception.engine.config import ParameterValueError

__all__ = ["OVERRIDABLE", "OVERRIDE_PREFIX", "MAX_DEPTH", "QosOverrideError", "override_name", "policy_value",
           "check_override", "overriding_options", "incompatibility", "policy_name_of_event", "describe_profile"]

OVERRIDE_PREFIX = "qos_overrides."
OVERRIDABLE: tuple[str, ...] = ("history", "depth", "reliability", "durability")
"""The policies with an override parameter on every entity (rclpy's defaults plus durability)."""
MAX_DEPTH = 1000
_CHOICES: dict[str, tuple[str, ...]] = {
    "history": ("keep_last", "keep_all", "system_default"),
    "reliability": ("reliable", "best_effort", "system_default"),
    "durability": ("volatile", "transient_local", "system_default"),
}
_ENTITIES = ("publisher", "subscription")


class QosOverrideError(ParameterValueError):
    """A ``qos_overrides.*`` parameter names an unknown policy or holds a value the policy does not take."""


def override_name(topic: str, entity: str, policy: str) -> str:
    """The REP-2003 parameter name, e.g. ``qos_overrides./rgb/image.subscription.reliability``."""
    return f"{OVERRIDE_PREFIX}{topic}.{entity}.{policy}"


def policy_value(profile: Any, policy: str) -> str | int:
    """A profile's value of one overridable policy as its parameter holds it (``"reliable"``, 5)."""
    value = getattr(profile, policy)
    return int(value) if policy == "depth" else str(value.name).lower()


def check_override(name: str, value: Any) -> None:
    """Check one ``qos_overrides.*`` parameter (name form, policy, value).

    Raises:
        QosOverrideError: naming the parameter, the value and what is accepted.
    """
    parts = name[len(OVERRIDE_PREFIX):].rsplit(".", 2)
    if len(parts) != 3 or parts[1].split("_", 1)[0] not in _ENTITIES:
        raise QosOverrideError(f"{name}: expected qos_overrides.<topic>.<publisher|subscription>.<policy>")
    policy = parts[2]
    if policy not in OVERRIDABLE:
        raise QosOverrideError(f"{name}: policy '{policy}' cannot be overridden here; overridable: "
                               f"{', '.join(OVERRIDABLE)}")
    if policy == "depth":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEPTH:
            raise QosOverrideError(f"{name} must be an integer in [1, {MAX_DEPTH}], got {value!r}")
        return
    if not isinstance(value, str) or value.lower() not in _CHOICES[policy]:
        raise QosOverrideError(f"{name} must be one of {', '.join(_CHOICES[policy])}, got {value!r}")


def overriding_options() -> Any:
    """rclpy ``QoSOverridingOptions`` for :data:`OVERRIDABLE` (passed to every create_* call)."""
    from rclpy.qos import QoSPolicyKind
    from rclpy.qos_overriding_options import QoSOverridingOptions

    return QoSOverridingOptions([QoSPolicyKind[p.upper()] for p in OVERRIDABLE])


def describe_profile(profile: Any) -> str:
    """``reliable, keep_last 5, volatile``: what an operator compares with ``ros2 topic info -v``."""
    history = policy_value(profile, "history")
    depth = f" {int(profile.depth)}" if history == "keep_last" else ""
    return f"{policy_value(profile, 'reliability')}, {history}{depth}, {policy_value(profile, 'durability')}"


def policy_name_of_event(event: Any) -> str:
    """The policy of an rclpy incompatible-QoS event (``last_policy_kind``) as ``"RELIABILITY"``."""
    kind = getattr(event, "last_policy_kind", None)
    name = str(getattr(kind, "name", kind))
    return name.rsplit("QOS_POLICY_", 1)[-1].upper()


# (policy, the value a requester asks for, the offered value that cannot serve it); the offer
# must be at least as strong as the request (DDS request/offer semantics)
_RULES: tuple[tuple[str, str, str], ...] = (
    ("reliability", "RELIABLE", "BEST_EFFORT"),
    ("durability", "TRANSIENT_LOCAL", "VOLATILE"),
)


def incompatibility(topic: str, entity: str, ours: Any, peers: Sequence[Any]) -> str | None:
    """Describe why a peer's QoS cannot match one of our entities, or None if every peer can.

    Args:
        topic: the resolved topic name.
        entity: ``"subscription"`` (peers are publishers) or ``"publisher"`` (peers are subscriptions).
        ours: our entity's QoS profile.
        peers: the QoS profiles of the other side's endpoints (``get_*_info_by_topic``).

    Returns:
        E.g. ``"/rgb/image: publisher offers BEST_EFFORT, we request RELIABLE"``.
    """
    for policy, strong, weak in _RULES:
        mine = str(getattr(ours, policy).name)
        for peer in peers:
            theirs = str(getattr(peer, policy).name)
            if entity == "subscription" and mine == strong and theirs == weak:
                return f"{topic}: publisher offers {weak}, we request {strong}"
            if entity == "publisher" and mine == weak and theirs == strong:
                return f"{topic}: subscriber requests {strong}, we offer {weak}"
    return None
