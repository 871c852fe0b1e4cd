"""The stream: image decoding, the streaming engine (sampler, feature ring, heads), calibration,
the decision stage and the node's configuration. Built on step_ros.model."""
