"""Data: clip lists and feature caches, rosbag reading, recordings as training windows,
timelines and the synthetic generators. Built on step_ros.model and step_ros.stream."""
