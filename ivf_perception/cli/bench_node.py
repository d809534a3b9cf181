"""``ivf-perception bench-node``: what the live node adds on top of the engine, and the rate it sustains.

Starts the fusion node as a separate process (as on a robot), publishes generated RGB and
thermal frames from this process at ``--fps`` like a camera driver (best-effort, stamped with
the current time), and subscribes to ``fused/image`` and ``fusion/stats``. Per frame:

- end-to-end: RGB header stamp -> ``fused/image`` received here (system clock);
- engine: the node's pre-processing + inference + post-processing for that frame (FusionStats);
- overhead = end-to-end - engine: both DDS hops, pairing, waiting for the worker (keep-latest
  slot), decoding, encoding and publishing;
- in node: RGB stamp -> all outputs published, as the node reports it (FusionStats).

Reported over the measured window: medians and 90th percentiles (and p90/p50, the steadiness
the threads default is judged by), the sustained output rate and how many pairs were dropped as
stale (the engine is slower than the cameras) or unmatched between the first and the last
measured output (the node's own counters, so exact). The node's per-stage breakdown (decode,
pre-processing, inference, post-processing, publishing, stats, and "node work" = everything but
inference) is read from its last ``/diagnostics`` report of the window (medians of its last 30
frames).

``--contention K`` starts K busy processes (one spinning Python interpreter each) beside the
node for the whole run, the situation on a robot whose other nodes keep the cores busy;
``--threads`` sets the node's ``threads`` parameter (default: the node's default, auto).
``--outputs`` subscribes to more outputs (the node encodes and publishes only subscribed ones).
Randomly initialised weights by default: cost does not depend on the weights. The bundled Fast
DDS large-image profile is used (unless FASTDDS_DEFAULT_PROFILES_FILE is set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ivf_perception.cli._common import parse_size, user_errors

__all__ = ["build_parser", "main", "run_node_benchmark", "format_table"]

PROG = "ivf-perception bench-node"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(480, 640), help="HxW of the published frames (default 480x640)")
    p.add_argument("--fps", type=float, default=30.0, help="camera rate (default 30)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured duration (default 10 s)")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="published before measuring (default 3 s)")
    p.add_argument("--variant", default="s4fusion")
    p.add_argument("--preset", default="small")
    p.add_argument("--weights", default="none", help="'none' (random init, default), 'default' or a file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=None,
                   help="the node's threads parameter (default: the node's own default, 0 = auto)")
    p.add_argument("--contention", type=int, default=0, metavar="K",
                   help="busy processes running beside the node during the whole run (default 0)")
    p.add_argument("--outputs", default="fused,stats",
                   help="outputs to subscribe to, comma-separated from fused, labels, overlay, stats "
                        "(default fused,stats; fused and stats are always measured)")
    p.add_argument("--domain-id", type=int, default=None,
                   help="ROS domain of the benchmark (default: one derived from the process id, 1..100)")
    p.add_argument("--json", help="also write the results to this file")
    return p


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _node_process(args: argparse.Namespace, env: dict[str, str], log: Any) -> subprocess.Popen:
    h, w = args.size
    ros = ["-p", f"variant:={args.variant}", "-p", f"preset:={args.preset}", "-p", f"weights:={args.weights}",
           "-p", f"device:={args.device}", "-p", f"precision:={args.precision}", "-p", f"warmup_size:=[{h}, {w}]",
           "-r", "__node:=ivf_bench_fusion_node"]
    if args.threads is not None:
        ros += ["-p", f"threads:={args.threads}"]
    return subprocess.Popen([sys.executable, "-m", "ivf_perception.nodes.fusion_node", "--ros-args", *ros],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def run_node_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run one benchmark (see the module docstring) and return its figures."""
    from ivf_perception.nodes.dds import apply_large_images_profile

    profile = apply_large_images_profile()
    domain = args.domain_id if args.domain_id is not None else 1 + os.getpid() % 100
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain)}
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from ivf_perception.io import make_header, numpy_to_image
    from ivf_perception.io.stats_msg import rclpy_fusion_stats_type
    from ivf_perception.scenes import SceneConfig, generate_scene

    h, w = args.size
    scenes = [generate_scene(i, SceneConfig(height=h, width=w, seed=7)) for i in range(8)]
    # The node writes its log here; read back for error messages once it has stopped.
    with tempfile.TemporaryFile(mode="w+") as log, _busy_processes(args.contention):
        node_proc = _node_process(args, env, log)
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        node = rclpy.create_node("ivf_bench_camera", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        received: dict[int, int] = {}  # rgb stamp -> receive time (ns)
        stats: dict[int, Any] = {}
        lock = threading.Lock()

        def on_fused(msg: Image) -> None:
            now = time.time_ns()
            with lock:
                received[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = now

        def on_stats(msg: Any) -> None:
            with lock:
                stats[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = msg

        measuring = threading.Event()
        stage_reports: list[dict[str, float]] = []

        def on_diagnostics(msg: Any) -> None:
            for status in msg.status:
                if "ivf_bench_fusion_node" in status.name and measuring.is_set():
                    stages = _stage_medians(status.values)
                    if stages:
                        with lock:
                            stage_reports.append(stages)

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        fused_sub = node.create_subscription(Image, "fused/image", on_fused, reliable)
        stats_sub = node.create_subscription(rclpy_fusion_stats_type(), "fusion/stats", on_stats, reliable)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        extra = {"labels": "segmentation/labels", "overlay": "segmentation/overlay"}
        for name in _outputs(args.outputs):
            if name in extra:
                node.create_subscription(Image, extra[name], lambda msg: None, reliable)
        pubs = {s: node.create_publisher(Image, f"{s}/image", qos_profile_sensor_data) for s in ("rgb", "thermal")}
        spinner.start()
        try:
            deadline = time.monotonic() + 300
            while not (all(p.get_subscription_count() for p in pubs.values())
                       and fused_sub.get_publisher_count() and stats_sub.get_publisher_count()):
                if node_proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the fusion node did not come up:\n{log.read()}")
                time.sleep(0.1)

            period = 1.0 / args.fps
            sent: list[int] = []

            def publish_for(seconds: float, record: bool) -> None:
                start, i = time.monotonic(), 0
                while True:
                    target = start + i * period
                    if target - start >= seconds:
                        return
                    time.sleep(max(0.0, target - time.monotonic()))
                    scene = scenes[i % len(scenes)]
                    stamp = node.get_clock().now().nanoseconds
                    pubs["rgb"].publish(numpy_to_image(scene.rgb, "rgb8", header=make_header(stamp, "camera_rgb")))
                    thermal_header = make_header(stamp, "camera_thermal")
                    pubs["thermal"].publish(numpy_to_image(scene.thermal, "mono8", header=thermal_header))
                    if record:
                        sent.append(stamp)
                    i += 1

            publish_for(args.warmup_seconds, record=False)
            t0 = time.monotonic()
            measuring.set()
            publish_for(args.seconds, record=True)
            measured_s = time.monotonic() - t0
            time.sleep(2.0)  # let the last outputs (and a diagnostics report) arrive
        finally:
            executor.shutdown()
            node.destroy_node()
            context.try_shutdown()
            node_proc.send_signal(signal.SIGINT)
            try:
                node_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node_proc.kill()
            log.seek(0)
            node_log = log.read()

    with lock:
        window = [s for s in sent if s in received and s in stats]
    if not window:
        raise RuntimeError(f"no frame was fused during the measurement; node log:\n{node_log}")
    with lock:
        stages = stage_reports[-1] if stage_reports else {}
    e2e = [(received[s] - s) / 1e6 for s in window]
    engine = [stats[s].preprocess_ms + stats[s].inference_ms + stats[s].postprocess_ms for s in window]
    in_node = [stats[s].end_to_end_ms for s in window]
    overhead = [a - b for a, b in zip(e2e, engine)]
    first, last = stats[window[0]], stats[window[-1]]

    def delta(field: str) -> int:
        """A node counter between the first and the last measured output (exact for that span)."""
        return int(getattr(last, field) - getattr(first, field))

    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "gpu": _gpu_name(args.device)},
        "config": {"size": f"{h}x{w}", "fps": args.fps, "variant": args.variant, "preset": args.preset,
                   "weights": args.weights, "device": args.device, "precision": args.precision,
                   "dds_profile": profile, "seconds": measured_s,
                   "threads": "auto" if args.threads in (None, 0) else args.threads,
                   "contention": args.contention, "outputs": sorted(_outputs(args.outputs)),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                   "load_average": [round(v, 2) for v in os.getloadavg()]},
        "frames_sent": len(sent),
        "frames_fused": len(window),
        "output_rate_hz": len(window) / measured_s if measured_s > 0 else 0.0,
        "end_to_end_ms": _spread(e2e),
        "engine_ms": _spread(engine),
        "overhead_ms": _spread(overhead),
        "in_node_ms": _spread(in_node),
        "node_stages_ms": stages,
        "counters": {"received_rgb": delta("received_rgb"), "paired": delta("paired"), "processed": delta("processed"),
                     "dropped_stale": delta("dropped_stale"), "unmatched_rgb": delta("unmatched_rgb"),
                     "failed": delta("failed")},
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    """Median, 90th percentile and their ratio (how much worse a bad frame is than a usual one)."""
    p50, p90 = _percentile(values, 50), _percentile(values, 90)
    return {"median": p50, "p90": p90, "p90_over_p50": p90 / p50 if p50 and p90 is not None else None}


def _outputs(text: str) -> set[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - {"fused", "labels", "overlay", "stats"}
    if unknown:
        raise ValueError(f"--outputs: unknown output(s) {', '.join(sorted(unknown))}; "
                         "choose from fused, labels, overlay, stats")
    return names | {"fused", "stats"}


def _stage_medians(values: Sequence[Any]) -> dict[str, float]:
    """``median <stage> (ms)`` entries of a diagnostics status, by stage."""
    stages = {}
    for kv in values:
        if kv.key.startswith("median ") and kv.key.endswith(" (ms)"):
            try:
                stages[kv.key[len("median "):-len(" (ms)")]] = float(kv.value)
            except ValueError:
                continue
    return stages


@contextlib.contextmanager
def _busy_processes(count: int) -> Iterator[None]:
    """``count`` processes spinning on a core each until the block ends (always stopped, then reaped)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda") and device != "auto":
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ratio(spread: dict[str, Any]) -> str:
    return "n/a" if spread.get("p90_over_p50") is None else f"{spread['p90_over_p50']:.2f}"


def format_table(r: dict[str, Any]) -> str:
    """Markdown tables of one benchmark run (for the README): latency, then the node's stages."""
    c, m, k = r["config"], r["machine"], r["counters"]
    load = ", ".join(f"{v:g}" for v in c.get("load_average", []))
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; DDS profile: "
        f"{Path(c['dds_profile']).name if c['dds_profile'] else 'Fast DDS defaults'}; threads "
        f"{c.get('threads', 'auto')}, {c.get('contention', 0)} busy process(es) beside the node, "
        f"OMP_WAIT_POLICY {c.get('omp_wait_policy', 'default')} (the node sets PASSIVE unless set), "
        f"load average at the end {load or 'n/a'}",
        "",
        "| model | device | input | end-to-end ms (median / p90) | p90/p50 | engine ms | engine p90/p50 "
        "| node overhead ms | stamp->published in node ms | output rate Hz "
        "| paired / fused / dropped stale / unmatched |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {c['variant']} {c['preset']} ({c['weights']}) | {c['device']} {c['precision']} "
        f"| {c['size']} @ {c['fps']:g} Hz "
        f"| {_fmt(r['end_to_end_ms']['median'])} / {_fmt(r['end_to_end_ms']['p90'])} "
        f"| {_ratio(r['end_to_end_ms'])} "
        f"| {_fmt(r['engine_ms']['median'])} / {_fmt(r['engine_ms']['p90'])} | {_ratio(r['engine_ms'])} "
        f"| {_fmt(r['overhead_ms']['median'])} / {_fmt(r['overhead_ms']['p90'])} "
        f"| {_fmt(r['in_node_ms']['median'])} / {_fmt(r['in_node_ms']['p90'])} "
        f"| {r['output_rate_hz']:.2f} "
        f"| {k['paired']} / {k['processed']} / {k['dropped_stale']} / {k['unmatched_rgb']} |",
    ]
    stages = r.get("node_stages_ms") or {}
    if stages:
        names = list(stages)
        lines += ["", f"Node stages, median ms over its last 30 frames (outputs subscribed: "
                      f"{', '.join(c.get('outputs', []))}):", "",
                  "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
                  "| " + " | ".join(f"{stages[n]:.2f}" for n in names) + " |"]
    return "\n".join(lines)


@user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fps <= 0 or args.seconds <= 0 or args.warmup_seconds < 0:
        raise ValueError("--fps and --seconds must be > 0 and --warmup-seconds >= 0")
    if args.contention < 0 or (args.threads is not None and args.threads < 0):
        raise ValueError("--contention must be >= 0 and --threads >= 0 (0 = auto)")
    _outputs(args.outputs)
    result = run_node_benchmark(args)
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
