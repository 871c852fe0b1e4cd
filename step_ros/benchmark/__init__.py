"""The performance harness behind `python -m step_ros bench` (ROS-free: torch and numpy only)."""
