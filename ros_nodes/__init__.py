"""ROS 2 side of vit_policy: the policy node over a transport (rclpy on a robot, CycloneDDS without ROS)."""
