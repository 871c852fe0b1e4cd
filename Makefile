# Every target prepares its own environment through scripts/bootstrap.sh (fast when up to date).
SHELL := /bin/bash
.DEFAULT_GOAL := test

# Keep ROS traffic of tests on this machine, in a domain of its own.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
ifndef ROS_DOMAIN_ID
export ROS_DOMAIN_ID := $(shell echo $$(( RANDOM % 100 + 1 )))
endif

.PHONY: bootstrap build ros2-tools test demo demo-real lint clean distclean

bootstrap:
	scripts/bootstrap.sh

build: bootstrap

# The real ROS 2 launch/launch_testing/ros2cli of ../shared/ros2-tools where it exists (PyPI has
# none): the launch and ros2 CLI tests use them, and skip with a reason where they are absent.
ros2-tools: bootstrap
	scripts/ros2_tools.sh

# pytest exits 5 when it collected no tests: report it, and fail.
test: ros2-tools
	@rc=0; scripts/run python -m pytest test -q -rs || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'step_ros: ERROR: pytest collected no tests' >&2; fi; \
	exit $$rc

demo: bootstrap
	scripts/run python -m step_ros demo

# The same demo on real features: EfficientNet-Lite0 (ImageNet weights) and its own head.
demo-real: bootstrap
	scripts/run python -m step_ros demo --params-file config/demo_efficientnet.yaml

lint: bootstrap
	scripts/run ruff check .

clean:
	rm -rf build install log

distclean: clean
	rm -rf .venv
