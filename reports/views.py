"""Tidy views over the trials of one run: the accuracy cells and the deployments.

Accuracy view: one cell per (detector, bits, method, dataset).
  * source: trials with status 'ok' and a frame AUC. Several such trials (devices, runtimes,
    formats) of one cell are summarised by their median; min-max goes to the tooltip.
  * a cell that has no 'ok' trial falls back to 'simulated-only' trials (auc, else sim_auc)
    and is marked simulated.
  * 95% CI: `extra_json.auc_ci` [lo, hi] of the trial nearest the median; else a stratified
    bootstrap when extra_json carries per-frame `scores` and `labels`; else none.
FP32 reference of (detector, dataset): the fp32-family cell; without one, the median of the
`fp32_auc` column of that detector/dataset's trials.

Deployment view: one row per (detector, method, bits, format, device, runtime) over its 'ok'
trials (one per dataset): latency percentiles and FPS are medians over the trials, `fps_worst`
is the minimum, accuracy columns are means over datasets, parity columns are the worst case.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from reports import stats
from reports.columns import DEPLOY_KEYS, OK, SIM_ONLY

CELL_KEYS = ["detector", "bits", "method", "dataset"]
DEPLOY_COLUMNS = DEPLOY_KEYS + [
    "method_family", "format_family", "device_tags", "n", "datasets", "p50_ms", "p90_ms",
    "p99_ms", "fps", "fps_worst", "fps_ci", "latency_samples", "size_bytes", "packed_bytes",
    "avg_weight_bits", "auc", "sim_auc", "parity_max_abs", "decision_agreement", "codes_exact",
    "throttled", "thermal_before", "thermal_after", "order",
]


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _ci_of(extra: dict, what: str) -> tuple[float, float] | None:
    ci = extra.get("auc_ci")
    if ci is not None:
        if (not isinstance(ci, (list, tuple)) or len(ci) != 2
                or any(_num(v) is None for v in ci)):
            raise ValueError(f"{what}: extra_json.auc_ci must be [lo, hi] numbers, got {ci!r}")
        return float(ci[0]), float(ci[1])
    if "scores" in extra and "labels" in extra:
        return stats.bootstrap_auc_ci(extra["scores"], extra["labels"], n_boot=500)
    return None


def _groups(records: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """Group records by `keys`, in first-appearance order (plain Python: fast on small runs)."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    recs = df.to_dict("records")
    for r in recs:  # NaN -> None once, so later code has one "missing" value
        for k, v in r.items():
            if isinstance(v, float) and math.isnan(v):
                r[k] = None
    return recs


def accuracy_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: value, n, spread, ci, simulated flag, family, first-appearance order."""
    recs = _records(df)
    ok = [r for r in recs if r["status"] == OK and r["auc"] is not None]
    ok_keys = {tuple(r[k] for k in CELL_KEYS) for r in ok}
    sim = []
    for r in recs:
        if r["status"] != SIM_ONLY or tuple(r[k] for k in CELL_KEYS) in ok_keys:
            continue
        v = r["auc"] if r["auc"] is not None else r["sim_auc"]
        if v is not None:
            sim.append(r | {"auc": v})
    rows = []
    for simulated, part in ((False, ok), (True, sim)):
        for key, g in _groups(part, CELL_KEYS).items():
            vals = np.array([r["auc"] for r in g], dtype=float)
            med = float(np.median(vals))
            near = g[int(np.argmin(np.abs(vals - med)))]
            rows.append(dict(zip(CELL_KEYS, key)) | {
                "auc": med, "n": len(vals), "auc_min": float(vals.min()),
                "auc_max": float(vals.max()),
                "ci": _ci_of(near["extra"], f"trial {near['trial_key']!r}"),
                "simulated": simulated, "method_family": g[0]["method_family"],
                "order": min(int(r["order"]) for r in g),
            })
    cols = CELL_KEYS + ["auc", "n", "auc_min", "auc_max", "ci", "simulated",
                        "method_family", "order"]
    return pd.DataFrame(rows, columns=cols).sort_values("order", kind="stable")


def fp32_reference(df: pd.DataFrame, cells: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(detector, dataset) -> FP32 AUC (see module doc)."""
    ref: dict[tuple[str, str], float] = {}
    fp = cells[cells["method_family"] == "fp32"]
    for (det, ds), g in fp.groupby(["detector", "dataset"], sort=False):
        ref[(det, ds)] = float(np.median(g["auc"]))
    col = df[df["fp32_auc"].notna()]
    for (det, ds), g in col.groupby(["detector", "dataset"], sort=False):
        ref.setdefault((det, ds), float(np.median(g["fp32_auc"])))
    return ref


def _thermal(env: dict, extra: dict, key: str) -> float | str | None:
    v = extra.get(key, env.get(key))
    if isinstance(v, dict) and "max_temp_c" in v:  # a devices/ snapshot: the hottest zone
        return _num(v["max_temp_c"])
    if isinstance(v, dict) and isinstance(v.get("temps_c"), dict):
        v = v["temps_c"]
    if isinstance(v, dict):  # per thermal zone: the hottest zone is what throttles
        nums = [_num(x) for x in v.values()]
        nums = [x for x in nums if x is not None]
        return max(nums) if nums else None
    if isinstance(v, (int, float)):
        return float(v)
    return str(v) if v is not None else None


def _hottest(values: list[float | str | None]) -> float | str | None:
    nums = [v for v in values if isinstance(v, float)]
    if nums:
        return max(nums)
    return next((v for v in values if v), None)


def deployments(df: pd.DataFrame) -> pd.DataFrame:
    """One row per deployed model on one device/runtime (see module doc)."""
    rows = []
    ok = [r for r in _records(df) if r["status"] == OK]
    for key, g in _groups(ok, DEPLOY_KEYS).items():
        samples: list[float] = []
        for r in g:
            lat = r["extra"].get("latency_ms")
            if isinstance(lat, list):
                samples.extend(float(x) for x in lat)

        def col(c: str, g: list[dict] = g) -> list[float]:
            return [float(r[c]) for r in g if r[c] is not None]

        def med(c: str) -> float | None:
            v = col(c)
            return float(np.median(v)) if v else None

        def pick(c: str, f: Callable[[list[float]], float]) -> float | None:
            v = col(c)
            return float(f(v)) if v else None

        codes = [int(x) for x in col("codes_exact")]
        throttled = col("throttled")
        rows.append(dict(zip(DEPLOY_KEYS, key)) | {
            "method_family": g[0]["method_family"],
            "format_family": g[0]["format_family"],
            "device_tags": sorted({t for r in g for t in r["device_tags"]}),
            "n": len(g),
            "datasets": list(dict.fromkeys(r["dataset"] for r in g)),
            "p50_ms": med("p50_ms"), "p90_ms": med("p90_ms"), "p99_ms": med("p99_ms"),
            "fps": med("fps"), "fps_worst": pick("fps", min),
            "fps_ci": stats.fps_ci(samples) if len(samples) >= 2 else None,
            "latency_samples": samples,
            "size_bytes": med("size_bytes"), "packed_bytes": med("packed_bytes"),
            "avg_weight_bits": med("avg_weight_bits"),
            "auc": pick("auc", np.mean), "sim_auc": pick("sim_auc", np.mean),
            "parity_max_abs": pick("parity_max_abs", max),
            "decision_agreement": pick("decision_agreement", min),
            "codes_exact": (None if not codes else "all" if all(codes)
                            else "none" if not any(codes) else "some"),
            "throttled": None if not throttled else any(t > 0 for t in throttled),
            "thermal_before": _hottest([_thermal(r["env"], r["extra"], "thermal_before")
                                        for r in g]),
            "thermal_after": _hottest([_thermal(r["env"], r["extra"], "thermal_after")
                                       for r in g]),
            "order": min(int(r["order"]) for r in g),
        })
    out = pd.DataFrame(rows, columns=DEPLOY_COLUMNS).astype(object)
    return out.where(out.notna(), None)  # None, not NaN, for "not measured"


def mean_auc_per_model(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC over datasets per (detector, bits, method), and which datasets it covers."""
    rows = []
    for key, g in cells.groupby(["detector", "bits", "method"], sort=False):
        rows.append(dict(zip(["detector", "bits", "method"], key)) | {
            "mean_auc": float(g["auc"].mean()), "datasets": tuple(sorted(g["dataset"])),
            "method_family": g["method_family"].iloc[0], "order": int(g["order"].min()),
        })
    return pd.DataFrame(rows, columns=["detector", "bits", "method", "mean_auc", "datasets",
                                       "method_family", "order"])
