"""Detection metrics: frame AUC (primary), video AUC, EER, AP, ACC@0.5, bootstrap CIs."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """Equal error rate: where the false positive rate equals the false negative rate."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    # linear interpolation between the two ROC points around the crossing
    if i + 1 < len(fpr) and (fnr[i] - fpr[i]) * (fnr[i + 1] - fpr[i + 1]) < 0:
        d0, d1 = fnr[i] - fpr[i], fnr[i + 1] - fpr[i + 1]
        t = d0 / (d0 - d1)
        return float(fpr[i] + t * (fpr[i + 1] - fpr[i]))
    return float((fpr[i] + fnr[i]) / 2)


def video_level(scores: np.ndarray, labels: np.ndarray, video_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean frame score per video (and the video's label)."""
    acc: dict[str, list[float]] = defaultdict(list)
    lab: dict[str, int] = {}
    for s, y, v in zip(scores, labels, video_ids):
        acc[v].append(float(s))
        lab[v] = int(y)
    keys = sorted(acc)
    return np.array([np.mean(acc[k]) for k in keys]), np.array([lab[k] for k in keys])


def detection_metrics(scores: np.ndarray, labels: np.ndarray, video_ids: list[str] | None = None) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError("metrics need both real and fake frames")
    out = {
        "auc": float(roc_auc_score(labels, scores)),
        "eer": eer(labels, scores),
        "ap": float(average_precision_score(labels, scores)),
        "acc": float(np.mean((scores >= 0.5) == labels)),
        "n_frames": int(len(labels)),
    }
    if video_ids is not None:
        vs, vl = video_level(scores, labels, video_ids)
        out["video_auc"] = float(roc_auc_score(vl, vs)) if len(np.unique(vl)) == 2 and len(vl) < len(labels) else None
    return out


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC from average ranks (Mann-Whitney U), ties counted half; equals roc_auc_score."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc_ci(scores: np.ndarray, labels: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the frame AUC, resampling frames with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    scores, labels = np.asarray(scores), np.asarray(labels).astype(int)
    aucs = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() == labels[idx].max():
            continue
        aucs.append(rank_auc(scores[idx], labels[idx]))
    lo, hi = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def parity(sim_scores: np.ndarray, dep_scores: np.ndarray, labels: np.ndarray, quantile: float = 1.0) -> dict:
    """How far a deployed artifact is from the PyTorch simulation of the same model
    (`parity_quantile_abs`: the `quantile` of |p_sim - p_deployed| over frames)."""
    sim_scores, dep_scores = np.asarray(sim_scores), np.asarray(dep_scores)
    d = np.abs(sim_scores - dep_scores)
    return {
        "parity_max_abs": float(d.max()),
        "parity_quantile_abs": float(np.quantile(d, quantile)),
        "parity_mean_abs": float(d.mean()),
        "decision_agreement": float(np.mean((sim_scores >= 0.5) == (dep_scores >= 0.5))),
        "sim_auc": float(roc_auc_score(labels, sim_scores)),
        "deployed_auc": float(roc_auc_score(labels, dep_scores)),
    }
