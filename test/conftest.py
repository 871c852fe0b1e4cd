"""Fixtures of the tests that talk to ROS child processes from this process (see node_helpers)."""

import pytest
from node_helpers import ros_client, ros_env


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
