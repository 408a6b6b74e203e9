"""Release gates: thresholds from suite.yaml checked against one run -> pass/fail outcomes.

Gates (all optional; any other key is an error):

auc_drop_max: float
    Subjects: every trial with status 'ok' and a frame AUC whose method is not FP32.
    Drop = reference - auc; fails when drop > auc_drop_max. Reference, first that exists:
    the trial's own `fp32_auc` column; the FP32 trial of the same detector, dataset, format
    family (onnx, tflite, ... = `format` up to the first '-' or '_') and device (median over
    runtimes); the FP32 AUC of that detector and dataset on any device. None: an error.
fps_min: number | {key: number}
    Subjects: every deployment (detector, method, bits, format, device, runtime) that is not
    FP32, with its worst FPS over its 'ok' trials. A number applies to every device. In a dict,
    a key is a device name, a device tag (from `device_tags`) or "*"; the device name wins,
    then the strictest matching tag, then "*". Devices matched by no key are not gated.
parity_max_abs: float
    Subjects: non-FP32 'ok' trials; fails when parity_max_abs > limit; skipped (reported, not
    failed) where the trial measured no parity.
decision_agreement_min: float
    As parity_max_abs, on decision_agreement (fails when below).
max_failed_trials: int
    One subject: the number of trials with status 'failed' (skipped and simulated-only trials
    are listed in the report but do not count).
no_regressions: bool
    One subject per history regression flagged (see history.py); one passing subject if none.

A gate that applies to no subject is an error (a check that checked nothing must not pass).
The run passes when no outcome is 'failed' or 'error'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports.columns import FAILED, OK

GATE_KEYS = ("auc_drop_max", "fps_min", "parity_max_abs", "decision_agreement_min",
             "max_failed_trials", "no_regressions")
GATE_HELP = {
    "auc_drop_max": "each quantized ok trial: FP32 AUC − AUC ≤ limit (FP32 from fp32_auc, else "
                    "the fp32 trial on the same device and format family)",
    "fps_min": "each quantized deployment: worst FPS over its trials ≥ the limit for its device "
               "(device name, else strictest tag, else '*')",
    "parity_max_abs": "each quantized ok trial: max |deployed − simulated output| ≤ limit",
    "decision_agreement_min": "each quantized ok trial: share of equal decisions ≥ limit",
    "max_failed_trials": "number of failed trials ≤ limit",
    "no_regressions": "no AUC/FPS regression flagged against earlier runs of the suite",
}
EPS = 1e-9  # a value exactly at the threshold passes despite float rounding


@dataclass
class GateOutcome:
    gate: str
    subject: str
    status: str  # passed | failed | error | skipped
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    key: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "skipped")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(gates: dict | None) -> dict:
    """Check the gates mapping from suite.yaml; errors name the key and what is allowed."""
    if gates is None:
        return {}
    if not isinstance(gates, dict):
        raise ValueError(f"gates must be a mapping, got {type(gates).__name__}")
    bad = [k for k in gates if k not in GATE_KEYS]
    if bad:
        raise ValueError(f"gates: unknown key(s) {bad}; allowed: {list(GATE_KEYS)}")
    for k in ("auc_drop_max", "parity_max_abs", "decision_agreement_min"):
        if k in gates and (not _is_num(gates[k]) or gates[k] < 0):
            raise ValueError(f"gates.{k} must be a number >= 0, got {gates[k]!r}")
    if "fps_min" in gates:
        f = gates["fps_min"]
        items = f.items() if isinstance(f, dict) else [("*", f)]
        for dk, v in items:
            if not isinstance(dk, str) or not dk:
                raise ValueError(f"gates.fps_min keys must be device names/tags or '*', got {dk!r}")
            if not _is_num(v) or v < 0:
                raise ValueError(f"gates.fps_min[{dk!r}] must be a number >= 0, got {v!r}")
    if "max_failed_trials" in gates:
        v = gates["max_failed_trials"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"gates.max_failed_trials must be an integer >= 0, got {v!r}")
    if "no_regressions" in gates and not isinstance(gates["no_regressions"], bool):
        raise ValueError(f"gates.no_regressions must be true or false, got "
                         f"{gates['no_regressions']!r}")
    return dict(gates)


def trial_subject(r: dict) -> str:
    return (f"{r['detector']}/{r['method']}/{r['bits']}/{r['dataset']} on "
            f"{r['device']}/{r['runtime']} ({r['format']})")


def deploy_subject(r: dict) -> str:
    return f"{r['detector']}/{r['method']}/{r['bits']} on {r['device']}/{r['runtime']} ({r['format']})"


def _fp32_ref(r: dict, fp: pd.DataFrame) -> tuple[float | None, str]:
    if r.get("fp32_auc") is not None and not pd.isna(r["fp32_auc"]):
        return float(r["fp32_auc"]), "fp32_auc column"
    same = fp[(fp["detector"] == r["detector"]) & (fp["dataset"] == r["dataset"])]
    exact = same[(same["format_family"] == r["format_family"]) & (same["device"] == r["device"])]
    if len(exact):
        return float(np.median(exact["auc"])), f"fp32 on {r['device']} ({r['format_family']})"
    if len(same):
        return float(np.median(same["auc"])), "fp32 on " + ", ".join(
            sorted(set(same["device"] + " (" + same["format_family"] + ")")))
    return None, ""


def _auc_drop(df: pd.DataFrame, limit: float) -> list[GateOutcome]:
    ok = df[(df["status"] == OK) & df["auc"].notna()]
    fp = ok[ok["method_family"] == "fp32"]
    out = []
    for r in ok[ok["method_family"] != "fp32"].to_dict("records"):
        key = {k: r[k] for k in ("detector", "method", "bits", "dataset", "device", "runtime",
                                 "format")}
        ref, src = _fp32_ref(r, fp)
        subj = trial_subject(r)
        if ref is None:
            out.append(GateOutcome("auc_drop_max", subj, "error", None, limit,
                                   "no FP32 reference (no fp32_auc and no fp32 trial)", key))
            continue
        drop = ref - float(r["auc"])
        status = "passed" if drop <= limit + EPS else "failed"
        out.append(GateOutcome(
            "auc_drop_max", subj, status, drop, limit,
            f"AUC {r['auc']:.4f} vs FP32 {ref:.4f} ({src}): drop {drop:+.4f}, max {limit:g}", key))
    return out


def fps_threshold(spec: Any, device: str, tags: list[str]) -> tuple[float, str] | None:
    """Threshold for one device and the key it came from (see module doc), or None."""
    if not isinstance(spec, dict):
        return float(spec), "*"
    if device in spec:
        return float(spec[device]), device
    tagged = [(float(spec[t]), t) for t in tags if t in spec and t != "*"]
    if tagged:
        return max(tagged)
    if "*" in spec:
        return float(spec["*"]), "*"
    return None


def _fps(dep: pd.DataFrame, spec: Any) -> list[GateOutcome]:
    out = []
    if dep.empty:
        return out
    for r in dep[dep["method_family"] != "fp32"].to_dict("records"):
        th = fps_threshold(spec, r["device"], r["device_tags"])
        if th is None:
            continue
        limit, via = th
        key = {k: r[k] for k in ("detector", "method", "bits", "device", "runtime", "format")}
        subj = deploy_subject(r)
        fps = r["fps_worst"]
        if fps is None:
            out.append(GateOutcome("fps_min", subj, "error", None, limit,
                                   "no FPS measured in any ok trial", key))
            continue
        status = "passed" if fps >= limit - EPS else "failed"
        out.append(GateOutcome("fps_min", subj, status, fps, limit,
                               f"worst FPS {fps:.1f} over {r['n']} trial(s), min {limit:g} "
                               f"(fps_min[{via!r}])", key))
    return out


def _per_trial(df: pd.DataFrame, gate: str, col: str, limit: float, upper: bool) -> list[GateOutcome]:
    out = []
    ok = df[(df["status"] == OK) & (df["method_family"] != "fp32")]
    for r in ok.to_dict("records"):
        subj = trial_subject(r)
        key = {k: r[k] for k in ("detector", "method", "bits", "dataset", "device", "runtime",
                                 "format")}
        v = r[col]
        if v is None or pd.isna(v):
            out.append(GateOutcome(gate, subj, "skipped", None, limit, f"{col} not measured", key))
            continue
        good = v <= limit + EPS if upper else v >= limit - EPS
        rel = "max" if upper else "min"
        out.append(GateOutcome(gate, subj, "passed" if good else "failed", float(v), limit,
                               f"{col} {v:.4g}, {rel} {limit:g}", key))
    return out


def evaluate(gates: dict | None, df: pd.DataFrame, dep: pd.DataFrame,
             regressions: list | None = None) -> list[GateOutcome]:
    """All outcomes of all configured gates, in gate order."""
    gates = validate(gates)
    out: list[GateOutcome] = []
    for name in GATE_KEYS:
        if name not in gates:
            continue
        spec = gates[name]
        if name == "auc_drop_max":
            res = _auc_drop(df, float(spec))
        elif name == "fps_min":
            res = _fps(dep, spec)
        elif name == "parity_max_abs":
            res = _per_trial(df, name, "parity_max_abs", float(spec), upper=True)
        elif name == "decision_agreement_min":
            res = _per_trial(df, name, "decision_agreement", float(spec), upper=False)
        elif name == "max_failed_trials":
            n = int((df["status"] == FAILED).sum())
            res = [GateOutcome(name, "failed trials", "passed" if n <= spec else "failed", n,
                               spec, f"{n} failed trial(s), at most {spec}")]
        else:  # no_regressions
            if not spec:
                continue
            flagged = [g for g in (regressions or []) if g.flagged]
            res = [GateOutcome(name, g.subject, "failed", g.current, g.threshold, g.message,
                               g.key) for g in flagged]
            if not flagged:
                res = [GateOutcome(name, "history", "passed", 0, 0, "no regression flagged")]
        if not res:
            res = [GateOutcome(name, "(no subject)", "error", None, None,
                               "this gate applies to no trial of the run")]
        out.extend(res)
    return out


def passed(outcomes: list[GateOutcome]) -> bool:
    return all(o.ok for o in outcomes)


def summary(outcomes: list[GateOutcome]) -> list[dict]:
    """Per gate: counts by status and the failing subjects (for the summary box)."""
    rows: dict[str, dict] = {}
    for o in outcomes:
        s = rows.setdefault(o.gate, {"gate": o.gate, "help": GATE_HELP[o.gate], "passed": 0,
                                     "failed": 0, "error": 0, "skipped": 0, "bad": []})
        s[o.status] += 1
        if not o.ok:
            s["bad"].append(o)
    return list(rows.values())
