"""Procedural nearly-symmetric actions rendered with OpenCV (ROS-free).

Each symmetric pair is one base action and its time reversal: `put_down` *is* `pick_up` played
backwards, frame for frame, so every appearance variation (colours, sizes, positions, speeds,
clip lengths, backgrounds, camera noise) has the same distribution in both classes and only the
order of the frames tells them apart. The non-symmetric classes are periodic motions whose
random phase and direction make them look the same forwards and backwards. The background class
`none` is no action: one of the scenes at rest (or a bare table), camera noise and a small
distractor drifting slowly; streams put it in idle gaps of varied length between actions.

The scene lives in the central square of the frame (the backbone centre-crops), drawn large and
with contrasting colours so that motion survives the resize to the tiny backbone's 112 px.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

# base action -> its reversal
_REVERSED_OF = {'put_down': 'pick_up', 'close_drawer': 'open_drawer', 'unscrew_lid': 'screw_lid'}
SYMMETRIC_PAIRS: tuple[tuple[str, str], ...] = (
    ('pick_up', 'put_down'), ('open_drawer', 'close_drawer'), ('screw_lid', 'unscrew_lid'))
NON_SYMMETRIC: tuple[str, ...] = ('wave', 'stir')
ACTIONS: tuple[str, ...] = tuple(a for pair in SYMMETRIC_PAIRS for a in pair) + NON_SYMMETRIC
BACKGROUND = 'none'  # no action is happening
LABELS: tuple[str, ...] = ACTIONS + (BACKGROUND,)  # the classes of the dataset and the streams
DEFAULT_SIZE = (240, 320)  # (H, W), the demo camera's size
# Second task of every clip (paper Table V, multi-task): the object being handled. Order-free:
# a clip and its reversal handle the same object.
_OBJECT_OF = {'pick_up': 'box', 'open_drawer': 'drawer', 'screw_lid': 'jar', 'wave': 'hand',
              'stir': 'spoon'}


def object_of(action: str) -> str:
    """The object a clip of `action` handles ('none' for a clip without an action)."""
    return _OBJECT_OF.get(_REVERSED_OF.get(action, action), 'none')


def _hsv(rng: np.random.Generator, hue: float, sat: tuple[float, float],
         val: tuple[float, float], *, hue_jitter: float = 8.0) -> tuple[int, int, int]:
    """An RGB colour near an OpenCV hue (0..180) with saturation and value drawn from ranges."""
    h = (hue + rng.uniform(-hue_jitter, hue_jitter)) % 180
    hsv = np.uint8([[[h, rng.uniform(*sat), rng.uniform(*val)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


# Each scene has its own colour family (a drawer is wooden, a jar glassy) so that every head can
# tell the scenes apart; within a pair only the order of the frames differs.
# base -> (object hue, sat, val), (accent hue, sat, val)
_PALETTE = {
    'pick_up': ((5, (170, 255), (170, 240)), (110, (150, 255), (120, 200))),
    'open_drawer': ((15, (120, 200), (70, 110)), (22, (90, 160), (200, 250))),
    'screw_lid': ((95, (120, 220), (150, 230)), (170, (150, 255), (130, 210))),
    'wave': ((125, (120, 220), (60, 120)), (10, (90, 140), (180, 230))),
    'stir': ((0, (0, 30), (225, 255)), (0, (0, 20), (90, 130))),
}
# Pale wall whose colour changes across the frame: a patch's colour then tells where it is.
_CORNERS = np.array([[[150, 185, 245], [215, 150, 235]],
                     [[160, 240, 160], [245, 235, 130]]], dtype=np.float32)  # RGB TL TR / BL BR


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class _Scene:
    """All random parameters of one clip; frames are a pure function of (scene, index)."""

    base: str  # the action actually drawn; reversed classes draw their base backwards
    reverse: bool
    num_frames: int
    size: tuple[int, int]
    seed: int
    background: np.ndarray  # (H, W, 3) uint8, static per clip
    obj: tuple[int, int, int]
    accent: tuple[int, int, int]
    skin: tuple[int, int, int]
    table: tuple[int, int, int]
    scale: float  # object size factor
    cx: float  # horizontal position of the action in the square, 0..1
    hold_start: float  # fractions of the clip spent still before / after the motion
    hold_end: float
    cycles: float  # periodic actions: number of periods
    phase: float
    direction: int  # +1 / -1: periodic direction
    noise: float  # camera noise sigma (grey levels)
    jitter: float  # camera shake amplitude (pixels)
    # Background only: the scene drawn at rest ('' = bare table) at base frame rest_frame, and a
    # distractor blob drifting from distractor[:2] by distractor[2:4] (square units) over the clip.
    rest: str = ''
    rest_frame: int = 0
    distractor: tuple[float, ...] = ()
    distractor_colour: tuple[int, int, int] = (0, 0, 0)

    def progress(self, i: int) -> float:
        """Base-action progress 0..1 at base frame i (hold, eased motion, hold)."""
        x = i / max(self.num_frames - 1, 1)
        span = max(1.0 - self.hold_start - self.hold_end, 1e-3)
        return _smoothstep((x - self.hold_start) / span)

    def frame(self, index: int) -> np.ndarray:
        i = self.num_frames - 1 - index if self.reverse else index
        img = self.background.copy()
        h, w = self.size
        side = min(h, w)
        ox, oy = (w - side) / 2.0, (h - side) / 2.0
        rng = np.random.default_rng([self.seed, i])  # per base frame: reversal stays exact
        dx, dy = rng.normal(0.0, self.jitter, size=2)

        def pt(u: float, v: float) -> tuple[int, int]:
            """Square coordinates (0..1) -> pixel, with this frame's camera shake."""
            return int(round(ox + u * side + dx)), int(round(oy + v * side + dy))

        def px(d: float) -> int:
            return max(1, int(round(d * side)))

        _DRAW[self.base](self, img, i, pt, px)
        if self.noise > 0:
            noise = rng.normal(0.0, self.noise, size=img.shape).astype(np.float32)
            img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        return img


def _table(s: _Scene, img: np.ndarray, pt, v: float = 0.8) -> None:
    top = pt(0.0, v)
    cv2.rectangle(img, (0, top[1]), (img.shape[1], img.shape[0]), s.table, -1)


def _hand(s: _Scene, img: np.ndarray, pt, px, u: float, v: float, r: float) -> None:
    cv2.line(img, pt(u, v), pt(u + 0.05, -0.2), s.skin, px(r * 1.4))  # arm from above
    cv2.circle(img, pt(u, v), px(r), s.skin, -1)


def _draw_pick_up(s: _Scene, img, i, pt, px) -> None:
    p = s.progress(i)
    _table(s, img, pt)
    half = 0.12 * s.scale
    v = 0.8 - half - p * 0.5  # box bottom on the table at p=0, lifted high at p=1
    u = s.cx
    cv2.rectangle(img, pt(u - half, v - half), pt(u + half, v + half), s.obj, -1)
    cv2.rectangle(img, pt(u - half * 0.5, v - half * 0.3), pt(u + half * 0.5, v + half * 0.3),
                  s.accent, -1)
    _hand(s, img, pt, px, u, v - half - 0.04, 0.07)


def _draw_open_drawer(s: _Scene, img, i, pt, px) -> None:
    p = s.progress(i)
    _table(s, img, pt, 0.85)
    u0 = 0.05 + 0.1 * s.cx
    cab_w = 0.3 * s.scale
    cv2.rectangle(img, pt(u0, 0.3), pt(u0 + cab_w, 0.85), s.obj, -1)
    out = p * 0.35  # drawer slides out to the right
    d0, d1 = 0.45, 0.65
    cv2.rectangle(img, pt(u0 + cab_w - 0.05, d0), pt(u0 + cab_w + out, d1), s.accent, -1)
    cv2.rectangle(img, pt(u0 + cab_w + out - 0.04, d0 - 0.02), pt(u0 + cab_w + out, d1 + 0.02),
                  s.skin, -1)  # drawer front
    _hand(s, img, pt, px, u0 + cab_w + out + 0.04, (d0 + d1) / 2, 0.06)


def _draw_screw_lid(s: _Scene, img, i, pt, px) -> None:
    p = s.progress(i)
    _table(s, img, pt)
    u = s.cx
    half = 0.13 * s.scale
    cv2.rectangle(img, pt(u - half, 0.5), pt(u + half, 0.8), s.obj, -1)  # jar body
    v = 0.47 - (1.0 - p) * 0.3  # lid comes down onto the jar while it turns
    angle = s.direction * p * 2.5 * math.pi
    centre = pt(u, v)
    axes = (px(half * 1.1), px(0.05))
    cv2.ellipse(img, centre, axes, 0, 0, 360, s.accent, -1)
    mark = pt(u + half * 0.9 * math.cos(angle), v + 0.03 * math.sin(angle))
    cv2.circle(img, mark, px(0.03), s.obj, -1)
    _hand(s, img, pt, px, u + half * 0.6 * math.cos(angle), v - 0.07, 0.06)


def _draw_wave(s: _Scene, img, i, pt, px) -> None:
    x = i / max(s.num_frames - 1, 1)
    u = 0.5 + 0.25 * math.sin(2 * math.pi * (s.cycles * x) * s.direction + s.phase)
    cv2.line(img, pt(0.5, 1.1), pt(u, 0.35), s.obj, px(0.06))  # arm from below
    cv2.circle(img, pt(u, 0.35), px(0.1 * s.scale), s.skin, -1)


def _draw_stir(s: _Scene, img, i, pt, px) -> None:
    x = i / max(s.num_frames - 1, 1)
    _table(s, img, pt)
    u = s.cx
    cv2.ellipse(img, pt(u, 0.65), (px(0.25 * s.scale), px(0.12)), 0, 0, 360, s.obj, -1)
    a = 2 * math.pi * s.cycles * x * s.direction + s.phase
    tip = (u + 0.15 * s.scale * math.cos(a), 0.65 + 0.06 * math.sin(a))
    cv2.line(img, pt(*tip), pt(tip[0] + 0.1, 0.2), s.accent, px(0.04))
    cv2.circle(img, pt(tip[0] + 0.1, 0.2), px(0.07), s.skin, -1)


def _draw_none(s: _Scene, img, i, pt, px) -> None:
    if s.rest:
        _DRAW[s.rest](s, img, s.rest_frame, pt, px)  # the scene frozen at one instant
    else:
        _table(s, img, pt)
    x = i / max(s.num_frames - 1, 1)
    u0, v0, du, dv, r = s.distractor
    cv2.circle(img, pt(u0 + x * du, v0 + x * dv), px(r), s.distractor_colour, -1)


_DRAW = {'pick_up': _draw_pick_up, 'open_drawer': _draw_open_drawer,
         'screw_lid': _draw_screw_lid, 'wave': _draw_wave, 'stir': _draw_stir,
         BACKGROUND: _draw_none}


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """The pale wall: a fixed colour field, perturbed per clip, with a faint texture."""
    h, w = size
    side = min(h, w)
    corners = _CORNERS + rng.uniform(-15, 15, size=_CORNERS.shape).astype(np.float32)
    # The colour field spans the central square (what the backbone sees); it extends beyond.
    a = np.linspace(0.0, 1.0, side, dtype=np.float32)
    top = corners[0, 0] + a[:, None] * (corners[0, 1] - corners[0, 0])  # (side, 3)
    bottom = corners[1, 0] + a[:, None] * (corners[1, 1] - corners[1, 0])
    big = top[None] + a[:, None, None] * (bottom - top)[None]  # (side, side, 3)
    field = cv2.copyMakeBorder(big, (h - side) // 2, h - side - (h - side) // 2,
                               (w - side) // 2, w - side - (w - side) // 2, cv2.BORDER_REPLICATE)
    coarse = rng.normal(0.0, 6.0, size=(4, 5, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(field + texture, 0, 255).astype(np.uint8)


def _scene(action: str, *, rng: np.random.Generator, num_frames: int,
           size: tuple[int, int]) -> _Scene:
    if action not in LABELS:
        raise ValueError(f'unknown action {action!r}; actions are {list(LABELS)}')
    if num_frames < 2:
        raise ValueError(f'num_frames={num_frames}: an action needs at least 2 frames')
    h, w = size
    if h < 32 or w < 32:
        raise ValueError(f'size={size}: frames must be at least 32x32')
    base = _REVERSED_OF.get(action, action)
    rest = ''
    if base == BACKGROUND:
        rest = str(rng.choice(('',) + tuple(_PALETTE)))
    obj, accent = _PALETTE[rest or 'pick_up'] if base == BACKGROUND else _PALETTE[base]
    scene = _Scene(
        base=base, reverse=action in _REVERSED_OF, num_frames=num_frames, size=(h, w),
        seed=int(rng.integers(2**31)), background=_background(rng, (h, w)),
        obj=_hsv(rng, *obj), accent=_hsv(rng, *accent),
        skin=_hsv(rng, 10, (70, 140), (170, 235)), table=_hsv(rng, 18, (60, 130), (60, 110)),
        scale=float(rng.uniform(0.85, 1.15)),
        cx=float(rng.uniform(0.3, 0.7)), hold_start=float(rng.uniform(0.0, 0.2)),
        hold_end=float(rng.uniform(0.0, 0.2)), cycles=float(rng.uniform(1.5, 3.0)),
        phase=float(rng.uniform(0, 2 * math.pi)), direction=int(rng.choice([-1, 1])),
        noise=float(rng.uniform(0.0, 8.0)), jitter=float(rng.uniform(0.0, 1.5)))
    if base == BACKGROUND:
        scene.rest = rest
        scene.rest_frame = int(rng.choice([0, num_frames - 1])) if rest else 0
        scene.distractor = (float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85)),
                            float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12)),
                            float(rng.uniform(0.02, 0.05)))
        scene.distractor_colour = _hsv(rng, float(rng.uniform(0, 180)), (60, 200), (80, 220),
                                       hue_jitter=0.0)
    return scene


def render_clip(action: str, *, rng: np.random.Generator, num_frames: int,
                size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """One whole action from its start to its end: (num_frames, H, W, 3) uint8 RGB."""
    scene = _scene(action, rng=rng, num_frames=num_frames, size=size)
    return np.stack([scene.frame(i) for i in range(num_frames)])


class ActionStream:
    """An endless camera: random actions, each `action_seconds` long, with idle gaps between.

    After each action comes an idle gap (the background class, `none`) of a length drawn
    uniformly from `idle_seconds` = (shortest, longest); (0, 0) puts the actions back to back.
    Iterating yields (frame RGB uint8 (H, W, 3), t seconds since start, label). Frames are drawn
    lazily, one per step, so a live publisher never stalls on a whole clip.
    """

    def __init__(self, *, seed: int = 0, fps: float = 30.0, size: tuple[int, int] = DEFAULT_SIZE,
                 action_seconds: float = 2.0, actions: tuple[str, ...] = ACTIONS,
                 idle_seconds: tuple[float, float] = (0.0, 0.0)) -> None:
        if not (0 < fps < math.inf and 0 < action_seconds < math.inf):  # NaN fails too
            raise ValueError(f'fps={fps}, action_seconds={action_seconds}: both must be finite '
                             'and > 0')
        lo, hi = (float(v) for v in idle_seconds)
        if not 0.0 <= lo <= hi < math.inf:
            raise ValueError(f'idle_seconds={tuple(idle_seconds)}: need 0 <= shortest <= longest')
        self.rng = np.random.default_rng(seed)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.action_seconds = float(action_seconds)
        self.actions = tuple(actions)
        self.idle_seconds = (lo, hi)
        self.frames_per_action = max(2, int(round(action_seconds * fps)))
        self._segments: list[tuple[float, float, str]] = []

    def segments(self) -> list[tuple[float, float, str]]:
        """(start, end, label) in seconds of every segment (action or idle gap) begun so far."""
        return list(self._segments)

    def _idle_frames(self) -> int:
        lo, hi = self.idle_seconds
        if hi <= 0:
            return 0  # no draw: the action sequence of a seed stays what it was without gaps
        frames = int(round(self.rng.uniform(lo, hi) * self.fps))
        return frames if frames >= 2 else 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, float, str]]:
        index = 0
        while True:
            label = str(self.rng.choice(self.actions))
            parts = [(label, self.frames_per_action), (BACKGROUND, self._idle_frames())]
            for name, frames in parts:
                if not frames:
                    continue
                scene = _scene(name, rng=self.rng, num_frames=frames, size=self.size)
                start = index / self.fps
                self._segments.append((start, start + frames / self.fps, name))
                for i in range(frames):
                    yield scene.frame(i), index / self.fps, name
                    index += 1
