"""Small statistics for reports: bootstrap confidence intervals, AUC, noise-aware drop test.

All intervals are percentile-bootstrap intervals; quantiles use the inverted empirical CDF
(the smallest value whose cumulative probability reaches q), so the exact and the Monte-Carlo
versions agree and hand cases can be checked with pencil and paper.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EXACT_MAX_N = 8  # n^n resamples enumerated as multisets: C(2n-1, n) = 6435 at n=8


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    return (1.0 - level) / 2.0


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """Inverted-CDF quantile of a discrete distribution (values with probabilities)."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cdf = np.cumsum(w) / w.sum()
    idx = int(np.searchsorted(cdf, q - 1e-12, side="left"))
    return float(v[min(idx, len(v) - 1)])


def exact_bootstrap_ci(x: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile CI over ALL n^n equally likely resamples (n <= EXACT_MAX_N).

    A resample is a multiset of counts c_1..c_n (sum n) with probability n!/(prod c_i!)/n^n.
    """
    a = np.asarray(x, dtype=float)
    n = len(a)
    if n == 0 or n > EXACT_MAX_N:
        raise ValueError(f"exact bootstrap needs 1..{EXACT_MAX_N} values, got {n}")
    alpha = _check_level(level)
    vals, probs = [], []
    log_nn = n * math.log(n)
    for combo in itertools.combinations_with_replacement(range(n), n):
        counts = np.bincount(combo, minlength=n)
        logp = math.lgamma(n + 1) - sum(math.lgamma(c + 1) for c in counts) - log_nn
        vals.append(float(stat(np.repeat(a, counts))))
        probs.append(math.exp(logp))
    return weighted_quantile(vals, probs, alpha), weighted_quantile(vals, probs, 1.0 - alpha)


def bootstrap_ci(x: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean,
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Monte-Carlo percentile bootstrap CI of `stat` (vectorised over resamples if it can be)."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    alpha = _check_level(level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    res = a[idx]
    try:
        reps = np.asarray(stat(res, axis=1), dtype=float)  # type: ignore[call-arg]
    except TypeError:
        reps = np.array([stat(r) for r in res], dtype=float)
    return (float(np.quantile(reps, alpha, method="inverted_cdf")),
            float(np.quantile(reps, 1.0 - alpha, method="inverted_cdf")))


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); labels 1 = fake."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(int)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs both classes (labels 0 and 1)")
    # Average ranks handle ties exactly.
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty_like(order, dtype=float)
    sorted_v = allv[order]
    i = 0
    while i < len(sorted_v):
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def bootstrap_auc_ci(scores: Sequence[float], labels: Sequence[int], level: float = 0.95,
                     n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap (positives and negatives resampled apart, so each replicate has both)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(int)
    alpha = _check_level(level)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs both classes (labels 0 and 1)")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    ones, zeros = np.ones(pos.size, int), np.zeros(neg.size, int)
    for b in range(n_boot):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = neg[rng.integers(0, neg.size, neg.size)]
        reps[b] = auc(np.concatenate([p, n]), np.concatenate([ones, zeros]))
    return (float(np.quantile(reps, alpha, method="inverted_cdf")),
            float(np.quantile(reps, 1.0 - alpha, method="inverted_cdf")))


def fps_ci(latency_ms: Sequence[float], level: float = 0.95, n_boot: int = 1000,
           seed: int = 0) -> tuple[float, float]:
    """CI of FPS = 1000 / mean latency, from the latency samples of one trial."""
    lo, hi = bootstrap_ci(latency_ms, np.mean, level=level, n_boot=n_boot, seed=seed)
    if lo <= 0:
        raise ValueError("latency samples must be positive milliseconds")
    return 1000.0 / hi, 1000.0 / lo


@dataclass(frozen=True)
class DropTest:
    """Outcome of comparing a current value with the same metric in earlier runs."""

    current: float
    baseline: float  # mean of earlier runs
    std: float  # sample std of earlier runs (0 with fewer than 2)
    n_earlier: int
    drop: float  # baseline - current (absolute), or relative to baseline when relative=True
    threshold: float  # max(tolerance, k * std [/ baseline])
    flagged: bool


def drop_test(current: float, earlier: Sequence[float], tolerance: float, k: float,
              relative: bool = False) -> DropTest | None:
    """Noise-aware regression test: flag when the drop exceeds max(tolerance, k * spread).

    The spread is the sample standard deviation of the earlier runs, so a metric that wobbles
    from night to night needs a larger drop to be flagged. None when there is no earlier run.
    """
    prev = np.asarray([v for v in earlier if v is not None and not math.isnan(v)], dtype=float)
    if prev.size == 0 or current is None or math.isnan(current):
        return None
    base = float(prev.mean())
    std = float(prev.std(ddof=1)) if prev.size >= 2 else 0.0
    if relative:
        if base <= 0:
            return None
        drop = (base - current) / base
        thr = max(tolerance, k * std / base)
    else:
        drop = base - current
        thr = max(tolerance, k * std)
    return DropTest(float(current), base, std, int(prev.size), float(drop), float(thr),
                    bool(drop > thr + 1e-12))
