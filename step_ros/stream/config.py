"""The node's configuration: one table of parameters, one frozen dataclass, one validator.

The ROS node declares exactly these parameters (with their descriptions) and the offline tools
read the same `ros__parameters` YAML files, so both run the engine from identical settings.
Defaults equal `config/perception.yaml`, the real deployment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from step_ros.model.backbone import BUILTIN
from step_ros.stream.decision import DecisionConfig
from step_ros.stream.decode import DEFAULT_MAX_PIXELS
from step_ros.stream.engine import EngineConfig

NODE_NAME = 'perception_node'
PACKAGE_PREFIX = 'package://step_ros/'


class ConfigError(ValueError):
    """A parameter has a bad value; the message names the parameter and the value."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: tuple = ()


PARAMETERS: tuple[Param, ...] = (
    Param('backbone.weights', '/opt/step_ros/models/dinov2-vitb14',
          "Frozen backbone: 'tiny' / 'tiny-clip' (built-in, seeded random weights), "
          "'efficientnet_lite0' (ImageNet weights from its installed package; for CPUs) or a "
          'local Hugging Face directory (config.json + model.safetensors) of DINOv2 or CLIP ViT.'),
    Param('backbone.image_size', 224,
          "Side of the square input in pixels; a multiple of the patch size (0: the model's)."),
    Param('device', 'cuda', "Inference device: 'auto', 'cpu', 'cuda' or 'cuda:N'.",
          ('auto', 'cpu', 'cuda')),
    Param('precision', 'fp16', 'Backbone and head precision.', ('fp32', 'fp16', 'bf16')),
    Param('heads.checkpoints', ['/opt/step_ros/models/heads/action.safetensors'],
          'Head checkpoints (.safetensors written by `python -m step_ros train`); all share one '
          "backbone pass. A path may start with 'package://step_ros/'."),
    Param('heads.topics', ['human_action'],
          'Output topic of each head, same order as heads.checkpoints.'),
    Param('num_frames', 16, "T: frames per window; must equal the heads' training T."),
    Param('window_seconds', 2.0, 'Seconds of header time one window spans.'),
    Param('infer_every', 1, 'Run the heads every k-th sampled frame once the window is full.'),
    Param('top_k', 5, 'Number of classes in top_labels / top_scores.'),
    Param('ambiguity_margin', 0.15,
          'A symmetric top-2 pair whose probabilities differ by less is flagged ambiguous.'),
    Param('order_check', False,
          'Also run the heads on the time-reversed window (no backbone cost) and flag '
          'symmetric predictions that do not flip.'),
    Param('symmetric_pairs', [''],
          "Override the checkpoints' symmetric pairs: entries 'a:b'; [''] keeps theirs."),
    Param('image_qos', 'sensor_data',
          "Image subscription QoS: 'sensor_data' (best effort, depth 5) or 'reliable'.",
          ('sensor_data', 'reliable')),
    Param('subscribe_compressed', False, "Also subscribe to 'image/compressed'."),
    Param('debug_image', False, "Publish an annotated image on 'debug_image'."),
    Param('diagnostics_period', 1.0, 'Seconds between /diagnostics messages (0.05 to 3600).'),
    Param('max_image_pixels', DEFAULT_MAX_PIXELS,
          'Largest image (width x height) that is decoded; larger ones, raw or as declared by '
          'a PNG / JPEG header, are rejected before any memory is allocated for them.'),
    Param('worker_timeout', 10.0,
          'Seconds the inference worker may spend on one frame (or leave one waiting) before '
          '/diagnostics reports it stuck (ERROR).'),
    Param('input_timeout_seconds', 2.0,
          'Seconds without an image from a camera (0.05 to 3600) after which its open actions '
          'END, dated at its last frame, and its outputs say warming_up with 0 frames until '
          'images come again.'),
    Param('cameras', [''],
          "Camera names, e.g. ['front', 'wrist']: each camera n has its inputs n/image (and "
          'n/image/compressed) and its outputs n/<heads.topics>, and all share one batched '
          "backbone pass; [''] is the single input 'image' with outputs <heads.topics>."),
    Param('batch_timeout_ms', 10.0,
          'With several cameras: how long a frame that is due waits for the due frames of the '
          'other cameras to join its backbone batch (0 to 1000 ms); a silent or slow camera '
          'never delays the others by more.'),
    Param('autostart', True,
          'Configure and activate the lifecycle node at start-up; false: stay unconfigured '
          'until a lifecycle manager (nav2_lifecycle_manager, `ros2 lifecycle set`) says so.'),
    Param('decision.smoothing_seconds', DecisionConfig.smoothing_seconds,
          'Decision stage: time constant (s of header time) of the moving average over the '
          'head probabilities; 0 turns smoothing off.'),
    Param('decision.enter_threshold', DecisionConfig.enter_threshold,
          'Decision stage: smoothed probability a label needs to become a candidate action.'),
    Param('decision.exit_threshold', DecisionConfig.exit_threshold,
          'Decision stage: the active action ends when its smoothed probability drops below '
          'this (<= enter_threshold: hysteresis).'),
    Param('decision.min_dwell_seconds', DecisionConfig.min_dwell_seconds,
          'Decision stage: seconds a candidate must hold before its START event.'),
    Param('decision.min_confidence', DecisionConfig.min_confidence,
          "Decision stage: with no action active, a top-1 probability (raw or smoothed) below "
          "this is state 'uncertain' and starts nothing."),
)
DEFAULTS = {p.name: p.default for p in PARAMETERS}
# Bounds of the float parameters: finite, and sane for a camera (a window of an hour is a typo;
# diagnostics faster than 20 Hz only load the machine).
FLOAT_RANGES = {'window_seconds': (0.0, 3600.0), 'diagnostics_period': (0.05, 3600.0),
                'worker_timeout': (0.1, 3600.0), 'batch_timeout_ms': (0.0, 1000.0),
                'input_timeout_seconds': (0.05, 3600.0)}
# Zero is a valid value of these (the others must be > 0).
ZERO_ALLOWED = ('batch_timeout_ms',)
# A camera name: relative topic name tokens (it prefixes the camera's topics).
MAX_CAMERAS = 64  # each camera costs subscriptions, publishers and a window on the device
CAMERA_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*')
MAX_CAMERA_NAME = 100  # characters; a full topic name has at most 247
# The node's own topics (relative to its namespace, per camera) that no head output may take.
NODE_TOPICS = {'image': "the node's image input", 'image/compressed': "the node's compressed "
               'image input', 'debug_image': "the node's debug image output",
               '/diagnostics': "the node's /diagnostics output"}
# Parameters a running node takes with `ros2 param set`; the others need a new configure.
LIVE_PARAMETERS = frozenset({'top_k', 'ambiguity_margin', *(
    f'decision.{f.name}' for f in fields(DecisionConfig))})
RESTART = 'needs a restart: deactivate, cleanup, configure'


def describe(param: Param) -> str:
    """The parameter's description, saying whether a running node takes a new value."""
    if param.name in LIVE_PARAMETERS:
        return f'{param.description} Live: `ros2 param set` applies it to the running node.'
    if param.name == 'autostart':
        return f'{param.description} Read at start-up only.'
    return f'{param.description} Not live: it {RESTART}; set it while unconfigured.'


@dataclass(frozen=True)
class PerceptionConfig:
    backbone_weights: str
    image_size: int
    device: str
    precision: str
    head_checkpoints: tuple[str, ...]
    head_topics: tuple[str, ...]
    engine: EngineConfig
    symmetric_pairs: tuple[tuple[str, str], ...] | None  # None: use the checkpoints'
    image_qos: str
    subscribe_compressed: bool
    debug_image: bool
    diagnostics_period: float
    decision: DecisionConfig = DecisionConfig()
    # True when the parameters file (or `ros2 param set`) gave a decision.* value: `decision`
    # then wins over the values a head's checkpoint carries (runtime.decision_for).
    decision_set: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    worker_timeout: float = 10.0
    cameras: tuple[str, ...] = ()  # empty: the single input 'image'
    batch_timeout_ms: float = 10.0
    input_timeout_seconds: float = 2.0

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The engine's streams: the cameras, or the one unnamed input."""
        return self.cameras or ('',)

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> PerceptionConfig:
        """Validate parameter values (defaults fill the gaps) into a config."""
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f'unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}')
        v = {**DEFAULTS, **values}
        for p in PARAMETERS:
            v[p.name] = _typed(p, v[p.name])
            if p.choices and v[p.name] not in p.choices and not (
                    p.name == 'device' and str(v[p.name]).startswith('cuda:')):
                raise ConfigError(f'{p.name}={v[p.name]!r}: expected one of {list(p.choices)}')
        for name in ('num_frames', 'infer_every', 'top_k', 'max_image_pixels'):
            if v[name] < 1:
                raise ConfigError(f'{name}={v[name]}: must be >= 1')
        for name, (low, high) in FLOAT_RANGES.items():
            # `not low <= x` is also true for NaN; inf and 1e300 fail the upper bound.
            if not (math.isfinite(v[name]) and low <= v[name] <= high) or (
                    v[name] == 0 and name not in ZERO_ALLOWED):
                opening = '(0' if low == 0 and name not in ZERO_ALLOWED else f'[{low:g}'
                raise ConfigError(f'{name}={v[name]}: must be a number in {opening}, '
                                  f'{high:g}]')
        decision = _check_live(v)
        if v['backbone.image_size'] < 0:
            raise ConfigError(f"backbone.image_size={v['backbone.image_size']}: must be >= 0")
        checkpoints = tuple(resolve_path(c) for c in v['heads.checkpoints'] if c)
        topics = tuple(t for t in v['heads.topics'] if t)
        if not checkpoints:
            raise ConfigError(f"heads.checkpoints={v['heads.checkpoints']!r}: at least one head")
        if len(topics) != len(checkpoints) or len(set(topics)) != len(topics):
            raise ConfigError(f"heads.topics={v['heads.topics']!r}: need one distinct topic per "
                              f'checkpoint ({len(checkpoints)})')
        for path in checkpoints:
            if not Path(path).is_file():
                raise ConfigError(f'heads.checkpoints: {path!r} does not exist')
        weights = v['backbone.weights']
        if weights not in BUILTIN:
            weights = resolve_path(weights)
            if not Path(weights).is_dir():
                raise ConfigError(f'backbone.weights={weights!r}: no such directory (a local '
                                  f'Hugging Face model directory, or one of {list(BUILTIN)})')
        cameras = tuple(c for c in v['cameras'] if c)
        if len(cameras) > MAX_CAMERAS:
            raise ConfigError(f'cameras: {len(cameras)} names, at most {MAX_CAMERAS} '
                              '(run several nodes beyond that)')
        for camera in cameras:
            if not CAMERA_NAME.fullmatch(camera):
                raise ConfigError(f'cameras: {camera!r} is not a camera name (letters, digits, '
                                  "'_', starting with a letter; '/' between parts)")
            if len(camera) > MAX_CAMERA_NAME:
                raise ConfigError(f'cameras: {camera[:40]!r}... ({len(camera)} characters) is '
                                  f'too long: a camera name has at most {MAX_CAMERA_NAME}')
        if len(set(cameras)) != len(cameras):
            raise ConfigError(f"cameras={v['cameras']!r}: names must be distinct")
        absolute = [t for t in topics if t.startswith(('/', '~'))]
        if cameras and absolute:
            raise ConfigError(f'heads.topics={list(topics)!r}: with cameras set, topics must be '
                              f'relative (each camera n publishes n/<topic>), not {absolute[0]!r}')
        _check_outputs(topics)
        pairs = None
        entries = [e for e in v['symmetric_pairs'] if e]
        if entries:
            pairs = []
            for entry in entries:
                parts = entry.split(':')
                if len(parts) != 2 or not all(parts):
                    raise ConfigError(f"symmetric_pairs: {entry!r} is not of the form 'a:b'")
                pairs.append((parts[0], parts[1]))
            pairs = tuple(pairs)
        engine = EngineConfig(num_frames=v['num_frames'], window_seconds=v['window_seconds'],
                              infer_every=v['infer_every'], top_k=v['top_k'],
                              ambiguity_margin=v['ambiguity_margin'],
                              order_check=v['order_check'])
        return cls(backbone_weights=weights, image_size=v['backbone.image_size'],
                   device=v['device'], precision=v['precision'], head_checkpoints=checkpoints,
                   head_topics=topics, engine=engine, symmetric_pairs=pairs,
                   image_qos=v['image_qos'], subscribe_compressed=v['subscribe_compressed'],
                   debug_image=v['debug_image'], diagnostics_period=v['diagnostics_period'],
                   decision=decision, max_image_pixels=v['max_image_pixels'],
                   decision_set=any(k.startswith('decision.') for k in values),
                   worker_timeout=v['worker_timeout'], cameras=cameras,
                   batch_timeout_ms=v['batch_timeout_ms'],
                   input_timeout_seconds=v['input_timeout_seconds'])

    def retuned(self, changes: dict[str, Any], *, decision: DecisionConfig | None = None
                ) -> PerceptionConfig:
        """This config with new values of live parameters, checked by the rules of
        from_params; ConfigError names a parameter that needs a restart. `decision`: the
        decision values the changes apply to (a head's fitted ones), instead of this config's."""
        for name in changes:
            if name not in DEFAULTS:
                raise ConfigError(f'unknown parameter {name!r}')
            if name not in LIVE_PARAMETERS:
                raise ConfigError(f'{name} {RESTART} (set it while unconfigured)')
        v = {'top_k': self.engine.top_k, 'ambiguity_margin': self.engine.ambiguity_margin,
             **{f'decision.{f.name}': getattr(decision or self.decision, f.name)
                for f in fields(DecisionConfig)}}
        for p in PARAMETERS:
            if p.name in changes:
                v[p.name] = _typed(p, changes[p.name])
        decision = _check_live(v)
        engine = replace(self.engine, top_k=v['top_k'], ambiguity_margin=v['ambiguity_margin'])
        return replace(self, engine=engine, decision=decision, decision_set=self.decision_set
                       or any(k.startswith('decision.') for k in changes))


def _check_live(v: dict[str, Any]) -> DecisionConfig:
    """The rules of the live parameters (typed values in `v`); their DecisionConfig."""
    if v['top_k'] < 1:
        raise ConfigError(f"top_k={v['top_k']}: must be >= 1")
    if not 0.0 <= v['ambiguity_margin'] <= 1.0:
        raise ConfigError(f"ambiguity_margin={v['ambiguity_margin']}: must be in [0, 1]")
    decision = DecisionConfig(**{f.name: v[f'decision.{f.name}'] for f in fields(DecisionConfig)})
    try:
        return decision.validate()
    except ValueError as exc:
        raise ConfigError(f'decision.{exc}') from None


def _check_outputs(topics: tuple[str, ...]) -> None:
    """Each head's topics (output, events, labels) differ from the node's and each other."""
    taken = dict(NODE_TOPICS)
    for topic in topics:
        for name, what in ((topic, 'output'), (f'{topic}/events', 'events output'),
                           (f'{topic}/labels', 'labels output')):
            if name in taken:
                raise ConfigError(f'heads.topics: {topic!r} gives the {what} {name!r}, which is '
                                  f'already {taken[name]}; a head output must differ from the '
                                  "node's inputs and other outputs")
            taken[name] = f'the {what} of head topic {topic!r}'


def _typed(param: Param, value: Any) -> Any:
    """Check a value has the type of the parameter's default (ints widen to floats)."""
    want = type(param.default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f'{param.name}={value!r}: expected a list of strings')
        return list(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f'{param.name}={value!r}: expected {want.__name__}, got '
                          f'{type(value).__name__}')
    return value


def package_share() -> Path:
    """The installed share/step_ros directory, or the source tree when not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('step_ros'))
    except Exception:  # not installed with colcon, or ament_index not importable
        return Path(__file__).resolve().parents[2]  # the repository root


def resolve_path(path: str) -> str:
    """Expand 'package://step_ros/...' and '~'."""
    if path.startswith(PACKAGE_PREFIX):
        return str(package_share() / path[len(PACKAGE_PREFIX):])
    return str(Path(path).expanduser())


def load_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Read a ROS 2 parameters YAML file into {dotted name: value} for `node_name`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'params file {str(path)!r} does not exist')
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'params file {str(path)!r} is not valid YAML: {exc}') from exc
    values: dict[str, Any] = {}
    for key in ('/**', node_name, f'/{node_name}'):
        section = document.get(key, {}) if isinstance(document, dict) else {}
        params = section.get('ros__parameters', {}) if isinstance(section, dict) else {}
        values.update(_flatten(params))
    if not values:
        raise ConfigError(f"params file {str(path)!r} has no '/**' or {node_name!r} "
                          'ros__parameters section')
    return values


def write_params_file(path: str | Path, values: dict[str, Any]) -> Path:
    """Write {dotted name: value} as a ROS 2 parameters file for every node (`/**`), dotted
    keys as they are: the node and load_params_file read it."""
    path = Path(path)
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': dict(values)}}, sort_keys=True))
    return path


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{name}.'))
        else:
            flat[name] = value
    return flat
