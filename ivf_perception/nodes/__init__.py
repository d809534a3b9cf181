"""ROS 2 nodes: the live fusion node and the bag player.

``fusion_node`` and ``bag_player`` import rclpy; ``parameters`` and ``health`` hold the node's
pure helpers (parameter table and validation, QoS, diagnostics assembly) so they can be tested
without a running ROS graph.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before ``fusion_node``
imports torch: the node shares its robot's cores with other processes (:mod:`ivf_perception.openmp`).
"""

from ivf_perception.openmp import prefer_passive_waiting

prefer_passive_waiting()
