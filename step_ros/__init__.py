"""step_ros: STEP action recognition over a frozen vision foundation model, for ROS 2 robots."""

__version__ = '0.1.0'
