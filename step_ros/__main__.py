"""`python -m step_ros <command> [...]`: one module per command, imported only when used."""

from __future__ import annotations

import importlib
import sys

# command -> (module with `main(argv) -> int`, one-line summary)
COMMANDS = {
    'synth': ('step_ros.tools.synth', 'write the procedural nearly-symmetric action dataset'),
    'extract': ('step_ros.tools.extract', 'cache frozen-backbone tokens of a clip list'),
    'train': ('step_ros.tools.train', 'train one or more heads on a feature cache'),
    'eval': ('step_ros.tools.evaluate', 'accuracy (symmetric / non-symmetric / reversed) report'),
    'report': ('step_ros.tools.report', 'compare all head kinds on one cache (paper tables)'),
    'flow': ('step_ros.tools.flow',
             'the documented flow (extract, train, bag-eval) on synthetic recordings, scored'),
    'bag-eval': ('step_ros.tools.bag_eval', 'run the streaming engine over a rosbag and score it'),
    'bag-export': ('step_ros.tools.bag_export', "a bag's images as a video on bag time, to label"),
    'replay': ('step_ros.ros.replay', "publish a bag's images with rclpy (with /clock)"),
    'bench': ('step_ros.tools.bench', 'performance harness: streaming vs naive, latency, memory'),
    'bench-dist': ('step_ros.tools.bench_dist', 'extraction throughput, 1 rank vs N ranks'),
    'bench-ros': ('step_ros.ros.bench_client',
                  'end-to-end ROS bench (e2e / flood / multicam) of a node'),
    'demo': ('step_ros.ros.demo', 'run the node on a built-in synthetic camera and print actions'),
}
# Commands that run rclpy and the step_ros_msgs messages of the built workspace.
ROS_COMMANDS = ('replay', 'bench-ros', 'demo')
# Commands that train heads: their whole process flushes subnormal floats to zero (see
# flush_denormals_process_wide).
TRAINING_COMMANDS = ('train', 'report', 'flow')
SOURCE_HINT = ('source install/setup.bash first (or run it through scripts/run: '
               '`scripts/run python -m step_ros {name} ...`; the demo: `make demo`)')


def ros_missing() -> str | None:
    """Why rclpy or the step_ros_msgs messages cannot be imported; None when they can."""
    try:
        import rclpy  # noqa: F401
        from step_ros_msgs.msg import HumanAction  # noqa: F401
    except Exception as exc:  # ImportError, or a shared library rclpy cannot load
        return f'{type(exc).__name__}: {exc}'.splitlines()[0]
    return None


def flush_denormals_process_wide() -> None:
    """Flush subnormal floats to zero in this thread before torch starts its worker threads.

    New threads inherit the floating-point environment of the thread that creates them, and
    torch's intra-op pool is created by the first parallel operation and then kept: set later
    (as training does for its own call), the flag misses the workers, and a head whose optimiser
    state falls into the subnormal range trains up to ten times slower (seen in `flow`, where
    extraction runs first in the same process).
    """
    import torch

    torch.set_flush_denormal(True)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ['usage: python -m step_ros <command> [--help] [...]', '', 'commands:']
    lines += [f'  {name:<{width}}  {summary}' for name, (_, summary) in COMMANDS.items()]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f'step_ros: unknown command {name!r}\n\n{usage()}', file=sys.stderr)
        return 2
    if name in ROS_COMMANDS:
        missing = ros_missing()
        if missing is not None:
            print(f'step_ros {name}: needs ROS 2 ({missing}): '
                  + SOURCE_HINT.format(name=name), file=sys.stderr)
            return 2
    if name in TRAINING_COMMANDS:
        flush_denormals_process_wide()
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f'python -m step_ros {name}')


if __name__ == '__main__':
    sys.exit(main())
