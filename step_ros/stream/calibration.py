"""Confidence calibration: temperature scaling fitted by NLL, ECE and reliability diagrams.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides a
head's logits by one scalar T > 0 fitted on held-out windows; it changes no prediction, only how
much the confidences claim. ECE is the bin-weighted |accuracy - confidence| over equal-width
confidence bins of the top-1 prediction (15 bins, as in that paper).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # the search interval of the temperature


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), np.asarray(targets)].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, *, iterations: int = 60) -> float:
    """The T minimising the NLL: golden-section search on log T (the NLL is unimodal in it)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(targets) or not len(targets):
        raise ValueError(f'fit_temperature: logits {logits.shape} and targets {targets.shape} '
                         'must be (N, C) and (N,) with N > 0')
    lo, hi = (math.log(v) for v in T_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, targets, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, targets, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def reliability(confidences: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> dict:
    """Per-bin counts, mean confidence and accuracy over equal-width bins of (0, 1], and ECE."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f'reliability: confidences {conf.shape} and correct {hit.shape} differ')
    # Bin k holds (k/bins, (k+1)/bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    hit_sum = np.bincount(index, weights=hit, minlength=bins)
    safe = np.maximum(count, 1)
    mean_conf, accuracy = conf_sum / safe, hit_sum / safe
    n = len(conf)
    ece = float(np.sum(count / n * np.abs(accuracy - mean_conf))) if n else None
    return dict(bins=bins, count=count.tolist(), confidence=mean_conf.tolist(),
                accuracy=accuracy.tolist(), ece=ece)


def ece(confidences: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> float | None:
    """Expected calibration error; None without samples."""
    return reliability(confidences, correct, bins=bins)['ece']


def plot_reliability(path: str | Path, curves: dict[str, dict], *, title: str) -> Path:
    """Reliability diagram PNG: accuracy against confidence per bin, one line per curve."""
    import matplotlib

    matplotlib.use('Agg')
    matplotlib.rcParams['text.parse_math'] = False  # labels are plain text ('$' too)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color='grey', linestyle=':', label='perfect calibration')
    for name, curve in curves.items():
        count = np.asarray(curve['count'])
        used = count > 0
        ece_text = '-' if curve['ece'] is None else f"{curve['ece']:.3f}"
        ax.plot(np.asarray(curve['confidence'])[used], np.asarray(curve['accuracy'])[used],
                marker='o', label=f'{name} (ECE {ece_text})')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('confidence (top-1)')
    ax.set_ylabel('accuracy')
    ax.set_title(title)
    ax.legend(fontsize=8, loc='upper left')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
