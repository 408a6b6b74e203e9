"""History: key metrics of the last N runs of the same suite, and regressions of the current run.

Runs of a suite: rows of table `runs` (or, for runs without one, of `trials`) with the same
`suite` name, started no later than the current run, newest last; the current run and up to
N-1 runs before it.

Key metrics: frame AUC per (detector, bits, method, dataset) (the accuracy cells of views.py)
and FPS per deployment (detector, method, bits, format, device, runtime; median over datasets).

A metric regresses when its drop from the mean of the earlier runs exceeds
max(tolerance, k * sample std of the earlier runs): an absolute AUC drop, a relative FPS drop.
Tolerance keys: auc (absolute, default 0.005), fps (fraction, default 0.05), k (default 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from reports import stats, views
from reports.columns import DEPLOY_KEYS

DEFAULT_TOLERANCE = {"auc": 0.005, "fps": 0.05, "k": 3.0}
AUC_KEYS = ["detector", "bits", "method", "dataset"]


def validate_tolerance(tolerance: dict | None) -> dict:
    if tolerance is None:
        return dict(DEFAULT_TOLERANCE)
    if not isinstance(tolerance, dict):
        raise ValueError(f"tolerance must be a mapping, got {type(tolerance).__name__}")
    bad = [k for k in tolerance if k not in DEFAULT_TOLERANCE]
    if bad:
        raise ValueError(f"tolerance: unknown key(s) {bad}; allowed: {list(DEFAULT_TOLERANCE)}")
    out = dict(DEFAULT_TOLERANCE)
    for k, v in tolerance.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"tolerance.{k} must be a number >= 0, got {v!r}")
        out[k] = float(v)
    return out


@dataclass
class Regression:
    metric: str  # auc | fps
    subject: str
    key: dict
    values: list[float | None]  # one per history run, oldest first (None: not measured)
    test: stats.DropTest | None
    flagged: bool = False
    message: str = ""
    current: float | None = None
    threshold: float | None = None


@dataclass
class History:
    runs: list[dict]  # oldest first; the last is the current run
    rows: list[Regression] = field(default_factory=list)
    trend: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id, model, mean_auc

    @property
    def flagged(self) -> list[Regression]:
        return [r for r in self.rows if r.flagged]


def select_runs(runs: pd.DataFrame, current: dict, n: int) -> list[dict]:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"history must be an integer >= 1, got {n!r}")
    same = runs[runs["suite"] == current.get("suite")] if current.get("suite") else \
        runs[runs["run_id"] == current["run_id"]]
    start = current.get("started_at")
    same = same.assign(_t=pd.to_numeric(same["started_at"], errors="coerce")).reset_index()
    if start is not None and not pd.isna(start):
        same = same[(same["_t"] <= float(start)) | (same["run_id"] == current["run_id"])]
    same = same.sort_values(["_t", "index"], kind="stable", na_position="first")
    same = same[same["run_id"] != current["run_id"]].tail(n - 1)
    return [r for r in same.drop(columns=["_t", "index"]).to_dict("records")] + [current]


def _fmt_key(metric: str, key: dict) -> str:
    if metric == "auc":
        return f"AUC {key['detector']}/{key['method']}/{key['bits']} on {key['dataset']}"
    return (f"FPS {key['detector']}/{key['method']}/{key['bits']} on {key['device']}/"
            f"{key['runtime']} ({key['format']})")


def build(trials: pd.DataFrame, run_list: list[dict], tolerance: dict) -> History:
    """Series per key metric over `run_list` and the drop test of the last run."""
    ids = [r["run_id"] for r in run_list]
    auc_series: dict[tuple, list] = {}
    fps_series: dict[tuple, list] = {}
    trend = []
    for i, rid in enumerate(ids):
        df = trials[trials["run_id"] == rid]
        if df.empty:
            continue
        cells = views.accuracy_cells(df)
        for rec in cells.to_dict("records"):
            auc_series.setdefault(tuple(rec[k] for k in AUC_KEYS), [None] * len(ids))[i] = rec["auc"]
        for rec in views.mean_auc_per_model(cells).to_dict("records"):
            trend.append({"run_id": rid, "run_index": i, "detector": rec["detector"],
                          "model": f"{rec['method']} ({rec['bits']})",
                          "family": rec["method_family"], "mean_auc": rec["mean_auc"]})
        dep = views.deployments(df)
        for rec in dep.to_dict("records"):
            if rec["fps"] is not None:
                k = tuple(rec[c] for c in DEPLOY_KEYS)
                fps_series.setdefault(k, [None] * len(ids))[i] = rec["fps"]
    rows = []
    for metric, series, names in (("auc", auc_series, AUC_KEYS), ("fps", fps_series, DEPLOY_KEYS)):
        for k, vals in series.items():
            key = dict(zip(names, k))
            cur = vals[-1]
            test = None if cur is None else stats.drop_test(
                cur, [v for v in vals[:-1] if v is not None], tolerance[metric], tolerance["k"],
                relative=(metric == "fps"))
            reg = Regression(metric, _fmt_key(metric, key), key, vals, test, current=cur)
            if test is not None:
                reg.flagged = test.flagged
                reg.threshold = test.threshold
                unit = "" if metric == "auc" else " (relative)"
                reg.message = (
                    f"{cur:.4g} vs mean {test.baseline:.4g} of {test.n_earlier} earlier run(s) "
                    f"(sd {test.std:.3g}): drop{unit} {test.drop:+.4f} "
                    f"{'>' if test.flagged else '<='} threshold {test.threshold:.4f} "
                    f"= max(tolerance {tolerance[metric]:g}, {tolerance['k']:g} x sd)")
            rows.append(reg)
    rows.sort(key=lambda r: (not r.flagged, r.metric, r.subject))
    return History(run_list, rows, pd.DataFrame(trend))
