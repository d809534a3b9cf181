"""The package builds as a ROS 2 ament_python package and exposes its console entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "resource", "ivf_perception", "launch", "config")


def test_package_xml_is_format_3_ament_python() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "ivf_perception"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "diagnostic_msgs"} <= deps


@pytest.mark.slow
def test_colcon_build_installs_the_entry_point_and_share_files(tmp_path: Path) -> None:
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (it is in requirements/dev.txt)")
    src = tmp_path / "src" / "ivf_perception"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif item.exists():
            shutil.copy2(item, src / name)
    env = {**os.environ, "AMENT_PREFIX_PATH": os.environ.get("AMENT_PREFIX_PATH", sys.prefix)}
    proc = subprocess.run([str(colcon), "build", "--paths", str(src)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    install = tmp_path / "install" / "ivf_perception"
    assert (install / "lib" / "ivf_perception" / "ivf-perception").is_file()
    assert (install / "share" / "ivf_perception" / "package.xml").is_file()
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "ivf_perception").is_file()


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
