"""CPU thread control: the ``threads`` setting, its automatic default, and passive OpenMP waiting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch

from ivf_perception.engine import Engine
from ivf_perception.engine import threads as th
from ivf_perception.engine.config import ParameterValueError, PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_thread_pools() -> Iterator[None]:
    """The settings are per process: leave them as the rest of the suite expects."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


@pytest.mark.parametrize(("cores", "reserve", "expected"),
                         [(1, 1, 1), (2, 1, 1), (3, 1, 2), (5, 1, 4), (16, 1, 4), (2, 0, 2), (8, 6, 2), (4, 9, 1)])
def test_auto_leaves_cores_to_others_and_stays_in_one_to_four(
        monkeypatch: pytest.MonkeyPatch, cores: int, reserve: int, expected: int) -> None:
    monkeypatch.setattr(th, "usable_cores", lambda: cores)
    assert th.auto_threads(reserve) == expected
    assert th.resolve_threads(0, reserve) == expected
    assert th.resolve_threads(7, reserve) == 7  # an explicit count is taken as given


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_invalid_thread_counts_are_refused(bad: object) -> None:
    with pytest.raises(ParameterValueError, match="threads must be 0 \\(auto\\) or a positive integer"):
        th.resolve_threads(bad)  # type: ignore[arg-type]


def _fake_topology(root: Path, cores_of_cpus: dict[int, int]) -> None:
    for cpu, core in cores_of_cpus.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")


def test_usable_cores_counts_smt_siblings_once_and_applies_the_cgroup_quota(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_topology(tmp_path / "cpu", {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2})  # 3 cores, 2 threads each
    monkeypatch.setattr(th, "_SYS_CPU", tmp_path / "cpu")
    monkeypatch.setattr(th, "_allowed_cpus", lambda: {0, 1, 2, 3, 4, 5})
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(th, "_CGROUP_CPU_MAX", quota)
    assert th.usable_cores() == 3  # no cgroup file: topology only
    quota.write_text("max 100000\n")
    assert th.usable_cores() == 3
    quota.write_text("150000 100000\n")  # docker --cpus 1.5
    assert th.usable_cores() == 2
    monkeypatch.setattr(th, "_allowed_cpus", lambda: {0, 1})  # taskset to one core's two siblings
    assert th.usable_cores() == 1


def test_unreadable_topology_counts_each_allowed_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(th, "_SYS_CPU", tmp_path / "absent")
    monkeypatch.setattr(th, "_CGROUP_CPU_MAX", tmp_path / "absent.max")
    monkeypatch.setattr(th, "_allowed_cpus", lambda: {0, 1, 2})
    assert th.usable_cores() == 3


def test_apply_threads_sets_torch_and_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    assert th.apply_threads(2) == 2
    assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 2
    monkeypatch.setattr(th, "usable_cores", lambda: 4)
    assert th.apply_threads(0) == 3
    assert torch.get_num_threads() == 3 and cv2.getNumThreads() == 3


def test_threads_is_a_validated_pipeline_setting() -> None:
    assert PipelineConfig.from_values({}).threads == 0
    assert PipelineConfig.from_values({"threads": 3}).threads == 3
    with pytest.raises(ParameterValueError, match="threads must be in"):
        PipelineConfig.from_values({"threads": -1})
    with pytest.raises(ParameterValueError, match="threads must be a finite integer"):
        PipelineConfig.from_values({"threads": 1.5})


def test_engine_from_config_applies_the_threads_setting() -> None:
    config = PipelineConfig.from_values({"variant": "test_s4fusion", "weights": "none", "device": "cpu",
                                         "threads": 2})
    Engine.from_config(config)
    assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 2


def test_cli_threads_option_overrides_the_params_file_value() -> None:
    from ivf_perception.cli._common import engine_options
    from ivf_perception.cli.fuse import build_parser

    args = build_parser().parse_args(["--ir", "a", "--vi", "b", "--out", "c", "--threads", "3"])
    assert engine_options(args)["threads"] == 3
    args = build_parser().parse_args(["--ir", "a", "--vi", "b", "--out", "c"])
    assert "threads" not in engine_options(args)  # the params file's value (or auto) stays


def _wait_policy_after(code: str, **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; it prints what it found, one item per line."""
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": str(REPO_ROOT), **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return out.split()


def test_passive_waiting_is_set_before_torch_only_when_the_user_did_not_choose() -> None:
    code = ("import os, sys; from ivf_perception.openmp import prefer_passive_waiting; "
            "print(prefer_passive_waiting(), os.environ['OMP_WAIT_POLICY'])")
    assert _wait_policy_after(code) == ["True", "PASSIVE"]
    assert _wait_policy_after(code, OMP_WAIT_POLICY="ACTIVE") == ["False", "ACTIVE"]
    late = ("import os, torch; from ivf_perception.openmp import prefer_passive_waiting; "
            "print(prefer_passive_waiting(), os.environ['OMP_WAIT_POLICY'])")
    assert _wait_policy_after(late) == ["False", "PASSIVE"]  # set for children, too late for this process


def test_the_node_package_and_the_cli_entry_choose_passive_waiting() -> None:
    node = "import os, sys; import ivf_perception.nodes; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    assert _wait_policy_after(node) == ["PASSIVE", "False"]
    cli = ("import contextlib, io, os\n"
           "from ivf_perception.cli.main import main\n"
           "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
           "    main(['generate', '-h'])\n"
           "print(os.environ['OMP_WAIT_POLICY'])")
    assert _wait_policy_after(cli) == ["PASSIVE"]
    assert _wait_policy_after(cli, OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE"]
