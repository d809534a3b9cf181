"""``fusion_node``: live thermal + RGB fusion and segmentation as a ROS 2 lifecycle node.

Data path (DESIGN §1, §4): the image callbacks only read the header stamp and offer the message
to the shared :class:`~ivf_perception.sync.ApproximateTimePairer` (which also owns the time-jump
reset); a completed pair goes to a :class:`~ivf_perception.sync.LatestSlot`; one worker thread
takes the newest pair, decodes it (``io.decode_rgb``/``io.decode_thermal``, thermal left raw, as
replay does), runs :meth:`Engine.infer` (AGC, registration and validation happen there), encodes
and publishes. The engine is built by :meth:`Engine.from_config` from the same
:class:`~ivf_perception.engine.config.PipelineConfig` replay and the CLI use. A slow engine
therefore drops stale pairs (counted) instead of building a queue and latency, and inference
never blocks the executor. This module only wires parts together: no tensor maths here.

Topics (relative, remappable):
    in:  ``rgb/image``, ``thermal/image`` (sensor_msgs/Image), ``rgb/camera_info``,
         ``thermal/camera_info`` (optional, checked against the image sizes)
    out: ``fused/image`` (rgb8), ``segmentation/labels`` (mono8 class ids),
         ``segmentation/overlay`` (rgb8), ``fusion/stats`` (ivf_perception_msgs/FusionStats),
         ``fused/camera_info`` (the RGB camera_info, scaled to the output size), all with the
         RGB input's header, each encoded and published only while someone subscribes;
         ``segmentation/class_info`` (ivf_perception_msgs/ClassInfo, latched); ``/diagnostics``
         (with the median cost of each per-frame stage).

QoS (:mod:`ivf_perception.nodes.qos`): image inputs follow ``qos_reliability``/``qos_depth``,
outputs are reliable with depth ``qos_depth``; every subscription and publisher takes REP-2003
overrides (``qos_overrides./rgb/image.subscription.reliability`` ...), and an incompatible-QoS
peer is logged once per topic and reported in ``/diagnostics`` while it exists.

Lifecycle (the ROS 2 lifecycle talker's structure, yolo_ros's order of work):
    configure  reads and validates the parameters, builds the QoS, builds and warms up the
               engine (and its inference backend: an exported ONNX session or TensorRT engine
               is built here, at ``warmup_size``), creates the publishers. SUCCESS: inactive.
               FAILURE (invalid parameter, missing or mismatched weights, no CUDA, a backend
               whose package is missing or whose build failed): back to unconfigured with
               nothing held, reason logged and shown in /diagnostics; fix the parameter and
               configure again.
    activate   subscribes and starts the worker. SUCCESS: active.
    deactivate unsubscribes, stops the worker, frees cached GPU memory. SUCCESS: inactive.
    cleanup    destroys the publishers and releases the model. SUCCESS: unconfigured.
    shutdown   all of the above from any state; the process then exits.
    ERROR      only when a transition itself raised (logged with its traceback); on_error
               releases everything and returns to unconfigured.
With ``autostart`` (default true) the node configures and activates itself at startup.
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ivf_perception.engine import Engine, EngineResult
from ivf_perception.engine.config import AGC_PARAMETERS, ParameterValueError, agc_config
from ivf_perception.engine.guidance import GuidanceStatus
from ivf_perception.engine.threads import resolve_threads
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io import decode_rgb, decode_thermal, header_stamp_ns, numpy_to_image
from ivf_perception.io.stats_msg import FusionStatsValues, rclpy_fusion_stats_type
from ivf_perception.nodes.health import (
    HealthSnapshot,
    RateMeter,
    StageWindow,
    StreamHealth,
    assess_health,
    to_diagnostic_array,
)
from ivf_perception.nodes.parameters import (
    PARAMETERS,
    SAFE_PARAMETERS,
    FusionNodeConfig,
    build_qos,
    check_parameter_change,
    config_from_values,
    descriptor,
)
from ivf_perception.nodes.qos import (
    OVERRIDABLE,
    OVERRIDE_PREFIX,
    QosOverrideError,
    check_override,
    describe_profile,
    incompatibility,
    override_name,
    overriding_options,
    policy_name_of_event,
    policy_value,
)
from ivf_perception.nodes.self_description import class_info_message, fused_camera_info, rclpy_class_info_type
from ivf_perception.sync import STREAMS, ApproximateTimePairer, LatestSlot, Pair

__all__ = ["FusionNode", "main"]

# Header stamps further than this from the node's clock (a bag played without /clock and
# use_sim_time, a camera with an unsynchronised clock) give no meaningful stamp->published
# latency; it is then measured from the RGB message's receipt instead.
STAMP_CLOCK_TOLERANCE_S = 10.0
# Receipt times remembered per RGB stamp (bounded: pairs older than this were dropped long ago).
RECEIPTS_KEPT = 256

# Errors building the engine at configure: the package's own (weights, model names, inputs),
# files, model-constructor argument checks and device failures; the transition fails with the reason.
CONFIGURE_ERRORS = (IvfPerceptionError, OSError, ValueError, RuntimeError)
# Incompatible-QoS policies that incompatibility() can re-check in the graph (a reported problem
# of another policy stays until its entity is destroyed).
CHECKABLE_POLICIES = ("RELIABILITY", "DURABILITY")
DIAGNOSTICS_TOPIC = "/diagnostics"


@dataclass(frozen=True)
class _Runtime:
    """Output settings the worker reads per frame; replaced as a whole when a safe parameter changes.

    The AGC window is the engine's (``Engine.set_agc``), so pre-processing has one owner.
    """

    overlay_enabled: bool
    overlay_alpha: float


def _transition(fn: Callable[[FusionNode, LifecycleState], TransitionCallbackReturn]
                ) -> Callable[[FusionNode, LifecycleState], TransitionCallbackReturn]:
    """Log an exception escaping a transition (rclpy turns it into ERROR without a word)."""
    @functools.wraps(fn)
    def wrapper(self: FusionNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return fn(self, state)
        except Exception:  # the lifecycle's error path: logged here, then on_error cleans up
            self.get_logger().error(f"{fn.__name__} raised:\n{traceback.format_exc()}")
            raise
    return wrapper


class FusionNode(LifecycleNode):
    """The fusion lifecycle node (see the module docstring for topics and transitions).

    Args:
        node_name: default node name (``__node:=`` remaps it).
        **kwargs: passed to ``LifecycleNode`` (e.g. ``parameter_overrides``, ``context``).
    """

    def __init__(self, node_name: str = "fusion_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            default = Parameter.Type[spec.kind.upper()] if spec.default is None else spec.default
            self.declare_parameter(spec.name, default, descriptor(spec))

        self.finalized: Future = Future()
        self._config: FusionNodeConfig | None = None
        self._engine: Engine | None = None
        self._engine_info: dict[str, Any] = {}
        self._configure_error = ""
        self._active = False
        self._runtime: _Runtime | None = None
        self._image_qos: QoSProfile | None = None
        self._publishers_by_name: dict[str, Any] = {}
        self._subscriptions_list: list[Any] = []
        self._overriding = overriding_options()
        self._declaring_qos = False  # our own declarations of qos_overrides.* pass the set-parameters callback
        self._qos_rejection = ""  # why the callback refused the last of those declarations
        self._qos_override_names: list[str] = []  # declared at configure, undeclared at cleanup
        self._qos_in_use: dict[tuple[str, str], QoSProfile] = {}  # (entity, resolved topic) -> effective QoS
        self._qos_problems: dict[tuple[str, str], tuple[str, str]] = {}  # -> (policy, description)
        self._pairer: ApproximateTimePairer[Image] | None = None
        self._slot: LatestSlot[Pair[Image]] | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset_counters()

        try:
            self._stats_type: type | None = rclpy_fusion_stats_type()
        except ImportError as exc:
            self._stats_type = None
            self.get_logger().warning(f"fusion/stats is disabled: {exc}")
        try:
            self._class_info_type: type | None = rclpy_class_info_type()
        except ImportError as exc:
            self._class_info_type = None
            self.get_logger().warning(f"segmentation/class_info is disabled: {exc}")

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        period = float(self.get_parameter("diagnostics_period_s").value)
        try:  # its overrides stay declared for the node's life (the publisher does too)
            self._declare_qos_overrides("publisher", DIAGNOSTICS_TOPIC, QoSProfile(depth=10), keep=True)
        except QosOverrideError as exc:  # main() reports it and exits 2, as for other startup parameters
            raise ParameterException(str(exc), [DIAGNOSTICS_TOPIC]) from exc
        self._diagnostics_pub = self._publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, QoSProfile(depth=10),
                                                lifecycle=False)
        self._diagnostics_timer = self.create_timer(period, self._publish_diagnostics)

    # ------------------------------------------------------------------ lifecycle

    @_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = config_from_values(self._parameter_values())
        except ParameterValueError as exc:
            return self._configure_failed(f"invalid parameter: {exc}")
        image_qos = build_qos(config.qos_reliability, config.qos_depth)
        # Outputs are reliable: reliable and best-effort subscribers (RViz, recorders) both match.
        out_qos = QoSProfile(depth=config.qos_depth, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        try:  # every entity's overrides, the subscriptions' too: a bad one fails here, not at activate
            for entity, topic, base in self._entities(config, image_qos, out_qos, latched):
                self._declare_qos_overrides(entity, topic, base)
        except QosOverrideError as exc:
            self._undeclare_qos_overrides()
            return self._configure_failed(f"invalid QoS override: {exc}")
        try:
            engine = Engine.from_config(config.pipeline)
        except CONFIGURE_ERRORS as exc:
            self._undeclare_qos_overrides()
            return self._configure_failed(f"cannot build the engine ({type(exc).__name__}): {exc}")
        if engine.weights_choice:  # ``weights: default``: say which bundled file this device got and why
            self.get_logger().info(engine.weights_choice)
        try:  # the warm-up also builds lazily built backends (an ONNX session at the warm-up size)
            started = time.monotonic()
            engine.warmup(*config.warmup_size)
            warmup_ms = (time.monotonic() - started) * 1e3
        except CONFIGURE_ERRORS as exc:
            engine.release()  # nothing half-built stays behind: configure can be retried at once
            self._undeclare_qos_overrides()
            return self._configure_failed(f"engine warm-up failed ({type(exc).__name__}): {exc}")

        self._engine, self._config, self._configure_error = engine, config, ""
        self._engine_info = engine.describe()  # per-frame stats reuse it (describe() walks the model)
        self._runtime = _Runtime(config.overlay_enabled, config.pipeline.overlay_alpha)
        self._image_qos = image_qos
        self._publishers_by_name = {
            name: self._publisher(msg_type, topic, qos)
            for name, msg_type, topic, qos in self._outputs(out_qos, latched)
        }
        if abs(self._diagnostics_timer.timer_period_ns - config.diagnostics_period_s * 1e9) > 1:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = self.create_timer(config.diagnostics_period_s, self._publish_diagnostics)
        info = self._engine_info
        self.get_logger().info(
            f"configured: {info['variant']}/{info['preset']} ({info['num_classes']} classes) on "
            f"{info['device']} {info['precision']}, backend {info['backend']}, "
            f"{resolve_threads(config.pipeline.threads)} CPU threads, weights '{config.pipeline.weights}', warm-up "
            f"{config.warmup_size[0]}x{config.warmup_size[1]} took {warmup_ms:.0f} ms")
        self.get_logger().info(f"weights trained on: {engine.training_domain()}")
        return TransitionCallbackReturn.SUCCESS

    @_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config, qos = self._config, self._image_qos
        assert config is not None and qos is not None, "the lifecycle only activates a configured node"
        pipeline = config.pipeline
        self._reset_counters()
        self._pairer = ApproximateTimePairer(pipeline.slop_s, pipeline.queue_size, pipeline.time_jump_threshold_s)
        self._slot = LatestSlot(self._pairer.stats)
        transports = {"rgb": config.rgb_transport, "thermal": config.thermal_transport}
        image_inputs = {s: (CompressedImage, f"{s}/image/compressed") if transports[s] == "compressed"
                        else (Image, f"{s}/image") for s in STREAMS}
        self._subscriptions_list = [
            self._subscription(*image_inputs[s], functools.partial(self._on_image, s), qos) for s in STREAMS
        ] + [
            self._subscription(CameraInfo, f"{s}/camera_info", functools.partial(self._on_camera_info, s), qos)
            for s in STREAMS
        ]
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_class_info()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="fusion_worker", daemon=True)
        self._worker.start()
        self._active = True
        self.get_logger().info(
            "active: " + ", ".join(f"{s.topic_name} ({describe_profile(s.qos_profile)})"
                                   for s in self._subscriptions_list[:2])
            + f", slop {pipeline.slop_s * 1e3:.0f} ms")
        return result

    @_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._free_device_cache()
        self.get_logger().info("inactive: subscriptions and worker stopped")
        return super().on_deactivate(state)

    @_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._undeclare_qos_overrides()
        self.get_logger().info("unconfigured: publishers destroyed, model released")
        return super().on_cleanup(state)

    @_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        self.get_logger().info(f"shut down from {state.label}")
        if not self.finalized.done():
            self.finalized.set_result(True)
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        self._undeclare_qos_overrides()
        self.get_logger().error(f"error while {state.label}: everything released, back to unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> bool:
        """Configure and activate when the ``autostart`` parameter is true; True on success."""
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions (configure, activate)")
            return True
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed (see above); fix the parameters, then "
                                    "call the configure transition again")
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop the worker and release the model (process exit without a shutdown transition)."""
        self._stop_processing()
        self._release()

    # ------------------------------------------------------------------ configure helpers

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._configure_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _parameter_values(self) -> dict[str, Any]:
        """Current values of our parameters; an unset optional list reads as None."""
        return {spec.name: self.get_parameter_or(spec.name, Parameter(spec.name)).value for spec in PARAMETERS}

    def _outputs(self, out_qos: QoSProfile, latched: QoSProfile) -> list[tuple[str, type, str, QoSProfile]]:
        """(name, type, topic, base QoS) of the lifecycle publishers (stats/class_info when importable)."""
        outputs: list[tuple[str, type, str, QoSProfile]] = [
            ("fused", Image, "fused/image", out_qos), ("labels", Image, "segmentation/labels", out_qos),
            ("overlay", Image, "segmentation/overlay", out_qos)]
        if self._stats_type is not None:
            outputs.append(("stats", self._stats_type, "fusion/stats", out_qos))
        outputs.append(("camera_info", CameraInfo, "fused/camera_info", out_qos))
        if self._class_info_type is not None:  # latched: a late subscriber still gets the table
            outputs.append(("class_info", self._class_info_type, "segmentation/class_info", latched))
        return outputs

    def _entities(self, config: FusionNodeConfig, image_qos: QoSProfile, out_qos: QoSProfile,
                  latched: QoSProfile) -> list[tuple[str, str, QoSProfile]]:
        """(entity kind, topic, base QoS) of everything configure and activate will create."""
        inputs = [f"{s}/image/compressed" if getattr(config, f"{s}_transport") == "compressed" else f"{s}/image"
                  for s in STREAMS] + [f"{s}/camera_info" for s in STREAMS]
        return ([("publisher", topic, qos) for _, _, topic, qos in self._outputs(out_qos, latched)]
                + [("subscription", topic, image_qos) for topic in inputs])

    def _declare_qos_overrides(self, entity: str, topic: str, base: QoSProfile, *, keep: bool = False) -> None:
        """Declare the REP-2003 override parameters of one entity (values checked by the callback).

        Declared here rather than by rclpy at creation so that a bad value fails configure with
        the parameter named, and so that cleanup can undeclare them (``keep`` = never).

        Raises:
            QosOverrideError: a value of the wrong type or one the policy does not take.
        """
        resolved = self.resolve_topic_name(topic)
        for policy in OVERRIDABLE:
            name = override_name(resolved, entity, policy)
            if self.has_parameter(name):
                continue
            self._declaring_qos, self._qos_rejection = True, ""
            try:
                self.declare_parameter(name, policy_value(base, policy), ParameterDescriptor(
                    description=f"QoS {policy} of the {entity} on {resolved} (REP-2003 override; startup only)"))
            except ParameterException as exc:  # rejected by _on_set_parameters, or a value of another type
                kind = "an integer" if policy == "depth" else "a string"
                reason = self._qos_rejection or f"{name} must be {kind}; the value given has another type"
                raise QosOverrideError(f"{reason}; fix it and restart the node") from exc
            finally:
                self._declaring_qos = False
            if not keep:
                self._qos_override_names.append(name)

    def _undeclare_qos_overrides(self) -> None:
        """Forget the overrides declared at configure; the next configure re-reads the startup values."""
        for name in self._qos_override_names:
            if self.has_parameter(name):
                self.undeclare_parameter(name)
        self._qos_override_names = []

    def _publisher(self, msg_type: type, topic: str, qos: QoSProfile, *, lifecycle: bool = True) -> Any:
        """A publisher with QoS overrides and an incompatible-QoS report (``qos`` is not modified)."""
        resolved = self.resolve_topic_name(topic)
        events = PublisherEventCallbacks(
            incompatible_qos=functools.partial(self._on_incompatible_qos, "publisher", resolved))
        create: Callable[..., Any] = self.create_lifecycle_publisher if lifecycle else self.create_publisher
        pub = create(msg_type, topic, copy.copy(qos),  # rclpy writes the overrides into the profile it gets
                     qos_overriding_options=self._overriding, event_callbacks=events)
        self._qos_in_use[("publisher", resolved)] = pub.qos_profile
        return pub

    def _subscription(self, msg_type: type, topic: str, callback: Callable[[Any], None], qos: QoSProfile) -> Any:
        """A subscription with QoS overrides and an incompatible-QoS report (``qos`` is not modified)."""
        resolved = self.resolve_topic_name(topic)
        events = SubscriptionEventCallbacks(
            incompatible_qos=functools.partial(self._on_incompatible_qos, "subscription", resolved))
        sub = self.create_subscription(msg_type, topic, callback, copy.copy(qos),
                                       qos_overriding_options=self._overriding, event_callbacks=events)
        self._qos_in_use[("subscription", resolved)] = sub.qos_profile
        return sub

    def _stop_processing(self) -> None:
        self._active = False
        for sub in self._subscriptions_list:
            self.destroy_subscription(sub)
        self._subscriptions_list = []
        self._forget_qos("subscription")
        self._stop.set()
        if self._slot is not None:
            self._slot.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._pairer is not None:
            self._pairer.flush()

    def _release(self) -> None:
        for pub in self._publishers_by_name.values():
            self.destroy_lifecycle_publisher(pub)
        self._publishers_by_name = {}
        self._forget_qos("publisher", keep=self._diagnostics_pub.topic_name)
        if self._engine is not None:
            self._engine.release()
        self._engine = None
        self._config = None

    def _free_device_cache(self) -> None:
        """Return cached CUDA blocks to the driver (deactivate, or after a failed frame)."""
        if self._engine is not None and self._engine.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _reset_counters(self) -> None:
        self._agc_resets = 0  # pairer resets already passed on to the engine's AGC
        self._processed = 0
        self._failed = 0
        self._failed_since_report = 0
        self._guidance_counts: dict[str, int] = {}  # frames per guidance source (guided models only)
        self._guidance_last: GuidanceStatus | None = None
        self._last_error = ""
        self._last_error_time: float | None = None
        self._last_rx: dict[str, float | None] = {s: None for s in STREAMS}
        self._image_size: dict[str, tuple[int, int]] = {}
        self._camera_info_size: dict[str, tuple[int, int]] = {}
        self._meters = {s: RateMeter() for s in (*STREAMS, "output")}
        self._latency_ms: deque[float] = deque(maxlen=30)
        self._rgb_camera_info: CameraInfo | None = None  # the latest, for fused/camera_info
        self._rgb_received_ns: dict[int, int] = {}  # written by the executor, read by the worker
        self._receipts_lock = threading.Lock()
        self._latency_basis = "header stamp"
        self._processing_ms: deque[float] = deque(maxlen=30)
        self._stages = StageWindow(30)
        self._activated_at = time.monotonic()

    # ------------------------------------------------------------------ callbacks (executor thread)

    def _on_image(self, stream: str, msg: Image) -> None:
        """Stamp and hand over; nothing heavy runs here."""
        now = time.monotonic()
        self._meters[stream].tick(now)
        self._last_rx[stream] = now
        if isinstance(msg, Image):  # a CompressedImage's size is known only once decoded
            self._image_size[stream] = (msg.width, msg.height)
        pairer, slot = self._pairer, self._slot
        assert pairer is not None and slot is not None, "subscriptions exist only while active"
        stamp_ns = header_stamp_ns(msg)
        if stream == "rgb":
            self._remember_receipt(stamp_ns)
        pair = pairer.add(stream, stamp_ns, msg)
        for jump in pairer.take_time_jumps():
            self.get_logger().warning(
                f"{jump.stream} stamps jumped back by {jump.back_s:.3f} s (bag loop or clock "
                "reset): pairing queues reset")
        if pair is not None:
            slot.put(pair)

    def _remember_receipt(self, stamp_ns: int) -> None:
        with self._receipts_lock:
            received = self._rgb_received_ns
            received[stamp_ns] = time.monotonic_ns()
            if len(received) > RECEIPTS_KEPT:
                del received[next(iter(received))]  # insertion order: the oldest

    def _end_to_end_ms(self, rgb_stamp_ns: int) -> float:
        """Stamp->published latency on the node's clock (sim time with use_sim_time), or
        receipt->published when the stamp is more than STAMP_CLOCK_TOLERANCE_S from that clock."""
        from_stamp_ms = (self.get_clock().now().nanoseconds - rgb_stamp_ns) / 1e6
        with self._receipts_lock:
            received = self._rgb_received_ns.pop(rgb_stamp_ns, None)
        if abs(from_stamp_ms) <= STAMP_CLOCK_TOLERANCE_S * 1e3 or received is None:
            self._latency_basis = "header stamp"
            return from_stamp_ms
        self._latency_basis = (f"receipt (stamps are {from_stamp_ms / 1e3:.0f} s from the clock; "
                               "play the bag with /clock and set use_sim_time)")
        return (time.monotonic_ns() - received) / 1e6

    def _on_incompatible_qos(self, entity: str, topic: str, event: Any) -> None:
        """A peer's QoS cannot match one of ours: describe it, log it once, show it in /diagnostics."""
        policy = policy_name_of_event(event)
        peer = "publisher" if entity == "subscription" else "subscriber"
        text = (self._incompatibility(entity, topic)
                or f"{topic}: a {peer}'s {policy} QoS policy is incompatible with ours")
        key = (entity, topic)
        if key not in self._qos_problems:
            ours = self._qos_in_use.get(key)
            self.get_logger().warning(
                f"QoS mismatch, no messages will flow: {text} (ours: {describe_profile(ours) if ours else '?'}); "
                f"change the peer's QoS or override ours with "
                f"{override_name(topic, entity, policy.lower() if policy.lower() in OVERRIDABLE else 'reliability')}")
        self._qos_problems[key] = (policy, text)

    def _incompatibility(self, entity: str, topic: str) -> str | None:
        """What the graph shows now about one of our entities' incompatible peers (see qos.incompatibility)."""
        ours = self._qos_in_use.get((entity, topic))
        if ours is None:
            return None
        infos = (self.get_publishers_info_by_topic(topic) if entity == "subscription"
                 else self.get_subscriptions_info_by_topic(topic))
        me = (self.get_name(), self.get_namespace())
        return incompatibility(topic, entity, ours, [i.qos_profile for i in infos
                                                     if (i.node_name, i.node_namespace) != me])

    def _forget_qos(self, entity: str, keep: str = "") -> None:
        """Drop the QoS records of destroyed entities (their problems go with them)."""
        for records in (self._qos_in_use, self._qos_problems):
            for key in [k for k in records if k[0] == entity and k[1] != keep]:
                del records[key]

    def _current_qos_problems(self) -> list[str]:
        """The reported QoS problems that still hold (re-checked in the graph where possible)."""
        for key, (policy, _) in list(self._qos_problems.items()):
            now = self._incompatibility(*key)
            if now is not None:
                self._qos_problems[key] = (policy, now)
            elif policy in CHECKABLE_POLICIES:
                del self._qos_problems[key]  # the incompatible peer is gone (or changed its QoS)
        return [text for _, text in self._qos_problems.values()]

    def _on_camera_info(self, stream: str, msg: CameraInfo) -> None:
        self._camera_info_size[stream] = (msg.width, msg.height)
        if stream == "rgb":
            self._rgb_camera_info = msg

    def _publish_class_info(self) -> None:
        """The class table, latched (at activate and when the palette changes)."""
        pub, engine = self._publishers_by_name.get("class_info"), self._engine
        if pub is None or engine is None or self._class_info_type is None:
            return
        from std_msgs.msg import Header

        pub.publish(class_info_message(self._class_info_type, Header(stamp=self.get_clock().now().to_msg()),
                                       engine.class_names, engine.palette))

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        slot = self._slot
        assert slot is not None, "the worker runs only while active"
        while not self._stop.is_set():
            pair = slot.get(timeout=0.2)
            if pair is not None:
                self._process(pair)

    def _process(self, pair: Pair[Image]) -> None:
        """Decode, infer, publish one pair; a failure skips the frame and is reported."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        stages: dict[str, float] = {}
        try:
            result = self._infer(pair, stages)
            self._publish(pair, result, stages)
        except IvfPerceptionError as exc:  # a frame or setting the package refuses (encoding, size, ...)
            self._frame_failed(pair, f"{type(exc).__name__}: {exc}")
            return
        except RuntimeError as exc:  # the device failed, e.g. CUDA out of memory: give the cache back
            self._frame_failed(pair, f"{type(exc).__name__}: {exc}")
            self._free_device_cache()
            return
        except Exception as exc:  # last resort, a bug: the worker must survive anything a frame can trigger
            self._frame_failed(pair, f"unexpected {type(exc).__name__}: {exc}")
            self.get_logger().error(traceback.format_exc(), throttle_duration_sec=5.0)
            return
        processing_ms = (time.perf_counter() - started) * 1e3
        # the node's own work: everything this frame cost but the network itself, as wall time
        # and as this thread's CPU time (what it costs without waiting for a busy CPU)
        stages["node work"] = processing_ms - stages.get("inference", 0.0)
        stages["node work CPU"] = (time.thread_time() - cpu_started) * 1e3 - result.cpu_ms.get("inference", 0.0)
        self._stages.record(stages)
        self._processing_ms.append(processing_ms)

    def _infer(self, pair: Pair[Image], stages: dict[str, float]) -> EngineResult:
        engine = self._engine
        assert engine is not None, "frames are processed only while active"
        started = time.perf_counter()
        # Views of the messages' buffers, not copies: this worker owns the pair and nothing
        # writes to the arrays (the engine reads them; the overlay reads the RGB one).
        rgb, thermal = decode_rgb(pair.rgb, copy=False), decode_thermal(pair.thermal, copy=False)
        stages["decode"] = (time.perf_counter() - started) * 1e3
        # class ids feed the labels, the overlay and the stats' pixel counts; without a consumer
        # the argmax (the largest post-processing cost) is skipped
        pubs, runtime = self._publishers_by_name, self._runtime
        resets = self._pairer.stats.resets if self._pairer is not None else 0
        if resets != self._agc_resets:  # a bag loop or clock jump: the smoothed AGC starts again
            engine.reset_agc()
            self._agc_resets = resets
        wanted: list[str] = [n for n in ("labels", "stats") if n in pubs]
        if runtime is not None and runtime.overlay_enabled:
            wanted.append("overlay")
        result = engine.infer(rgb, thermal, labels=any(pubs[n].get_subscription_count() > 0 for n in wanted),
                              stamp_s=pair.rgb_stamp_ns / 1e9)
        stages.update(result.timings_ms)
        if engine.uses_guidance:
            source = result.guidance.source
            self._guidance_counts[source] = self._guidance_counts.get(source, 0) + 1
            self._guidance_last = result.guidance
        return result

    def _publish(self, pair: Pair[Image], result: EngineResult, stages: dict[str, float]) -> None:
        """Encode and publish the outputs someone subscribes to (a recorder counts); the rest cost nothing."""
        pubs, runtime, engine, pairer = self._publishers_by_name, self._runtime, self._engine, self._pairer
        assert runtime is not None and engine is not None and pairer is not None, "publishing only while active"
        header = pair.rgb.header
        started = time.perf_counter()
        if pubs["fused"].get_subscription_count() > 0:
            pubs["fused"].publish(numpy_to_image(result.fused, "rgb8", header=header))
        if result.labels is not None and pubs["labels"].get_subscription_count() > 0:
            pubs["labels"].publish(numpy_to_image(result.labels, "mono8", header=header))
        info = self._rgb_camera_info
        if info is not None and pubs["camera_info"].get_subscription_count() > 0:
            height, width = result.fused.shape[:2]
            pubs["camera_info"].publish(fused_camera_info(info, header, width, height))
        stages["publish images"] = (time.perf_counter() - started) * 1e3
        if runtime.overlay_enabled and pubs["overlay"].get_subscription_count() > 0:
            started = time.perf_counter()
            overlay = result.overlay(runtime.overlay_alpha)
            if overlay is not None:
                pubs["overlay"].publish(numpy_to_image(overlay, "rgb8", header=header))
            stages["overlay"] = (time.perf_counter() - started) * 1e3
        self._processed += 1
        end_to_end_ms = self._end_to_end_ms(pair.rgb_stamp_ns)
        if "stats" in pubs and pubs["stats"].get_subscription_count() > 0:
            started = time.perf_counter()
            values = FusionStatsValues.from_frame(
                rgb_stamp_ns=pair.rgb_stamp_ns, thermal_stamp_ns=pair.thermal_stamp_ns,
                frame_id=header.frame_id, engine_info=self._engine_info, class_names=engine.class_names,
                labels=result.labels, timings_ms=result.timings_ms, pairing=pairer.stats,
                end_to_end_ms=end_to_end_ms, processed=self._processed, failed=self._failed,
                resets=pairer.stats.resets, guidance_source=result.guidance.source,
                guidance_age_s=result.guidance.age_s)
            pubs["stats"].publish(values.to_rclpy())
            stages["stats"] = (time.perf_counter() - started) * 1e3
        self._meters["output"].tick()
        self._latency_ms.append(end_to_end_ms)

    def _frame_failed(self, pair: Pair[Image], reason: str) -> None:
        self._failed += 1
        self._failed_since_report += 1
        self._last_error = reason
        self._last_error_time = time.monotonic()
        stamp = pair.rgb_stamp_ns / 1e9
        self.get_logger().error(f"frame {stamp:.3f} skipped: {reason}", throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ diagnostics (executor thread)

    def _snapshot(self) -> HealthSnapshot:
        now = time.monotonic()
        config, engine = self._config, self._engine
        state = "active" if self._active else ("inactive" if engine is not None else "unconfigured")
        streams: dict[str, StreamHealth] = {}
        pairing = self._pairer.stats if self._pairer is not None else None
        if self._active and pairing is not None:
            topics = {s: sub.topic_name for s, sub in zip(STREAMS, self._subscriptions_list)}
            for s in STREAMS:
                last = self._last_rx[s]
                mismatch = ""
                info, image = self._camera_info_size.get(s), self._image_size.get(s)
                if info and image and info != image and info != (0, 0):
                    mismatch = f"camera_info is {info[0]}x{info[1]} but images are {image[0]}x{image[1]}"
                qos = self._qos_in_use.get(("subscription", topics[s]))
                streams[s] = StreamHealth(
                    topic=topics[s], received=pairing.received[s], rate_hz=self._meters[s].rate(now),
                    silent_s=now - (last if last is not None else self._activated_at), size_mismatch=mismatch,
                    qos=describe_profile(qos) if qos is not None else "")
        counters: dict[str, float | int | str] = {}
        if pairing is not None:
            counters = {"paired": pairing.paired, "processed": self._processed, "dropped stale": pairing.dropped_stale,
                        "failed": self._failed, "unmatched rgb": pairing.unmatched["rgb"],
                        "unmatched thermal": pairing.unmatched["thermal"], "resets": pairing.resets,
                        "pair skew mean (ms)": round(pairing.skew_mean_ms, 2),
                        "pair skew max (ms)": round(pairing.skew_max_ms, 2)}
        if engine is not None and engine.uses_guidance:
            counters.update(self._guidance_counters(engine))
        latency, processing = list(self._latency_ms), list(self._processing_ms)
        failed_recently, self._failed_since_report = self._failed_since_report, 0
        return HealthSnapshot(
            state=state, device=str(engine.device) if engine else "", variant=engine.variant if engine else "",
            streams=streams, qos_reliability=config.qos_reliability if config else "",
            stream_timeout_s=config.stream_timeout_s if config else 0.0,
            output_rate_hz=self._meters["output"].rate(now),
            latency_ms=sum(latency) / len(latency) if latency else None, latency_basis=self._latency_basis,
            processing_ms=sum(processing) / len(processing) if processing else None,
            stage_ms=self._stages.medians(), counters=counters, failed_recently=failed_recently,
            last_error=self._last_error,
            last_error_age_s=None if self._last_error_time is None else now - self._last_error_time,
            configure_error=self._configure_error, qos_problems=self._current_qos_problems())

    def _guidance_counters(self, engine: Engine) -> dict[str, float | int | str]:
        """Guided and fallback frames, and the last frame's guidance, for /diagnostics."""
        counts = sorted(self._guidance_counts.items())
        counters: dict[str, float | int | str] = {f"guidance {k} frames": v for k, v in counts}
        counters["guidance mode"] = engine.guidance.mode
        last = self._guidance_last
        if last is not None:
            counters["guidance source"] = last.source
            counters["guidance age (s)"] = round(last.age_s, 3)
            if last.reason:
                counters["guidance fallback reason"] = last.reason
        return counters

    def _publish_diagnostics(self) -> None:
        report = assess_health(self._snapshot())
        self._diagnostics_pub.publish(to_diagnostic_array(
            report, name=f"{self.get_fully_qualified_name()}: fusion",
            hardware_id=str(self._engine.device) if self._engine else "none",
            stamp=self.get_clock().now().to_msg()))

    # ------------------------------------------------------------------ parameters (executor thread)

    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Validate a change; safe parameters only while active (STYLE: validate in this callback)."""
        changes = {p.name: p.value for p in params}
        qos = {name: value for name, value in changes.items() if name.startswith(OVERRIDE_PREFIX)}
        try:
            if qos and not self._declaring_qos:
                raise QosOverrideError(f"{', '.join(qos)}: QoS overrides are read when the node creates its "
                                       "topics; give them at startup (--params-file or -p)")
            for name, value in qos.items():
                check_override(name, value)
            check_parameter_change(changes, self._parameter_values(), active=self._active)
        except QosOverrideError as exc:
            self._qos_rejection = str(exc)
            return SetParametersResult(successful=False, reason=str(exc))
        except ParameterValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: Sequence[Parameter]) -> None:
        """Apply accepted safe changes now; the others take effect at the next configure."""
        names = {p.name for p in params}
        values = self._parameter_values()
        if self._engine is not None and "palette" in names and values["palette"] is not None:
            self._engine.set_palette(list(values["palette"]))
            self._publish_class_info()
        if self._pairer is not None and "slop_s" in names:
            self._pairer.set_slop(values["slop_s"])
        if self._engine is not None and names & set(AGC_PARAMETERS):
            self._engine.set_agc(agc_config(values))
        if self._runtime is not None and names & {"overlay_enabled", "overlay_alpha"}:
            self._runtime = _Runtime(values["overlay_enabled"], values["overlay_alpha"])
        pending = sorted(n for n in names if n not in SAFE_PARAMETERS and n in values)
        if pending and self._engine is not None:
            self.get_logger().info(f"{', '.join(pending)} changed: takes effect at the next configure "
                                   "(cleanup, then configure)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C or the shutdown transition (the ``fusion_node`` console script).

    Args:
        argv: full command line including the program name (default ``sys.argv``); ROS
            arguments (``--ros-args -p name:=value --params-file FILE -r from:=to``) are rclpy's.
    """
    rclpy.init(args=list(sys.argv if argv is None else argv))
    try:
        node = FusionNode()
    except ParameterException as exc:
        print(f"fusion_node: invalid parameter: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        node.autostart()
        executor.spin_until_future_complete(node.finalized)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
