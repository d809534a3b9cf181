"""ROS 2 nodes: the live fusion node and the bag player.

``fusion_node`` and ``bag_player`` import rclpy; ``parameters`` and ``health`` hold the node's
pure helpers (parameter table and validation, QoS, diagnostics assembly) so they can be tested
without a running ROS graph.
"""
