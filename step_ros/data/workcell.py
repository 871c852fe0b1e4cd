"""A second synthetic world: an assembly workcell seen by a fixed camera (ROS-free).

Independent of `synth` (its classes, drawing, scenes and timing) so that defaults chosen on one
world can be checked on the other. A gloved hand works five fixtures on a bench, drawn as shaded
3-D solids through a pinhole camera whose pose (elevation, azimuth, distance, roll) is drawn per
cell (`cell`: recordings of one cell share it, as a user's own cell does; without it, per
recording):

- push / pull: a carriage slides along a rail away from / towards the operator;
- raise / lower: a lever swings up about its pivot / back down;
- insert / remove: a peg is lifted, carried over a block and pushed into its hole / the reverse;
- polish: a pad rubs circles on a plate (either direction, any phase);
- hammer: a hammer taps a nail, its head rising and falling.

In each pair the second class is the first played backwards, frame for frame (camera effects
included), so only the order of the frames tells them apart. The background class `idle` shows
a fixture at rest (or a bare bench), the hand still or away, and a small part sliding slowly.

A stream is one recording: each action lasts 0.8-3x the window length (drawn per action), idle
gaps 0.3-5 s between them, sensor noise of a level drawn per recording, a slow global gain drift
and occasional short camera shakes. The fixtures stay in the central square of the frame (the
backbone centre-crops), large and contrasting so that motion survives a resize to 112 px.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

# the reversed class -> the action it plays backwards
_REVERSED_OF = {'pull': 'push', 'lower': 'raise', 'remove': 'insert'}
SYMMETRIC_PAIRS: tuple[tuple[str, str], ...] = (
    ('push', 'pull'), ('raise', 'lower'), ('insert', 'remove'))
NON_SYMMETRIC: tuple[str, ...] = ('polish', 'hammer')
ACTIONS: tuple[str, ...] = tuple(a for pair in SYMMETRIC_PAIRS for a in pair) + NON_SYMMETRIC
BACKGROUND = 'idle'  # no action is happening
LABELS: tuple[str, ...] = ACTIONS + (BACKGROUND,)
DEFAULT_SIZE = (240, 320)  # (H, W), the demo camera's size
CLIP_FPS = 30.0  # the frame rate render_clip draws periodic motions for
DURATION_RANGE = (0.8, 3.0)  # an action's length, in window lengths
IDLE_SECONDS = (0.3, 5.0)  # shortest and longest idle gap
# Second task (the object being handled); a clip and its reversal handle the same object.
_OBJECT_OF = {'push': 'slider', 'raise': 'lever', 'insert': 'peg', 'polish': 'plate',
              'hammer': 'nail'}
_FIXTURES = tuple(_OBJECT_OF)  # the base actions, one fixture each

# Base RGB colours, jittered per recording or per scene; several choices where given.
_GLOVES = ((40, 90, 205), (35, 35, 40), (240, 125, 25), (230, 230, 220))
_SLEEVES = ((55, 60, 75), (110, 40, 40), (40, 80, 60))
_BENCHES = ((96, 104, 114), (62, 96, 78), (122, 110, 92))
_BACKDROPS = ((28, 34, 52), (46, 46, 50), (24, 56, 62))
_LAMPS = ((40, 220, 80), (250, 175, 20))  # status light: green / amber
_PALETTE: dict[str, dict[str, tuple[tuple[int, int, int], ...]]] = {
    'push': {'rail': ((70, 76, 88),), 'part': ((250, 165, 20), (240, 215, 35)),
             'accent': ((20, 20, 25),)},
    'raise': {'base': ((40, 62, 115), (90, 40, 110)), 'part': ((195, 200, 205),),
              'accent': ((215, 30, 30),)},
    'insert': {'base': ((150, 162, 178),), 'part': ((205, 165, 60), (20, 165, 150)),
               'accent': ((15, 15, 20),)},
    'polish': {'base': ((205, 210, 215),), 'part': ((40, 175, 70), (60, 110, 235)),
               'accent': ((235, 235, 240),)},
    'hammer': {'base': ((155, 105, 55),), 'part': ((205, 40, 40), (165, 115, 60)),
               'accent': ((60, 65, 78),)},
    '': {},
}


def object_of(action: str) -> str:
    """The object a clip of `action` handles ('none' for a clip without an action)."""
    return _OBJECT_OF.get(_REVERSED_OF.get(action, action), 'none')


def _tint(rng: np.random.Generator, choices: tuple[tuple[int, int, int], ...],
          spread: float = 16.0) -> np.ndarray:
    base = np.array(choices[int(rng.integers(len(choices)))], dtype=np.float64)
    return np.clip(base + rng.uniform(-spread, spread, size=3), 0, 255)


def _ease(x: float) -> float:
    """Smooth 0 -> 1 with zero speed at both ends."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


# --- geometry: 4x4 transforms, convex solids, a pinhole camera --------------------------------

def _move(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def _turn(axis: str, angle: float) -> np.ndarray:
    """Rotation by `angle` (right-handed) about the x, y or z axis."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = {'x': (1, 2), 'y': (2, 0), 'z': (0, 1)}[axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _apply(m: np.ndarray, points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


@functools.lru_cache(maxsize=None)
def _prism_faces(k: int) -> tuple[tuple[int, ...], ...]:
    """Faces of a prism over a k-gon: bottom, top and k sides (vertex indices)."""
    sides = tuple((i, (i + 1) % k, k + (i + 1) % k, k + i) for i in range(k))
    return (tuple(range(k)), tuple(range(k, 2 * k))) + sides


@functools.lru_cache(maxsize=None)
def _triples(faces: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """(F, 3) the first three corners of every face."""
    return np.array([face[:3] for face in faces])


def _fix(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> OpenCV fixed point (shift 4: 1/16 px, smooth sub-pixel motion)."""
    return np.round(np.asarray(points) * 16.0).astype(np.int32)


def _rgb(colour) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(colour, 0, 255))


@dataclass(frozen=True)
class _View:
    """A pinhole camera over the bench: world (x right, y away from the operator, z up) -> px."""

    eye: np.ndarray  # (3,) camera position
    axes: np.ndarray  # (3, 3) rows: image right, image down, viewing direction (world)
    focal: float  # pixels
    centre: np.ndarray  # (2,) principal point: the frame centre

    @classmethod
    def draw(cls, rng: np.random.Generator, size: tuple[int, int],
             jitter: np.random.Generator | None = None) -> _View:
        """A camera pose drawn from `rng`; `jitter` moves it slightly (a camera mounted again)."""
        h, w = size
        elevation = math.radians(rng.uniform(38.0, 62.0))
        azimuth = math.radians(rng.uniform(-22.0, 22.0))
        distance = rng.uniform(2.5, 3.3)  # the scale of the scene in the frame varies by ~30 %
        roll = math.radians(rng.uniform(-4.0, 4.0))
        target = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), 0.18])
        if jitter is not None:
            elevation += math.radians(jitter.uniform(-2.0, 2.0))
            azimuth += math.radians(jitter.uniform(-2.0, 2.0))
            distance *= jitter.uniform(0.97, 1.03)
            roll += math.radians(jitter.uniform(-1.0, 1.0))
        back = np.array([math.sin(azimuth) * math.cos(elevation),
                         -math.cos(azimuth) * math.cos(elevation), math.sin(elevation)])
        forward = -back
        right = np.cross(forward, (0.0, 0.0, 1.0))
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        c, s = math.cos(roll), math.sin(roll)
        right, down = c * right + s * down, -s * right + c * down
        return cls(eye=target + distance * back, axes=np.stack([right, down, forward]),
                   focal=2.0 * min(h, w), centre=np.array([w / 2.0, h / 2.0]))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world -> (N, 2) pixels and (N,) depths."""
        cam = (np.asarray(points, dtype=np.float64) - self.eye) @ self.axes.T
        depth = np.maximum(cam[:, 2], 1e-3)
        return self.centre + self.focal * cam[:, :2] / depth[:, None], depth

    def polygon(self, img: np.ndarray, points, colour) -> None:
        pixels, _ = self.project(np.asarray(points, dtype=np.float64))
        cv2.fillConvexPoly(img, _fix(pixels), _rgb(colour), cv2.LINE_AA, 4)

    def line(self, img: np.ndarray, a, b, colour, thickness: int) -> None:
        (pa, pb), _ = self.project(np.array([a, b], dtype=np.float64))
        cv2.line(img, tuple(_fix(pa)), tuple(_fix(pb)), _rgb(colour), thickness, cv2.LINE_AA, 4)

    def ball(self, img: np.ndarray, centre, radius: float, colour, light: np.ndarray) -> None:
        """A shaded sphere: a disc with a highlight towards the light."""
        (pixel,), (depth,) = self.project(np.asarray(centre, dtype=np.float64)[None])
        r = self.focal * radius / depth
        colour = np.asarray(colour, dtype=np.float64)
        cv2.circle(img, tuple(_fix(pixel)), int(round(16 * r)), _rgb(colour * 0.7), -1,
                   cv2.LINE_AA, 4)
        toward = np.array([light @ self.axes[0], light @ self.axes[1]])
        spot = pixel + 0.35 * r * toward / max(float(np.linalg.norm(toward)), 1e-6)
        cv2.circle(img, tuple(_fix(spot)), int(round(16 * 0.55 * r)), _rgb(colour * 1.1 + 10),
                   -1, cv2.LINE_AA, 4)


@dataclass(frozen=True)
class _Solid:
    """A convex polyhedron in world coordinates, with an optional flat mark on top."""

    points: np.ndarray  # (N, 3)
    faces: tuple[tuple[int, ...], ...]
    colour: np.ndarray  # (3,) RGB
    mark: tuple = ()  # ((K, 3) world polygon, colour): e.g. the hole in a block's top

    def draw(self, img: np.ndarray, view: _View, light: np.ndarray) -> None:
        pixels, _ = view.project(self.points)
        # Each face's plane from its first three corners; any point of a face tells which side
        # of it the centroid (inside: the normal points away) and the camera are on.
        a, b, c = (self.points[i] for i in _triples(self.faces).T)  # (F, 3) each
        normals = np.cross(b - a, c - a)
        normals *= np.sign(np.einsum('fi,fi->f', normals, a - self.points.mean(axis=0)))[:, None]
        lengths = np.linalg.norm(normals, axis=1)
        facing = np.einsum('fi,fi->f', normals, view.eye - a) > 1e-12 * lengths
        shades = 0.45 + 0.55 * np.clip(normals @ light / np.maximum(lengths, 1e-12), 0.0, None)
        for f in np.flatnonzero(facing & (lengths > 1e-12)):  # convex: no other culling needed
            cv2.fillConvexPoly(img, _fix(pixels[list(self.faces[f])]),
                               _rgb(self.colour * shades[f]), cv2.LINE_AA, 4)
        if self.mark:
            view.polygon(img, *self.mark)


def _prism(outline, z0: float, z1: float, colour, frame: np.ndarray, mark: tuple = ()) -> _Solid:
    """A prism over a convex (K, 2) outline between heights z0 and z1, placed by `frame`."""
    outline = np.asarray(outline, dtype=np.float64)
    k = len(outline)
    local = np.concatenate([np.column_stack([outline, np.full(k, z0)]),
                            np.column_stack([outline, np.full(k, z1)])])
    return _Solid(_apply(frame, local), _prism_faces(k), np.asarray(colour, np.float64), mark)


def _box(size, at, colour, frame: np.ndarray, mark: tuple = ()) -> _Solid:
    sx, sy, sz = size
    x, y, z = at
    outline = [(x - sx / 2, y - sy / 2), (x + sx / 2, y - sy / 2), (x + sx / 2, y + sy / 2),
               (x - sx / 2, y + sy / 2)]
    return _prism(outline, z - sz / 2, z + sz / 2, colour, frame, mark)


def _disc(radius: float, at=(0.0, 0.0), k: int = 10) -> np.ndarray:
    a = np.linspace(0.0, 2 * math.pi, k, endpoint=False)
    return np.column_stack([at[0] + radius * np.cos(a), at[1] + radius * np.sin(a)])


# --- the recording: camera, cell, sensor -------------------------------------------------------

class _Events:
    """Random event times with random payloads, drawn lazily in time order: the answer for a
    time does not depend on which times were asked before."""

    def __init__(self, rng: np.random.Generator, gap: tuple[float, float],
                 payload: Callable[[np.random.Generator], tuple]) -> None:
        self.rng, self.gap, self.payload = rng, gap, payload
        self.starts: list[float] = []
        self.payloads: list[tuple] = []

    def before(self, t: float) -> tuple[int, float, tuple]:
        """(events so far, start of the latest, its payload) at time t (0, 0, () if none)."""
        while not self.starts or self.starts[-1] <= t:
            last = self.starts[-1] if self.starts else 0.0
            self.starts.append(last + float(self.rng.uniform(*self.gap)))
            self.payloads.append(self.payload(self.rng))
        k = bisect.bisect_right(self.starts, t)
        return (k, self.starts[k - 1], self.payloads[k - 1]) if k else (0, 0.0, ())


class _Recording:
    """One camera watching one cell: everything fixed for a whole recording.

    Without `cell`, every recording is a cell of its own (camera pose, light, bench, backdrop,
    status lamp drawn from `rng`). With `cell`, those come from the cell's seed, so recordings
    of one cell share them, the camera moved by a few degrees at most; the operator (glove,
    sleeve), sensor noise, exposure, gain drift and shakes stay the recording's own.
    """

    def __init__(self, rng: np.random.Generator, size: tuple[int, int],
                 cell: int | None = None) -> None:
        self.size = size
        self.seed = int(rng.integers(2**31))
        self.view = _View.draw(rng, size)
        light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.7, 0.2), 1.0])
        self.light = light / np.linalg.norm(light)
        self.bench = _tint(rng, _BENCHES, 12.0)
        self.backdrop = _tint(rng, _BACKDROPS, 8.0)
        self.glove = _tint(rng, _GLOVES, 14.0)
        self.sleeve = _tint(rng, _SLEEVES, 14.0)
        self.lamp_at = np.array([rng.choice([-0.8, 0.8]) + rng.uniform(-0.1, 0.1), 0.82, 0.55])
        self.noise = float(rng.uniform(0.5, 8.0))  # sensor noise sigma, grey levels
        self.exposure = float(rng.uniform(0.85, 1.1))
        # gain drift: two slow sines (amplitude, period s, phase)
        self.drift = [(float(rng.uniform(0.02, 0.1)), float(rng.uniform(15.0, 60.0)),
                       float(rng.uniform(0, 2 * math.pi))),
                      (float(rng.uniform(0.0, 0.04)), float(rng.uniform(4.0, 12.0)),
                       float(rng.uniform(0, 2 * math.pi)))]
        side = min(size)
        self.shakes = _Events(np.random.default_rng([self.seed, 1]), (2.0, 14.0), lambda r: (
            float(r.uniform(0.15, 0.6)), float(r.uniform(0.004, 0.012) * side),
            float(r.uniform(0, 2 * math.pi)), float(r.uniform(0, 2 * math.pi))))
        self.lamp = _Events(np.random.default_rng([self.seed, 2]), (1.5, 8.0), lambda r: ())
        if cell is not None:
            # Drawn above all the same, so the rest of the recording (operator, noise, scenes)
            # is the one its seed gives either way; the cell replaces what it fixes.
            fixed = np.random.default_rng([int(cell), 3])
            self.view = _View.draw(fixed, size, jitter=np.random.default_rng([self.seed, 3]))
            light = np.array([fixed.uniform(-0.6, 0.6), fixed.uniform(-0.7, 0.2), 1.0])
            self.light = light / np.linalg.norm(light)
            self.bench = _tint(fixed, _BENCHES, 12.0)
            self.backdrop = _tint(fixed, _BACKDROPS, 8.0)
            self.lamp_at = np.array([fixed.choice([-0.8, 0.8]) + fixed.uniform(-0.1, 0.1),
                                     0.82, 0.55])
        self.background = self._environment()

    def _environment(self) -> np.ndarray:
        """The static cell: backdrop panels, the bench with its grid and hazard band, a post."""
        h, w = self.size
        view = self.view
        rows = np.linspace(0.7, 1.1, h)[:, None, None]
        img = np.clip(np.broadcast_to(self.backdrop * rows, (h, w, 3)), 0, 255).astype(np.uint8)
        img = np.ascontiguousarray(img)
        for k, x in enumerate(np.arange(-3.0, 3.0, 0.6)):
            view.polygon(img, [(x, 0.95, 0), (x + 0.57, 0.95, 0), (x + 0.57, 0.95, 2.5),
                               (x, 0.95, 2.5)], self.backdrop * (1.45 if k % 2 else 1.2))
        view.polygon(img, [(-3, -1.2, 0), (3, -1.2, 0), (3, 0.95, 0), (-3, 0.95, 0)], self.bench)
        thickness = max(1, min(h, w) // 160)
        for x in np.arange(-2.5, 2.51, 0.25):
            view.line(img, (x, -1.2, 0), (x, 0.95, 0), self.bench * 0.8, thickness)
        for y in np.arange(-1.0, 0.95, 0.25):
            view.line(img, (-3, y, 0), (3, y, 0), self.bench * 0.8, thickness)
        for k, x in enumerate(np.arange(-3.0, 3.0, 0.12)):
            view.polygon(img, [(x, 0.78, 0), (x + 0.12, 0.78, 0), (x + 0.18, 0.93, 0),
                               (x + 0.06, 0.93, 0)], (235, 200, 30) if k % 2 else (25, 25, 25))
        lx, ly, lz = self.lamp_at
        _box((0.05, 0.05, lz), (lx, ly, lz / 2), (90, 90, 95), np.eye(4)).draw(
            img, view, self.light)
        return img

    def gain(self, t: float) -> float:
        return self.exposure * (1.0 + sum(a * math.sin(2 * math.pi * t / p + f)
                                          for a, p, f in self.drift))

    def shake(self, t: float) -> tuple[float, float]:
        """The image offset in pixels at time t: a damped wobble for a moment after each jolt."""
        _, start, payload = self.shakes.before(t)
        if not payload or t - start >= payload[0]:
            return 0.0, 0.0
        length, amplitude, f1, f2 = payload
        tau = t - start
        decay = amplitude * math.exp(-4.0 * tau / length)
        return (decay * math.sin(2 * math.pi * 11.0 * tau + f1),
                decay * math.sin(2 * math.pi * 8.0 * tau + f2))

    def frame(self, scene: _Scene, i: int, *, t: float, key: int) -> np.ndarray:
        """Base frame i of `scene` seen at recording time t; `key` seeds the sensor noise."""
        img = self.background.copy()
        count, _, _ = self.lamp.before(t)
        self.view.ball(img, self.lamp_at, 0.06, _LAMPS[count % 2], self.light)
        scene.draw(img, i, self)
        dx, dy = self.shake(t)
        h, w = self.size
        if dx or dy:
            img = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        rng = np.random.default_rng([self.seed, key])
        grey = rng.standard_normal((h, w, 1), dtype=np.float32)
        colour = rng.standard_normal((h, w, 3), dtype=np.float32)
        out = img.astype(np.float32) * np.float32(self.gain(t))
        out += np.float32(self.noise) * (0.8 * grey + 0.45 * colour)
        return np.clip(out, 0, 255).astype(np.uint8)


# --- fixtures: solids and the point the hand grips, at progress p (pairs) or time t ----------

def _slider(s: _Scene, p: float) -> tuple[list[_Solid], np.ndarray]:
    c, f = s.colours, s.pose
    y = -0.3 + 0.6 * p  # the carriage moves away from the operator
    rail = [_box((0.12, 0.94, 0.06), (0, 0, 0.03), c['rail'], f),
            _box((0.22, 0.05, 0.12), (0, 0.5, 0.06), c['rail'] * 0.8, f)]
    carriage = [_box((0.3, 0.24, 0.14), (0, y, 0.13), c['part'], f),
                _box((0.16, 0.05, 0.05), (0, y - 0.145, 0.16), c['accent'], f),
                _box((0.22, 0.05, 0.12), (0, -0.5, 0.06), c['rail'] * 0.8, f)]
    return rail + carriage, _apply(f, [0, y - 0.2, 0.2])


def _lever(s: _Scene, p: float) -> tuple[list[_Solid], np.ndarray]:
    c = s.colours
    angle = s.lever[0] + p * (s.lever[1] - s.lever[0])  # from lying sideways to upright
    arm = s.pose @ _move(-0.05, 0, 0.2) @ _turn('y', -angle)
    solids = [_box((0.22, 0.24, 0.22), (0, 0, 0.11), c['base'], s.pose),
              _box((0.46, 0.07, 0.07), (0.23, 0, 0), c['part'], arm),
              _prism(_disc(0.06, (0.49, 0.0)), -0.06, 0.06, c['accent'], arm)]
    return solids, _apply(arm, [0.36, -0.07, 0.05])


def _peg(s: _Scene, p: float) -> tuple[list[_Solid], np.ndarray]:
    c, f = s.colours, s.pose
    # bottom of the peg: standing beside the block, lifted, over the hole, pushed in
    keys = np.array([(0.38, -0.2, 0.0), (0.38, -0.2, 0.26), (0.0, 0.0, 0.26), (0.0, 0.0, -0.06)])
    u = p * 3.0
    k = min(int(u), 2)
    x, y, z = keys[k] + _ease(u - k) * (keys[k + 1] - keys[k])
    top = 0.14
    hole = (_apply(f, np.column_stack([_disc(0.075), np.full(10, top + 1e-3)])), c['accent'])
    solids = [_box((0.44, 0.3, top), (0, 0, top / 2), c['base'], f, mark=hole)]
    over_hole = math.hypot(x, y) < 0.08
    z0, z1 = (max(z, top) if over_hole else z), z + 0.34
    if z1 > z0:
        solids.append(_prism(_disc(0.055, (x, y)), z0, z1, c['part'], f))
    return solids, _apply(f, [x, y - 0.03, z1 + 0.06])


def _plate(s: _Scene, t: float) -> tuple[list[_Solid], np.ndarray]:
    c, f = s.colours, s.pose
    a = s.direction * 2 * math.pi * s.rate * t + s.phase
    x, y = s.orbit[0] * math.cos(a), s.orbit[1] * math.sin(a)
    pad = f @ _move(x, y, 0.03) @ _turn('z', 0.3 * math.sin(a))
    shine = (_apply(f, [(-0.3, 0.12, 0.031), (-0.08, 0.24, 0.031), (-0.02, 0.24, 0.031),
                        (-0.24, 0.12, 0.031)]), c['accent'])
    solids = [_box((0.74, 0.54, 0.03), (0, 0, 0.015), c['base'], f, mark=shine),
              _box((0.22, 0.15, 0.07), (0, 0, 0.035), c['part'], pad)]
    return solids, _apply(pad, [0, 0, 0.12])


def _hammer(s: _Scene, t: float) -> tuple[list[_Solid], np.ndarray]:
    c, f = s.colours, s.pose
    # taps: the head rests on the nail at each zero of the rectified sine
    angle = s.swing * abs(math.sin(math.pi * s.rate * t + s.phase)) ** 0.7
    # the forearm lifts with the swing
    wrist = f @ _move(-0.4 - 0.08 * angle, 0, 0.265 + 0.18 * angle) @ _turn('y', -angle)
    solids = [_box((0.28, 0.3, 0.1), (0, 0, 0.05), c['base'], f),
              _prism(_disc(0.018), 0.1, 0.16, c['accent'] * 1.6, f),
              _prism(_disc(0.036), 0.16, 0.175, c['accent'] * 1.6, f),
              _box((0.46, 0.045, 0.045), (0.2, 0, 0), c['part'], wrist),
              _box((0.13, 0.13, 0.18), (0.4, 0, 0), c['accent'], wrist)]
    return solids, _apply(wrist, [-0.02, -0.03, 0.0])


_DRAW: dict[str, Callable[[_Scene, float], tuple[list[_Solid], np.ndarray]]] = {
    'push': _slider, 'raise': _lever, 'insert': _peg, 'polish': _plate, 'hammer': _hammer}


@dataclass
class _Scene:
    """All random parameters of one action (or idle gap); frames are pure in (scene, index)."""

    base: str  # the action drawn; reversed classes draw their base backwards
    reverse: bool
    num_frames: int
    fps: float
    fixture: str  # the fixture in view ('' = bare bench)
    pose: np.ndarray  # (4, 4) the fixture on the bench
    colours: dict[str, np.ndarray]
    approach: float  # pairs: fractions of the clip the hand spends reaching in / leaving
    withdraw: float
    warp: float  # pairs: exponent on the progress, a speed profile
    away: np.ndarray  # (3,) hand offset when away from the grip
    lever: tuple[float, float]  # lever angles at rest and raised (rad)
    orbit: tuple[float, float]  # polish: half axes of the circle
    rate: float  # periodic: cycles per second (0 = still)
    phase: float
    direction: int  # polish: +1 / -1
    swing: float  # hammer: highest angle of the head (rad)
    rest: float = 0.0  # idle: the progress the fixture rests at
    hand: bool = True  # idle: the hand rests on the fixture
    part: tuple[float, ...] = ()  # idle: the sliding part x, y, vx, vy (per second)
    part_colour: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def draw(self, img: np.ndarray, i: int, rec: _Recording) -> None:
        x = i / max(self.num_frames - 1, 1)
        t = i / self.fps
        solids, hand = [], None
        if self.base == BACKGROUND:
            if self.fixture:
                periodic = self.fixture in NON_SYMMETRIC
                solids, grip = _DRAW[self.fixture](self, 0.0 if periodic else self.rest)
                if self.hand:
                    hand = grip + 0.008 * math.sin(2 * math.pi * 0.4 * t + self.phase)
            px, py, vx, vy = self.part
            solids.append(_prism(_disc(0.045, (px + vx * t, py + vy * t), 6), 0.0, 0.035,
                                 self.part_colour, np.eye(4)))
        elif self.base in NON_SYMMETRIC:
            solids, hand = _DRAW[self.base](self, t)
        else:
            a, w = self.approach, self.withdraw
            if x < a:
                p, reach = 0.0, _ease(x / a)
            elif x > 1.0 - w:
                p, reach = 1.0, _ease((1.0 - x) / w)
            else:
                p, reach = _ease(((x - a) / (1.0 - a - w)) ** self.warp), 1.0
            solids, grip = _DRAW[self.base](self, p)
            hand = grip + (1.0 - reach) * self.away
        for solid in solids:
            solid.draw(img, rec.view, rec.light)
        if hand is not None:
            (ph,), (depth,) = rec.view.project(hand[None])
            elbow = hand + np.array([0.08, -0.6, 0.3])
            width = max(2, int(round(rec.view.focal * 0.1 / depth)))
            rec.view.line(img, hand, elbow, rec.sleeve, width)
            rec.view.ball(img, hand, 0.07, rec.glove, rec.light)


def _scene(action: str, *, rng: np.random.Generator, num_frames: int, fps: float) -> _Scene:
    if action not in LABELS:
        raise ValueError(f'unknown action {action!r}; actions are {list(LABELS)}')
    if num_frames < 2:
        raise ValueError(f'num_frames={num_frames}: an action needs at least 2 frames')
    base = _REVERSED_OF.get(action, action)
    fixture = str(rng.choice(_FIXTURES + ('',))) if base == BACKGROUND else base
    mirror = np.diag([float(rng.choice([-1.0, 1.0])), 1.0, 1.0, 1.0])
    pose = (_move(rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), 0.0)
            @ _turn('z', rng.uniform(-0.35, 0.35)) @ mirror)
    colours = {name: _tint(rng, choices) for name, choices in _PALETTE[fixture].items()}
    scene = _Scene(
        base=base, reverse=action in _REVERSED_OF, num_frames=num_frames, fps=fps,
        fixture=fixture, pose=pose, colours=colours,
        approach=float(rng.uniform(0.05, 0.2)), withdraw=float(rng.uniform(0.05, 0.2)),
        warp=float(rng.uniform(0.7, 1.4)),
        away=np.array([rng.uniform(-0.15, 0.15), -0.35, rng.uniform(0.2, 0.35)]),
        lever=(math.radians(rng.uniform(0.0, 12.0)), math.radians(rng.uniform(80.0, 100.0))),
        orbit=(float(rng.uniform(0.14, 0.22)), float(rng.uniform(0.09, 0.15))),
        rate=float(rng.uniform(0.6, 1.4) if base == 'polish' else rng.uniform(1.2, 2.5)),
        phase=float(rng.uniform(0, 2 * math.pi)), direction=int(rng.choice([-1, 1])),
        swing=math.radians(rng.uniform(35.0, 60.0)))
    if base == BACKGROUND:
        scene.rate, scene.rest = 0.0, float(rng.choice([0.0, 1.0]))
        if fixture == 'hammer':
            scene.phase = 0.0  # the head lies on the nail
        scene.hand = bool(fixture) and bool(rng.random() < 0.5)
        speed, heading = rng.uniform(0.03, 0.12), rng.uniform(0, 2 * math.pi)
        scene.part = (float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.35, -0.2)),
                      speed * math.cos(heading), speed * math.sin(heading))
        scene.part_colour = _rgb(_tint(rng, ((170, 170, 180), (200, 160, 70)), 20.0))
    return scene


def render_clip(action: str, *, rng: np.random.Generator, num_frames: int,
                size: tuple[int, int] = DEFAULT_SIZE, fps: float = CLIP_FPS) -> np.ndarray:
    """One whole action seen by its own recording: (num_frames, H, W, 3) uint8 RGB.

    A reversed class is its base clip backwards, camera effects and noise included.
    """
    h, w = size
    if h < 32 or w < 32:
        raise ValueError(f'size={size}: frames must be at least 32x32')
    rec = _Recording(rng, (int(h), int(w)))
    scene = _scene(action, rng=rng, num_frames=num_frames, fps=fps)
    order = range(num_frames - 1, -1, -1) if scene.reverse else range(num_frames)
    return np.stack([rec.frame(scene, i, t=i / fps, key=i) for i in order])


class WorkcellStream:
    """An endless camera over one workcell: random actions with idle gaps between them.

    Each action lasts DURATION_RANGE (0.8x to 3x) `window_seconds`, drawn per action; each idle
    gap (the background class, `idle`) lasts a time drawn uniformly from `idle_seconds` =
    (shortest, longest); (0, 0) puts the actions back to back. Streams of one `cell` (an
    integer >= 0) watch the same bench from the same camera (see _Recording); without it each
    is a cell of its own. Iterating yields (frame RGB uint8 (H, W, 3), t seconds since start,
    label); frames are drawn lazily, one per step.
    """

    def __init__(self, *, seed: int = 0, fps: float = 30.0, size: tuple[int, int] = DEFAULT_SIZE,
                 window_seconds: float = 2.0, actions: tuple[str, ...] = ACTIONS,
                 idle_seconds: tuple[float, float] = IDLE_SECONDS,
                 cell: int | None = None) -> None:
        if not (0 < fps < math.inf and 0 < window_seconds < math.inf):  # NaN fails too
            raise ValueError(f'fps={fps}, window_seconds={window_seconds}: both must be finite '
                             'and > 0')
        lo, hi = (float(v) for v in idle_seconds)
        if not 0.0 <= lo <= hi < math.inf:
            raise ValueError(f'idle_seconds={tuple(idle_seconds)}: need 0 <= shortest <= longest')
        unknown = sorted(set(actions) - set(ACTIONS))
        if not actions or unknown:
            raise ValueError(f'actions {unknown or "(none)"}: choose from {list(ACTIONS)}')
        h, w = size
        if h < 32 or w < 32:
            raise ValueError(f'size={size}: frames must be at least 32x32')
        if cell is not None and (isinstance(cell, bool) or not isinstance(cell, int)
                                 or cell < 0):
            raise ValueError(f'cell={cell!r}: must be an integer >= 0')
        shortest, longest = (r * window_seconds * fps for r in DURATION_RANGE)
        self.action_frames = (max(2, math.ceil(shortest - 1e-9)), math.floor(longest + 1e-9))
        if self.action_frames[0] > self.action_frames[1]:
            raise ValueError(f'window_seconds={window_seconds} at fps={fps}: an action of '
                             f'{DURATION_RANGE[0]}-{DURATION_RANGE[1]} windows needs 2 frames')
        self.idle_frames = (math.ceil(lo * fps - 1e-9), math.floor(hi * fps + 1e-9))
        self.rng = np.random.default_rng(seed)
        self.fps = float(fps)
        self.size = (int(h), int(w))
        self.window_seconds = float(window_seconds)
        self.actions = tuple(actions)
        self.idle_seconds = (lo, hi)
        self.recording = _Recording(self.rng, self.size, cell)
        self._segments: list[tuple[float, float, str]] = []

    def segments(self) -> list[tuple[float, float, str]]:
        """(start, end, label) in seconds of every segment (action or idle gap) begun so far."""
        return list(self._segments)

    def _frames(self, bounds: tuple[int, int], seconds: tuple[float, float]) -> int:
        frames = int(round(self.rng.uniform(*seconds) * self.fps))
        return min(max(frames, bounds[0]), bounds[1])

    def __iter__(self) -> Iterator[tuple[np.ndarray, float, str]]:
        index = 0
        while True:
            label = self.actions[int(self.rng.integers(len(self.actions)))]
            parts = [(label, self._frames(self.action_frames, tuple(
                r * self.window_seconds for r in DURATION_RANGE)))]
            if self.idle_seconds[1] > 0:
                idle = self._frames(self.idle_frames, self.idle_seconds)
                parts.append((BACKGROUND, idle if idle >= 2 else 0))
            for name, frames in parts:
                if not frames:
                    continue
                scene = _scene(name, rng=self.rng, num_frames=frames, fps=self.fps)
                start = index / self.fps
                self._segments.append((start, (index + frames) / self.fps, name))
                for k in range(frames):
                    i = frames - 1 - k if scene.reverse else k
                    yield (self.recording.frame(scene, i, t=index / self.fps, key=index),
                           index / self.fps, name)
                    index += 1
