"""Accuracy on symmetric / non-symmetric classes, order sensitivity, per-class confusions.

`symmetric` classes are those in a symmetric pair (paper: "nearly symmetric actions"). The
`reversed` block is the same accuracy with every window's frames played last-to-first: an
order-aware head drops there (a reversed `pick_up` looks like `put_down`), a probe does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int
                     ) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def _accuracies(targets: np.ndarray, predictions: np.ndarray, symmetric: np.ndarray) -> dict:
    correct = targets == predictions
    is_sym = symmetric[targets]

    def mean(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    return dict(overall=mean(np.ones_like(correct)), symmetric=mean(is_sym),
                non_symmetric=mean(~is_sym))


def accuracy_report(*, targets: np.ndarray, forward: np.ndarray, reverse: np.ndarray,
                    labels: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> dict:
    """Predicted class ids of the forward and reversed windows -> the report dictionary."""
    targets, forward, reverse = (np.asarray(a, dtype=np.int64) for a in (targets, forward,
                                                                          reverse))
    if len(targets) == 0:
        raise ValueError('no clips to evaluate')
    in_pair = {name for pair in pairs for name in pair}
    symmetric = np.array([name in in_pair for name in labels])
    matrix = confusion_matrix(targets, forward, len(labels))
    reversed_matrix = confusion_matrix(targets, reverse, len(labels))
    per_class = {}
    for c, name in enumerate(labels):
        support = int(matrix[c].sum())
        if not support:
            continue
        others = matrix[c].copy()
        others[c] = 0
        confused = int(others.argmax())
        per_class[name] = dict(
            accuracy=float(matrix[c, c] / support), support=support, symmetric=bool(symmetric[c]),
            most_confused=labels[confused] if others[confused] else None,
            confusion_rate=float(others[confused] / support),
            reversed_accuracy=float(reversed_matrix[c, c] / support),
            reversed_as=labels[int(reversed_matrix[c].argmax())])
    return dict(clips=int(len(targets)), labels=list(labels),
                symmetric_pairs=[list(p) for p in pairs],
                accuracy=_accuracies(targets, forward, symmetric),
                reversed=_accuracies(targets, reverse, symmetric),
                per_class=per_class, confusion=matrix.tolist(),
                reversed_confusion=reversed_matrix.tolist())


def _pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def report_markdown(report: dict, *, title: str) -> str:
    """report.md: the three accuracies forward and reversed, then paper Table III per class."""
    acc, rev = report['accuracy'], report['reversed']
    lines = [f'# {title}', '', f"{report['clips']} clips; accuracy in %.", '',
             '| | symmetric | non-symmetric | overall |', '|---|---:|---:|---:|',
             f"| forward | {_pct(acc['symmetric'])} | {_pct(acc['non_symmetric'])} | "
             f"{_pct(acc['overall'])} |",
             f"| reversed frames | {_pct(rev['symmetric'])} | {_pct(rev['non_symmetric'])} | "
             f"{_pct(rev['overall'])} |", '']
    if 'params' in report:
        lines += [f"Trainable parameters: {report['params']:,}", '']
    if 'calibration' in report:
        c = report['calibration']
        lines += [f"Calibration (15-bin ECE of the top-1 confidence): {c['ece_uncalibrated']:.4f} "
                  f"uncalibrated, {c['ece']:.4f} with the head's temperature "
                  f"T = {c['temperature']:.3f} (reliability.png).", '']
    lines += ['| class | sym | accuracy | most confused with | rate | reversed acc | '
              'reversed predicted as |', '|---|:-:|---:|---|---:|---:|---|']
    for name, row in report['per_class'].items():
        lines.append(f"| {name} | {'yes' if row['symmetric'] else ''} | "
                     f"{_pct(row['accuracy'])} | {row['most_confused'] or '-'} | "
                     f"{_pct(row['confusion_rate'])} | {_pct(row['reversed_accuracy'])} | "
                     f"{row['reversed_as']} |")
    return '\n'.join(lines) + '\n'


def plot_confusion(path: str | Path, matrix: list | np.ndarray, labels: list[str], *,
                   title: str) -> Path:
    """Row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use('Agg')
    matplotlib.rcParams['text.parse_math'] = False  # labels are plain text ('$' too)
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap='Blues')
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha='right')
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(j, i, f'{rates[i, j]:.2f}', ha='center', va='center', fontsize=7,
                        color='white' if rates[i, j] > 0.5 else 'black')
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
