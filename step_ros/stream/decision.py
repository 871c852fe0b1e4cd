"""The decision stage: raw per-window probabilities in, a stable label and START/END events out.

A raw prediction classifies the newest window of T frames; at a transition it flickers and it
lags the truth by about half a window. One `Decider` per (camera, task) turns that stream into
what a planner can act on:

- smoothing: an exponential moving average of the probabilities over header time (time
  constant `smoothing_seconds`; the gap between stamps sets the weight, so the result does not
  depend on the prediction rate);
- hysteresis: a label becomes a candidate when its smoothed probability reaches
  `enter_threshold`, becomes ACTIVE (START) after holding `min_dwell_seconds`, and ends (END) when
  its smoothed probability drops below `exit_threshold` or another label has held for the dwell;
- abstention: with no active action, a top-1 below `min_confidence` (raw or smoothed), or a raw
  prediction flagged ambiguous (symmetric pair), is UNCERTAIN and starts nothing;
- background: the background label (e.g. `none`) never starts an action; when it wins, IDLE.

Event stamps are backdated by the latency the window and the smoothing imply. A head names a
new segment `switch_fraction` of its window back from the newest frame, as its training labels
taught it (its checkpoint says: 0.5, the window's middle, for `extract --straddle majority`;
3/8 for `--straddle newest`), so its top-1 switches that long after a change. The EMA's step
response then needs `smoothing_seconds * ln(1 / (1 - enter_threshold))` to rise to
`enter_threshold` (START) and `smoothing_seconds * ln(1 / exit_threshold)` for the ending
action's probability to fall to `exit_threshold` (END).

ROS-free and numpy only: the node, `bag-eval` and the demo decide with this same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum

import numpy as np

START = 'start'
END = 'end'
MAX_SECONDS = 60.0  # bound of smoothing_seconds and min_dwell_seconds


@dataclass(frozen=True)
class DecisionConfig:
    smoothing_seconds: float = 0.5  # EMA time constant over header time (0 = off)
    enter_threshold: float = 0.5  # smoothed prob a label needs to become a candidate
    exit_threshold: float = 0.2  # active label ends when its smoothed prob drops below
    min_dwell_seconds: float = 0.125  # a candidate must hold this long before START
    min_confidence: float = 0.4  # below this (raw or smoothed top-1) the state is 'uncertain'

    def validate(self) -> DecisionConfig:
        """Raise ValueError naming the field and its value; return self when valid."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f'{f.name}={value!r}: expected a finite number')
        for name in ('smoothing_seconds', 'min_dwell_seconds'):
            if not 0.0 <= getattr(self, name) <= MAX_SECONDS:
                raise ValueError(f'{name}={getattr(self, name)}: must be in '
                                 f'[0, {MAX_SECONDS:g}] seconds')
        # A probability never reaches 1: a threshold of 1 would start (or hold back) nothing.
        for name in ('enter_threshold', 'exit_threshold', 'min_confidence'):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f'{name}={getattr(self, name)}: must be in [0, 1) (a '
                                 'probability never reaches 1)')
        if not 0.0 < self.enter_threshold:
            raise ValueError(f'enter_threshold={self.enter_threshold}: must be > 0')
        if self.exit_threshold > self.enter_threshold:
            raise ValueError(f'exit_threshold={self.exit_threshold}: must be <= enter_threshold '
                             f'({self.enter_threshold})')
        return self


class State(str, Enum):
    WARMING_UP = 'warming_up'  # the engine has no full window yet
    IDLE = 'idle'  # nothing is happening (background, or no label holds)
    ACTIVE = 'active'  # a stable action: stable_label
    UNCERTAIN = 'uncertain'  # low confidence or an ambiguous symmetric pair, no action active


@dataclass(frozen=True)
class ActionEvent:
    task: str
    label: str
    kind: str  # 'start' | 'end'
    stamp_ns: int  # estimated onset (start) or offset (end), backdated
    decided_ns: int  # header stamp of the window it was decided on (newest frame)
    window_start_ns: int  # oldest frame of that window
    confidence: float  # start: smoothed prob when decided; end: mean smoothed prob while active
    duration_s: float  # on 'end': offset - onset; 0.0 on 'start'


@dataclass(frozen=True)
class Decision:
    state: State
    stable_label: str  # '' unless ACTIVE
    stable_confidence: float  # smoothed probability of stable_label; 0.0 unless ACTIVE
    stable_since_ns: int  # 0 unless ACTIVE (the onset estimate)
    events: tuple[ActionEvent, ...]


WARMING_UP = Decision(state=State.WARMING_UP, stable_label='', stable_confidence=0.0,
                      stable_since_ns=0, events=())


class Decider:
    """The decision state of one task on one camera; call `update` once per raw prediction."""

    def __init__(self, *, task: str, labels: Sequence[str], background: str | None,
                 config: DecisionConfig, window_ns: int, switch_fraction: float = 0.5) -> None:
        config.validate()
        self.labels = tuple(labels)
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f'labels={list(self.labels)!r}: need two or more distinct labels')
        if background is not None and background not in self.labels:
            raise ValueError(f'background={background!r}: not one of {list(self.labels)}')
        if window_ns < 0:
            raise ValueError(f'window_ns={window_ns}: must be >= 0')
        if not 0.0 < switch_fraction <= 1.0:
            raise ValueError(f'switch_fraction={switch_fraction}: must be in (0, 1]')
        self.task = task
        self.background = background
        self.background_id = None if background is None else self.labels.index(background)
        self.config = config
        self.window_ns = int(window_ns)
        self.switch_ns = switch_fraction * self.window_ns
        self.tau_ns = config.smoothing_seconds * 1e9
        self._clear()

    def retune(self, config: DecisionConfig) -> None:
        """New thresholds and times from the next update on; the smoothed probabilities and
        the active action carry over."""
        self.config = config.validate()
        self.tau_ns = config.smoothing_seconds * 1e9

    # Latency model (see the module docstring), in nanoseconds.
    def start_lag_ns(self) -> int:
        return self._lag_ns(1.0 - self.config.enter_threshold)

    def end_lag_ns(self) -> int:
        return self._lag_ns(self.config.exit_threshold)

    def _lag_ns(self, remaining: float) -> int:
        """The head's switch point, then the EMA's step response until `remaining` is left."""
        # enter_threshold = 1 or exit_threshold = 0 is never crossed by an EMA: no event to date.
        ema = self.tau_ns * math.log(1.0 / max(remaining, 1e-6))
        return int(round(self.switch_ns + ema))

    def _clear(self) -> None:
        self.smoothed: np.ndarray | None = None
        self.last_stamp: int | None = None
        self.last_window_start = 0
        self.active: int | None = None  # label id of the active action
        self.active_since = 0  # onset estimate
        self.active_conf_sum = 0.0
        self.active_updates = 0
        self.candidate: int | None = None
        self.candidate_since = 0  # stamp at which the candidate first reached enter_threshold
        self.last_end_ns: int | None = None  # offset estimate of the previous action
        self.first_ns: int | None = None  # oldest frame of the stream: no onset before it

    def warming_up(self) -> Decision:
        return WARMING_UP

    def reset(self, *, last_frame_ns: int | None = None) -> list[ActionEvent]:
        """Stream restart (stamps went back, a gap) or stop (no input): END an open action at the
        last stamp seen, or at `last_frame_ns` (the newest frame of the stream) when later."""
        events = []
        if self.active is not None and self.last_stamp is not None:
            offset = self.last_stamp if last_frame_ns is None else \
                max(self.last_stamp, last_frame_ns)
            events.append(self._end(offset=offset, decided=offset,
                                    window_start=self.last_window_start))
        self._clear()
        return events

    def update(self, *, probs: np.ndarray, stamp_ns: int, window_start_ns: int,
               ambiguous: bool) -> Decision:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(self.labels),) or not np.isfinite(probs).all():
            raise ValueError(f'probs: expected {len(self.labels)} finite probabilities, got '
                             f'shape {probs.shape}')
        events: list[ActionEvent] = []
        if self.last_stamp is not None and stamp_ns < self.last_stamp:
            events += self.reset()  # time went back: a new stream
        if self.first_ns is None:
            self.first_ns = window_start_ns
        if self.smoothed is None or self.tau_ns == 0:
            self.smoothed = probs.copy()
        else:
            alpha = 1.0 - math.exp(-(stamp_ns - self.last_stamp) / self.tau_ns)
            self.smoothed += alpha * (probs - self.smoothed)
        self.last_stamp = stamp_ns
        self.last_window_start = window_start_ns
        s = self.smoothed
        cfg = self.config
        top = int(np.argmax(s))
        uncertain = ambiguous or float(probs.max()) < cfg.min_confidence \
            or float(s[top]) < cfg.min_confidence

        # Candidate: the smoothed top-1 at or above enter, other than the active one.
        if s[top] >= cfg.enter_threshold and top != self.active:
            if top != self.candidate:
                self.candidate, self.candidate_since = top, stamp_ns
        else:
            self.candidate = None

        # The active action ends when it fades below exit ...
        if self.active is not None and s[self.active] < cfg.exit_threshold:
            offset = stamp_ns - self.end_lag_ns()
            events.append(self._end(offset=offset, decided=stamp_ns,
                                    window_start=window_start_ns))
        # ... or when a candidate has held for the dwell (background ends it, never starts).
        if self.candidate is not None and not uncertain \
                and stamp_ns - self.candidate_since >= cfg.min_dwell_seconds * 1e9:
            onset = self.candidate_since - self.start_lag_ns()
            if self.active is not None:
                events.append(self._end(offset=onset, decided=stamp_ns,
                                        window_start=window_start_ns))
            if self.candidate != self.background_id:
                events.append(self._start(self.candidate, onset=onset, decided=stamp_ns,
                                          window_start=window_start_ns))
            self.candidate = None

        if self.active is not None:
            self.active_conf_sum += float(s[self.active])
            self.active_updates += 1
            return Decision(state=State.ACTIVE, stable_label=self.labels[self.active],
                            stable_confidence=float(s[self.active]),
                            stable_since_ns=self.active_since, events=tuple(events))
        state = State.UNCERTAIN if uncertain else State.IDLE
        return Decision(state=state, stable_label='', stable_confidence=0.0, stable_since_ns=0,
                        events=tuple(events))

    def _start(self, label_id: int, *, onset: int, decided: int, window_start: int
               ) -> ActionEvent:
        if self.last_end_ns is not None:
            onset = max(onset, self.last_end_ns)
        # Backdating never reaches before the stream's first frame (sim time starting at 0).
        onset = min(max(onset, self.first_ns), decided)
        self.active, self.active_since = label_id, onset
        self.active_conf_sum, self.active_updates = 0.0, 0
        return ActionEvent(task=self.task, label=self.labels[label_id], kind=START,
                           stamp_ns=onset, decided_ns=decided, window_start_ns=window_start,
                           confidence=float(self.smoothed[label_id]), duration_s=0.0)

    def _end(self, *, offset: int, decided: int, window_start: int) -> ActionEvent:
        offset = min(max(offset, self.active_since), decided)
        mean = self.active_conf_sum / self.active_updates if self.active_updates else \
            float(self.smoothed[self.active])
        event = ActionEvent(task=self.task, label=self.labels[self.active], kind=END,
                            stamp_ns=offset, decided_ns=decided, window_start_ns=window_start,
                            confidence=float(mean),
                            duration_s=(offset - self.active_since) / 1e9)
        self.active = None
        self.last_end_ns = offset
        return event
