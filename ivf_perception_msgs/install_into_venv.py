"""Build the ivf_perception_msgs interface package with the pip ROS wheels into a virtual env.

Run by ``make venv`` (CI). With a ROS install, build this package with colcon instead (README,
"Install in a ROS 2 workspace"); this script is only needed where ROS comes from the PyPI
``ros-*`` wheels (ENVIRONMENT.md):

1. The wheels' exported CMake files (``share/*/cmake/*__rosidl_generator_pyExport.cmake``) name
   the Python and numpy include folders of the machine the wheels were built on; they are
   rewritten to this interpreter's (``sysconfig`` include, ``numpy.get_include()``), or every
   interface package that depends on them fails to compile its Python bindings.
2. ``cmake`` configures, builds and installs this package with ``CMAKE_INSTALL_PREFIX`` = the venv, so the
   generated ``ivf_perception_msgs`` Python package lands in its site-packages and the type
   support libraries in its ``lib/``.
3. The import is checked in a fresh interpreter.

Usage: ``python ivf_perception_msgs/install_into_venv.py [--build-dir build/ivf_perception_msgs]`` with the venv's
python (the install prefix is ``sys.prefix``). Needs cmake >= 3.16 and a C/C++ compiler.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_INCLUDE_RE = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES\s+)"[^"]*"')


def fix_wheel_cmake_exports(prefix: Path) -> list[Path]:
    """Point the wheels' rosidl_generator_py CMake exports at this interpreter's include folders."""
    import numpy

    includes = f'"{sysconfig.get_paths()["include"]};{numpy.get_include()}"'
    changed = []
    for path in sorted(prefix.glob("share/*/cmake/*__rosidl_generator_pyExport.cmake")):
        text = path.read_text()
        fixed = _INCLUDE_RE.sub(lambda m: m.group(1) + includes, text)
        if fixed != text:
            path.write_text(fixed)
            changed.append(path)
    return changed


def build_and_install(prefix: Path, build_dir: Path) -> None:
    """Configure, build and install the package into ``prefix`` (raises CalledProcessError on failure)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise SystemExit("install_into_venv: cmake not found; install it (apt-get install cmake g++) and retry")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix),
           "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file() and str(PACKAGE_DIR) not in cache.read_text():
        shutil.rmtree(build_dir)  # a build folder configured from another checkout
    subprocess.run([cmake, "-S", str(PACKAGE_DIR), "-B", str(build_dir), f"-DCMAKE_INSTALL_PREFIX={prefix}",
                    f"-DCMAKE_PREFIX_PATH={prefix}", f"-DPython3_EXECUTABLE={sys.executable}",
                    "-DBUILD_TESTING=OFF", "-DCMAKE_BUILD_TYPE=Release"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run([cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 2)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run([cmake, "--install", str(build_dir)], check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=PACKAGE_DIR.parent / "build" / "ivf_perception_msgs")
    args = parser.parse_args()
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        raise SystemExit("install_into_venv: run it with a virtual environment's python (it installs into sys.prefix)")
    fixed = fix_wheel_cmake_exports(prefix)
    if fixed:
        print(f"install_into_venv: rewrote the include folders of {len(fixed)} wheel CMake export(s)")
    build_and_install(prefix, args.build_dir.resolve())
    check = subprocess.run([sys.executable, "-c", "from ivf_perception_msgs.msg import ClassInfo, FusionStats"],
                           capture_output=True, text=True, env={**os.environ, "AMENT_PREFIX_PATH": str(prefix)})
    if check.returncode != 0:
        raise SystemExit(f"install_into_venv: built, but the import fails:\n{check.stderr}")
    print(f"install_into_venv: ivf_perception_msgs installed into {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
