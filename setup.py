"""ament_python package setup: the library, the node, launch/config files and the CLI."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ivf_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["weights/*.safetensors", "weights/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
        (f"share/{PACKAGE}/msg", glob("ivf_perception_msgs/msg/*.msg")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="ivf_perception maintainers",
    maintainer_email="ivf-perception@example.org",
    description="Thermal/RGB fusion and segmentation for ROS 2",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "ivf-perception = ivf_perception.cli.main:main",
            "fusion_node = ivf_perception.nodes.fusion_node:main",
        ],
    },
)
