"""Evaluation: clip accuracy (symmetric / non-symmetric, reversed) and stream metrics, the
replay of predictions through the decision stage, and their plots. Built on the wings below."""
