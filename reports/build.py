"""build_report: one run of the store -> report.html, tables.tex, results.csv, gates.xml."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports import figures, html, junit, latex, load, repro, summary, tables, views
from reports import gates as gates_mod
from reports import history as history_mod
from reports.columns import OK, STATUSES, TRIAL_COLUMNS

log = logging.getLogger(__name__)
INT_COLUMNS = ("size_bytes", "packed_bytes", "codes_exact", "n_frames", "n_runs", "throttled",
               "seed")


@dataclass
class ReportResult:
    run_id: str
    html: Path
    tex: Path
    csv: Path
    junit: Path
    parquet: Path | None
    gates_passed: bool
    gates: list[gates_mod.GateOutcome] = field(default_factory=list)
    regressions: list[history_mod.Regression] = field(default_factory=list)
    n_trials: int = 0


def _tidy_csv(df: pd.DataFrame, cells: pd.DataFrame, ref: dict) -> pd.DataFrame:
    """The trials as stored, plus the FP32 reference and ΔAUC used by the tables."""
    out = df[list(TRIAL_COLUMNS)].copy()
    out["method_family"] = df["method_family"]
    for c in INT_COLUMNS:  # parsed as float to allow NULL; written back as integers
        out[c] = out[c].round().astype("Int64")
    out["device_tags"] = [json.dumps(t) for t in df["device_tags"]]
    out["fp32_ref_auc"] = [ref.get((d, s)) for d, s in zip(df["detector"], df["dataset"])]
    out["delta_auc"] = out["auc"] - pd.to_numeric(out["fp32_ref_auc"])
    return out


def _gate_setting(gates: dict, name: str) -> str:
    v = gates.get(name)
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)


def build_report(db_path: str | Path, run_id: str, out_dir: str | Path,
                 gates: dict | None = None, history: int = 10,
                 tolerance: dict | None = None) -> ReportResult:
    """Write the report of `run_id` from the store at `db_path` into `out_dir`.

    gates: see reports.gates (None: no gate, gates_passed is True).
    history: how many runs of the same suite (this one included) the history section covers.
    tolerance: regression tolerances {"auc": abs, "fps": relative, "k": std multiplier}.
    """
    gate_cfg = gates_mod.validate(gates)
    tol = history_mod.validate_tolerance(tolerance)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conn = load.connect(db_path)
    try:
        runs = load.load_runs(conn)
        run = load.run_row(runs, run_id, db_path)
        run_list = history_mod.select_runs(runs, run, history)
        trials = load.load_trials(conn, [r["run_id"] for r in run_list])
    finally:
        conn.close()
    df = trials[trials["run_id"] == run_id].reset_index(drop=True)
    unknown = sorted(set(df["status"]) - set(STATUSES))
    if unknown:  # listed with the problems rather than dropped, but say so loudly
        log.warning("run %r has trials with unknown status %s", run_id, unknown)

    cells = views.accuracy_cells(df)
    ref = views.fp32_reference(df, cells)
    dep = views.deployments(df)
    main = tables.main_tables(cells, ref)
    cross = tables.cross_detector(cells, ref)
    ablations = tables.ablation_tables(df, cells, ref)
    hist = history_mod.build(trials, run_list, tol)
    outcomes = gates_mod.evaluate(gate_cfg, df, dep, hist.rows)
    passed = gates_mod.passed(outcomes)

    figs = [figures.auc_vs_size(views.mean_auc_per_model(cells), df),
            figures.fps_per_device(dep, gate_cfg.get("fps_min"))]
    figs += [figures.delta_heatmap(t) for t in main]
    figs += [figures.latency(dep),
             figures.trend(hist.trend, [r["run_id"] for r in run_list])]
    figs = [f for f in figs if f is not None]

    gate_rows = gates_mod.summary(outcomes)
    for g in gate_rows:
        g["setting"] = _gate_setting(gate_cfg, g["gate"])
    counts = df["status"].value_counts()
    status_counts = [(s, int(counts.get(s, 0))) for s in STATUSES] + [
        (s, int(counts[s])) for s in unknown]
    deploy_groups = []
    if not dep.empty:
        for (device, runtime), g in dep.groupby(["device", "runtime"], sort=False):
            deploy_groups.append({"device": device, "runtime": runtime,
                                  "tags": sorted({t for ts in g["device_tags"] for t in ts}),
                                  "rows": g.to_dict("records")})
    problems = df[df["status"] != OK][["status", "detector", "method", "bits", "dataset",
                                       "device", "runtime", "format", "reason"]]
    problems = problems.astype(object).where(problems.notna(), None).to_dict("records")

    context = {
        "run_id": run_id, "suite": run.get("suite"), "run": run, "n_trials": len(df),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gates_passed": passed, "outcomes": outcomes, "gate_rows": gate_rows,
        "status_counts": status_counts, "regressions": hist.flagged,
        "glance": summary.build(main, dep, df, gate_cfg),
        "main_tables": main, "cross": cross, "ablation_tables": ablations,
        "deploy_groups": deploy_groups, "figures": figs, "history": hist, "tolerance": tol,
        "problems": problems, "repro": repro.appendix(run, df),
    }
    html_path = out / "report.html"
    html_path.write_text(html.render(context), encoding="utf-8")
    tex_path = out / "tables.tex"
    tex_tables = main + cross + ablations
    tex_path.write_text(latex.document(tex_tables, dep, run_id), encoding="utf-8")
    tidy = _tidy_csv(df, cells, ref)
    csv_path = out / "results.csv"
    tidy.to_csv(csv_path, index=False)
    parquet = None
    if importlib.util.find_spec("pyarrow") is not None:
        parquet = out / "results.parquet"
        tidy.to_parquet(parquet, index=False)
    junit_path = junit.write(outcomes, run_id, out / "gates.xml")
    return ReportResult(run_id, html_path, tex_path, csv_path, junit_path, parquet, passed,
                        outcomes, hist.flagged, len(df))
