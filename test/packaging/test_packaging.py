"""Both ROS packages are found and built by colcon from a workspace; the CLI entry point works.

The workspace is laid out as the README's "Install in a ROS 2 workspace" says: the repository in
``src/ivf_perception`` and a link ``src/ivf_perception_msgs`` to its interface package (colcon and
rosdep stop descending at a folder holding a package.xml, so they never see a package nested in
the repository root's package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "resource", "ivf_perception", "launch", "config",
                 "ivf_perception_msgs")
COLCON = Path(sys.executable).parent / "colcon"


def _workspace(tmp_path: Path) -> Path:
    """A colcon workspace with the README's layout; returns its root."""
    src = tmp_path / "src" / "ivf_perception"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
        elif item.exists():
            shutil.copy2(item, src / name)
    (tmp_path / "src" / "ivf_perception_msgs").symlink_to(Path("ivf_perception") / "ivf_perception_msgs")
    return tmp_path


def _colcon(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    if not COLCON.exists():
        pytest.skip("colcon is not installed in this environment (it is in requirements/dev.txt)")
    prefix = os.environ.get("AMENT_PREFIX_PATH", sys.prefix)
    env = {**os.environ, "AMENT_PREFIX_PATH": prefix, "CMAKE_PREFIX_PATH": prefix,
           "PATH": f"{COLCON.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(COLCON), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_package_xml_is_format_3_ament_python() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "ivf_perception"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "diagnostic_msgs", "ivf_perception_msgs"} <= deps


def test_interface_package_is_ament_cmake_with_the_message() -> None:
    root = ET.parse(REPO / "ivf_perception_msgs" / "package.xml").getroot()
    assert root.findtext("name") == "ivf_perception_msgs"
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    assert (REPO / "ivf_perception_msgs" / "msg" / "FusionStats.msg").is_file()


def test_colcon_list_finds_both_packages(tmp_path: Path) -> None:
    proc = _colcon("list", cwd=_workspace(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = {tuple(line.split("\t")[::2]) for line in proc.stdout.splitlines()}
    assert found == {("ivf_perception", "(ros.ament_python)"), ("ivf_perception_msgs", "(ros.ament_cmake)")}


@pytest.mark.slow
def test_colcon_build_builds_both_packages(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path)
    proc = _colcon("build", "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
                   cwd=workspace, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Summary: 2 packages finished" in proc.stdout
    install = workspace / "install" / "ivf_perception"
    assert (install / "lib" / "ivf_perception" / "ivf-perception").is_file()
    assert (install / "share" / "ivf_perception" / "package.xml").is_file()
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "ivf_perception").is_file()
    # setup.py compiled the fused CPU selective scan (torch and g++ are there)
    assert list(install.glob("lib/python3*/site-packages/ivf_perception/models/ops/_cpu_scan*.so"))
    msgs = workspace / "install" / "ivf_perception_msgs"
    assert (msgs / "share" / "ament_index" / "resource_index" / "rosidl_interfaces" / "ivf_perception_msgs").is_file()
    # The generated Python bindings of the workspace build import and construct the message.
    site = next((msgs / "lib").glob("python3*/site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "LD_LIBRARY_PATH": f"{msgs / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}"}
    code = ("import ivf_perception_msgs.msg as m; print(m.__file__); "
            "print(m.FusionStats(variant='x').variant)")
    check = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    module_file, variant = check.stdout.split()
    assert Path(module_file).is_relative_to(site) and variant == "x"


def test_console_entry_point_lists_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "ivf_perception.cli.main", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("demo", "fuse", "eval-fusion", "bench", "generate"):
        assert command in proc.stdout


def test_unknown_command_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "ivf_perception.cli.main", "frobnicate"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


def test_every_message_is_generated_and_rebuilds_the_venv() -> None:
    """A .msg missing from CMakeLists is never generated; one missing from the Makefile's stamp
    prerequisites leaves an existing venv with the old interface package."""
    msgs = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "ivf_perception_msgs" / "msg").glob("*.msg"))
    assert "ivf_perception_msgs/msg/ClassInfo.msg" in msgs
    cmake, makefile = (REPO / "ivf_perception_msgs" / "CMakeLists.txt").read_text(), (REPO / "Makefile").read_text()
    for msg in msgs:
        assert f'"{msg.removeprefix("ivf_perception_msgs/")}"' in cmake, msg
        assert msg in makefile, msg
