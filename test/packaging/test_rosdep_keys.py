"""Every dependency key in the repository's package.xml files exists in rosdistro.

Why: ``rosdep install --from-paths src --ignore-src -y`` stops at the first key it cannot
resolve, so one invented key (``python3-pywt``, ``python3-safetensors-pip`` were) makes the whole
package uninstallable the ROS way. rosdep cannot be queried here (no network), so the keys
rosdistro knows are kept below; a key added to a package.xml must be looked up in rosdistro
and added here with it.

Where the lists come from: github.com/ros/rosdistro at commit 8468e88 (2026-08-22), read on
2026-12-04. ROS_PACKAGES: packages released in each of humble, jazzy, kilted and rolling
(``<distro>/distribution.yaml``); SYSTEM_KEYS: keys of ``rosdep/python.yaml`` with an Ubuntu
and a Debian rule that installs an apt package (not pip).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_XMLS = (REPO / "package.xml", REPO / "ivf_perception_msgs" / "package.xml")
DEPEND_TAGS = ("depend", "build_depend", "build_export_depend", "buildtool_depend", "buildtool_export_depend",
               "exec_depend", "test_depend", "doc_depend")

ROS_PACKAGES = frozenset({
    "ament_cmake", "builtin_interfaces", "diagnostic_msgs", "launch", "launch_ros", "lifecycle_msgs",
    "rcl_interfaces", "rclpy", "rosgraph_msgs", "rosidl_default_generators", "rosidl_default_runtime",
    "sensor_msgs", "std_msgs",
})
SYSTEM_KEYS = frozenset({
    "python3-numpy", "python3-opencv", "python3-pytest", "python3-torch", "python3-tqdm", "python3-yaml",
})


def _package_name(path: Path) -> str:
    return ET.parse(path).getroot().findtext("name") or ""


def _keys(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [element.text or "" for tag in DEPEND_TAGS for element in root.findall(tag)]


def test_the_repository_holds_both_packages() -> None:
    assert [_package_name(p) for p in PACKAGE_XMLS] == ["ivf_perception", "ivf_perception_msgs"]


@pytest.mark.parametrize("package_xml", PACKAGE_XMLS, ids=lambda p: p.parent.name or "root")
def test_package_xml_is_valid_format_3(package_xml: Path) -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(package_xml)  # validates: raises InvalidPackage on schema errors
    assert package.package_format == 3


@pytest.mark.parametrize("package_xml", PACKAGE_XMLS, ids=lambda p: p.parent.name or "root")
def test_every_key_is_known_to_rosdistro(package_xml: Path) -> None:
    ours = {_package_name(p) for p in PACKAGE_XMLS}
    unknown = sorted(k for k in _keys(package_xml) if k not in ours | ROS_PACKAGES | SYSTEM_KEYS)
    assert not unknown, (f"{package_xml.relative_to(REPO)}: keys not in rosdistro: {unknown}; pip-only "
                         "dependencies belong in the README's install step")


def test_no_pip_keys() -> None:
    # rosdep's *-pip keys run a system-wide pip install, which PEP 668 systems (Ubuntu 24.04) refuse.
    pip_keys = sorted(k for p in PACKAGE_XMLS for k in _keys(p) if k.endswith("-pip"))
    assert not pip_keys
