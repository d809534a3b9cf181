"""ivf_perception: thermal/RGB fusion and segmentation for ROS 2, bag replay and training."""

__version__ = "0.1.0"
