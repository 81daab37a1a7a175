"""Attack metrics over membership scores, computed on the host.

A score is "higher = more likely a member". ``attack_metrics`` gives the figures
the privacy evaluation reports with every attack result: ROC AUC, balanced accuracy
max(1 - (FPR + FNR) / 2), advantage max |TPR - FPR|, TPR at FPR = 1%, 0.1% and
0.001% (the last only with >= 1e5 non-members, NaN otherwise), and the member
and non-member counts. TPR at FPR = x is the largest TPR among ROC points with
FPR <= x (the LiRA convention). ``plot_roc`` draws log-log ROC curves to a PNG.
The ROC itself is always scikit-learn's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# scikit-learn and matplotlib are imported where used: a run without a
# privacy: section never pays their second of import time.

# (column, FPR bound, non-members needed before the figure is reported)
_LOW_FPR = (
    ("tpr_at_fpr_1pct", 1e-2, 0),
    ("tpr_at_fpr_0.1pct", 1e-3, 0),
    ("tpr_at_fpr_0.001pct", 1e-5, 100_000),
)
METRIC_KEYS = (
    "auc",
    "balanced_accuracy",
    "advantage",
    *(name for name, _, _ in _LOW_FPR),
    "members",
    "nonmembers",
)


def _labelled(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """(labels (m + k,), scores (m + k,)): 1 for members; ValueError if empty."""
    members = np.asarray(member_scores, np.float64).reshape(-1)  # (m,)
    nonmembers = np.asarray(nonmember_scores, np.float64).reshape(-1)  # (k,)
    missing = [
        side
        for side, scores in (("member", members), ("non-member", nonmembers))
        if scores.size == 0
    ]
    if missing:
        raise ValueError(
            f"attack metrics need scores; no {' or '.join(missing)} scores"
        )
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    return labels, np.concatenate([members, nonmembers])


def roc(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), each (points,), from sklearn.metrics.roc_curve.

    scikit-learn drops collinear intermediate points; every corner stays, so
    maxima over thresholds (and TPR at an FPR bound) read off it are exact.
    """
    from sklearn import metrics as skm

    labels, scores = _labelled(member_scores, nonmember_scores)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, bound: float) -> float:
    """The largest TPR among ROC points with FPR <= bound."""
    return float(np.max(tpr[fpr <= bound]))  # (0, 0) is always a point


def attack_metrics(member_scores, nonmember_scores) -> dict[str, float | int]:
    """The METRIC_KEYS figures of an attack, from its scores on both sides.

    Args:
        member_scores: (m,) scores of the training members.
        nonmember_scores: (k,) scores of the non-members.

    Returns:
        {key: value} for every key of METRIC_KEYS, in that order: floats, but
        the two counts are ints; ``tpr_at_fpr_0.001pct`` is NaN with fewer
        than 1e5 non-members.
    """
    from sklearn import metrics as skm

    labels, scores = _labelled(member_scores, nonmember_scores)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    nonmembers = int(labels.size - labels.sum())
    out = {
        "auc": float(skm.roc_auc_score(labels, scores)),
        "balanced_accuracy": float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)),
        "advantage": float(np.max(np.abs(tpr - fpr))),
    }
    for name, bound, needed in _LOW_FPR:
        out[name] = tpr_at_fpr(fpr, tpr, bound) if nonmembers >= needed else np.nan
    out["members"] = int(labels.sum())
    out["nonmembers"] = nonmembers
    return out


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = ""
) -> Path:
    """Writes log-log ROC curves, {label: (fpr, tpr)}, to the PNG at ``path``.

    Zero rates are drawn at the smallest positive FPR of any curve (or 1e-5)
    so that the low-FPR end stays on the axes; the legend gives each AUC.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn import metrics as skm

    positive = [f[f > 0] for f, _ in curves.values()]
    floor = min([1e-5, *(float(p.min()) for p in positive if p.size)])
    figure = Figure(figsize=(5, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (fpr, tpr) in curves.items():
        area = skm.auc(fpr, tpr)
        axes.plot(
            np.maximum(fpr, floor),
            np.maximum(tpr, floor),
            label=f"{label} (AUC {area:.3f})",
        )
    axes.plot([floor, 1.0], [floor, 1.0], "k--", linewidth=0.8, label="chance")
    axes.set(xscale="log", yscale="log", xlim=(floor, 1.0), ylim=(floor, 1.0))
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    axes.legend(loc="lower right")
    path = Path(path)
    figure.savefig(path, format="png", dpi=100)
    return path
