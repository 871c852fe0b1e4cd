"""Fixtures of the tests that talk to ROS child processes from this process (see node_helpers)."""

import logging

import pytest
from node_helpers import ros_client, ros_env

import step_ros.stream.runtime  # noqa: F401  (creates the 'step_ros.stream.runtime' logger before `launch` can)


@pytest.fixture(autouse=True)
def _step_ros_logs_reach_caplog():
    """Importing ROS 2 `launch` (the launch tests do, in this process) makes every logger created
    afterwards stop propagating to the root logger, where caplog listens."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith('step_ros') and isinstance(logger, logging.Logger):
            logger.propagate = True
    yield


@pytest.fixture(scope='module')
def env() -> dict[str, str]:
    """The environment of a test module's child processes: DDS on loopback, a random domain."""
    return ros_env()


@pytest.fixture(scope='module')
def client(request, env):
    """(node, executor): an rclpy context of this test process in the children's domain, its
    node named after the test module."""
    with ros_client(env, request.module.__name__) as client:
        yield client
