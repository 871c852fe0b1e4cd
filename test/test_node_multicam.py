"""Several cameras in one node (`cameras:=[front,wrist]` through perception.launch.py): each
camera its own topics, window, decisions and /diagnostics status, one batched backbone pass, and
a silent camera that holds nobody up."""

import numpy as np
import pytest
from ros2_cli import Background, require_ros2_tools

require_ros2_tools()
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from node_helpers import ros_client, ros_env, spin_until, tiny_params  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from step_ros_msgs.msg import HumanAction  # noqa: E402

from step_ros.ros.conversions import ns_to_time, rgb_to_image  # noqa: E402
from step_ros.ros.perception_node import IMAGE_QOS, RESULT_QOS  # noqa: E402

T = 4
WINDOW_S = 2.0  # the heads of tiny_params are made for 2 s windows
PERIOD_NS = int(WINDOW_S * 1e9) // T  # every frame is due
START_TIMEOUT = 240
CAMERAS = ('front', 'wrist')
NODE = 'perception_node: action recognition'


class Cell:
    """The test's side: a publisher per camera, the HumanActions and diagnostics received."""

    def __init__(self, node, executor) -> None:
        self.executor = executor
        self.publishers = {c: node.create_publisher(Image, f'/mc/{c}/image',
                                                    IMAGE_QOS['reliable']) for c in CAMERAS}
        self.actions: dict[str, list[HumanAction]] = {c: [] for c in CAMERAS}
        for camera in CAMERAS:
            node.create_subscription(HumanAction, f'/mc/{camera}/human_action',
                                     self.actions[camera].append, RESULT_QOS)
        self.status: dict[str, DiagnosticStatus] = {}
        self.history: dict[str, list[DiagnosticStatus]] = {}
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.frames = 0
        self.sent = {c: 0 for c in CAMERAS}  # frames published per camera

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.status[status.name] = status
            self.history.setdefault(status.name, []).append(status)

    def value(self, camera: str, key: str) -> str:
        return {kv.key: kv.value for kv in self.status[f'{NODE} ({camera})'].values}[key]

    def connected(self) -> bool:
        return spin_until(self.executor, lambda: all(
            p.get_subscription_count() > 0 for p in self.publishers.values()), timeout=60)

    def publish(self, cameras: tuple[str, ...], *, stagger: float = 0.0,
                answered: bool = False) -> None:
        """One frame on each of `cameras`, all with the same stamp, `stagger` s apart (in wall
        time), then spin 0.15 s; with `answered`, spin instead until the node has answered each
        of them (one HumanAction per frame, warming up included): no frame then arrives while
        the last one still waits in the node's one-frame slot, however slowly a busy machine
        runs the backbone."""
        stamp = ns_to_time(5_000_000_000_000 + self.frames * PERIOD_NS)
        pixels = np.random.default_rng(self.frames).integers(0, 256, (48, 64, 3), np.uint8)
        for i, camera in enumerate(cameras):
            if i:
                self.spin(stagger)
            header = Header(stamp=stamp, frame_id=f'{camera}_optical')
            self.publishers[camera].publish(rgb_to_image(pixels, header=header))
            self.sent[camera] += 1
        self.frames += 1
        if not answered:
            self.spin(0.15)
            return
        assert spin_until(self.executor, lambda: all(
            len(self.actions[c]) >= self.sent[c] for c in cameras), timeout=60), \
            ({c: len(a) for c, a in self.actions.items()}, self.sent)

    def spin(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, timeout=seconds)

    def results(self, camera: str) -> list[HumanAction]:
        return [a for a in self.actions[camera] if a.state != HumanAction.STATE_WARMING_UP]


def test_two_cameras_one_node(tmp_path):
    env = ros_env()
    params = tiny_params(tmp_path, num_frames=T, window_seconds=WINDOW_S, image_qos='reliable',
                         batch_timeout_ms=1000.0)
    launch = Background(['ros2', 'launch', 'step_ros', 'perception.launch.py',
                         f'params_file:={params}', 'cameras:=[front,wrist]', 'namespace:=mc'],
                        env=env, log=tmp_path / 'launch.log')
    try:
        assert launch.wait_for('ready: input /mc/front/image, /mc/wrist/image (reliable) -> '
                               "['/mc/front/human_action', '/mc/wrist/human_action']",
                               timeout=START_TIMEOUT), launch.output()
        with ros_client(env, 'multicam_client') as (node, executor):
            cell = Cell(node, executor)
            assert cell.connected(), launch.output()
            # The wrist camera is silent: the front one still fills its window and answers.
            for _ in range(T + 3):
                cell.publish(('front',), answered=True)
            assert spin_until(executor, lambda: len(cell.results('front')) >= 2, timeout=30), \
                launch.output()
            assert not cell.actions['wrist'], 'a silent camera published'
            assert all(a.header.frame_id == 'front_optical' for a in cell.actions['front'])
            # Not held back by the silent camera: no frame waited out the 1 s batch timeout.
            latencies = [a.latency.sec + a.latency.nanosec / 1e9 for a in cell.results('front')]
            assert np.median(latencies) < 0.5, latencies
            assert spin_until(executor, lambda: f'{NODE} (wrist)' in cell.status and
                              cell.value('front', 'processed') == str(T + 3), timeout=10), \
                cell.status
            wrist = cell.status[f'{NODE} (wrist)']
            assert wrist.level == DiagnosticStatus.WARN, wrist
            assert 'no images on /mc/wrist/image' in wrist.message, wrist.message
            assert cell.value('wrist', 'received') == '0'
            # The front camera is OK while its images arrive. A status whose period saw none
            # (the last frame may be processed after its period ended) may say so, nothing else.
            front = cell.history[f'{NODE} (front)']
            assert any(s.level == DiagnosticStatus.OK for s in front), [s.message for s in front]
            assert all(s.level == DiagnosticStatus.OK or (
                s.level == DiagnosticStatus.WARN and
                s.message.endswith('no images on /mc/front/image')) for s in front), \
                [(s.level, s.message) for s in front]
            passes = int(cell.value('front', 'backbone passes'))
            frames = int(cell.value('front', 'backbone frames'))
            assert (passes, frames) == (T + 3, T + 3), (passes, frames)  # one camera: no batch

            # Both cameras, same stamps, the wrist frame 0.1 s after the front one: the front
            # frame waits for it (batch_timeout_ms 1000), one backbone pass takes both.
            rounds = T + 3
            for _ in range(rounds):
                cell.publish(CAMERAS, stagger=0.1)
            assert spin_until(executor, lambda: len(cell.results('wrist')) >= 2 and
                              cell.value('wrist', 'processed') == str(rounds), timeout=30), \
                launch.output()
            assert all(a.header.frame_id == 'wrist_optical' for a in cell.actions['wrist'])
            assert all(a.frames == T for a in cell.results('wrist'))
            new_passes = int(cell.value('front', 'backbone passes')) - passes
            new_frames = int(cell.value('front', 'backbone frames')) - frames
            assert new_frames == 2 * rounds, new_frames
            assert new_passes <= rounds + 1, f'{new_passes} passes for {rounds} frame pairs'
    finally:
        code = launch.stop()
    assert code == 0, launch.output()
    assert 'Traceback' not in launch.output(), launch.output()
