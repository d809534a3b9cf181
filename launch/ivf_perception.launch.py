"""Launch the ivf_perception fusion node, optionally with RViz.

    ros2 launch ivf_perception ivf_perception.launch.py \
        rgb_topic:=/camera/color/image_raw thermal_topic:=/boson/image_raw use_rviz:=true

Arguments: variant, weights (each overrides the parameter file only when given),
params_file (default: the installed config/fusion_node.yaml),
namespace, rgb_topic, thermal_topic, rgb_info_topic, thermal_info_topic, use_rviz, and
dds_profile (default: $FASTDDS_DEFAULT_PROFILES_FILE if set, else the bundled large-image
profile; applied to the node and RViz; pass dds_profile:='' for Fast DDS defaults).
The node configures and activates itself (``autostart``); set ``autostart: false`` in the
parameter file to drive it from a lifecycle manager instead.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from ivf_perception.nodes.launch_overrides import OVERRIDABLE, user_overrides
from launch import LaunchContext, LaunchDescription

PACKAGE = "ivf_perception"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arg = LaunchConfiguration
    arguments = [
        DeclareLaunchArgument("variant", default_value="",
                              description="model family (auto = the weights' variant); unset = the params_file's"),
        DeclareLaunchArgument("weights", default_value="",
                              description="engine weights .safetensors (default = bundled, none = random init); "
                                          "unset = the params_file's"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "fusion_node.yaml"]),
                              description="parameter YAML of the fusion node"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node (and RViz)"),
        DeclareLaunchArgument("rgb_topic", default_value="/camera/rgb/image", description="RGB sensor_msgs/Image"),
        DeclareLaunchArgument("thermal_topic", default_value="/camera/thermal/image",
                              description="thermal sensor_msgs/Image (mono8, mono16/16UC1 raw, false colour)"),
        DeclareLaunchArgument("rgb_info_topic", default_value="/camera/rgb/camera_info",
                              description="RGB sensor_msgs/CameraInfo (optional)"),
        DeclareLaunchArgument("thermal_info_topic", default_value="/camera/thermal/camera_info",
                              description="thermal sensor_msgs/CameraInfo (optional)"),
        DeclareLaunchArgument("use_rviz", default_value="false",
                              description="start RViz with rviz/ivf_perception.rviz"),
        DeclareLaunchArgument("dds_profile",
                              default_value=EnvironmentVariable(
                                  "FASTDDS_DEFAULT_PROFILES_FILE",
                                  default_value=PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])),
                              description="Fast DDS profile for the node and RViz ('' = Fast DDS defaults)"),
    ]

    def fusion_node(context: LaunchContext) -> list[LifecycleNode]:
        # only the arguments the user gave override the parameter file (empty = not given)
        overrides = user_overrides({name: arg(name).perform(context) for name in OVERRIDABLE})
        return [LifecycleNode(
            package=PACKAGE,
            executable="fusion_node",
            name="fusion_node",
            namespace=arg("namespace"),
            parameters=[arg("params_file"), *([overrides] if overrides else [])],
            remappings=[
                ("rgb/image", arg("rgb_topic")),
                ("thermal/image", arg("thermal_topic")),
                ("rgb/camera_info", arg("rgb_info_topic")),
                ("thermal/camera_info", arg("thermal_info_topic")),
            ],
            output="screen",
        )]

    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="ivf_perception_rviz",
        namespace=arg("namespace"),
        arguments=["-d", PathJoinSubstitution([share, "rviz", "ivf_perception.rviz"])],
        condition=IfCondition(arg("use_rviz")),
        output="screen",
    )
    return LaunchDescription([
        *arguments,
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", arg("dds_profile")),
        OpaqueFunction(function=fusion_node),
        rviz,
    ])
