"""Read the SQLite results store into tidy pandas frames (one row per trial).

Only `sqlite3` and `pandas`: this is the whole of what reports/ knows about the rest of the suite.
JSON columns are parsed once here (`device_tags` -> list, `env_json`/`extra_json` -> dict) so
later code never parses twice; bad JSON raises with the trial it came from.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from reports.columns import CONTRACT, FAMILY_ORDER, RUN_COLUMNS, TRIAL_COLUMNS


class StoreError(ValueError):
    """The store file is missing, not a results store, or holds malformed rows."""


def connect(db_path: str | Path) -> sqlite3.Connection:
    """Open the store read-only (a report must never create or change a store)."""
    path = Path(db_path)
    if not path.is_file():
        raise StoreError(f"results store {str(path)!r} does not exist (expected a SQLite file)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{str(path)!r} is not a SQLite results store: {e}") from e
    if "trials" not in tables:
        raise StoreError(f"{str(path)!r} has no table 'trials' (tables: {sorted(tables)})")
    have = {r[1] for r in conn.execute("PRAGMA table_info(trials)")}
    missing = [c for c in CONTRACT if c not in have]
    if missing:
        raise StoreError(f"{str(path)!r}: table 'trials' lacks contract columns {missing}")
    return conn


def _select(conn: sqlite3.Connection, table: str, wanted: tuple[str, ...], where: str,
            params: tuple) -> pd.DataFrame:
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    have.add("rowid")
    cols = [c if c in have else f"NULL AS {c}" for c in wanted]
    sql = f"SELECT {', '.join(cols)} FROM {table} {where}"
    cur = conn.execute(sql, params)
    return pd.DataFrame(cur.fetchall(), columns=list(wanted))


def _parse_json(value: Any, kind: type, what: str) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return kind()
    try:
        out = json.loads(value)
    except (TypeError, json.JSONDecodeError) as e:
        raise StoreError(f"{what}: not valid JSON ({e}): {str(value)[:80]!r}") from e
    if not isinstance(out, kind):
        raise StoreError(f"{what}: expected a JSON {kind.__name__}, got {type(out).__name__}")
    return out


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Parse JSON columns, fill method_family, keep store order (rowid) as `order`."""
    df = df.copy()
    where = df["run_id"].astype(str) + " " + df["trial_key"].fillna("").astype(str)
    df["device_tags"] = [
        _parse_json(v, list, f"trial {w!r} column device_tags")
        for v, w in zip(df["device_tags"], where)
    ]
    df["env"] = [_parse_json(v, dict, f"trial {w!r} column env_json")
                 for v, w in zip(df["env_json"], where)]
    df["extra"] = [_parse_json(v, dict, f"trial {w!r} column extra_json")
                   for v, w in zip(df["extra_json"], where)]
    # A store written before method_family existed: the fp32 method is the reference,
    # everything else is grouped as "other" (never guessed from its name).
    fam = df["method_family"].where(df["method_family"].notna(), None)
    fam = [
        (f if f in FAMILY_ORDER else "other") if f is not None
        else ("fp32" if m == "fp32" else "other")
        for f, m in zip(fam, df["method"])
    ]
    df["method_family"] = fam
    df["format_family"] = df["format"].astype(str).str.lower().str.split(r"[-_]", regex=True).str[0]
    num = ["auc", "eer", "ap", "acc", "size_bytes", "p50_ms", "p90_ms", "p99_ms", "fps",
           "video_auc", "sim_auc", "fp32_auc", "parity_max_abs", "parity_mean_abs",
           "decision_agreement", "codes_exact", "packed_bytes", "avg_weight_bits", "mean_ms",
           "std_ms", "n_frames", "n_runs", "throttled", "seed", "quant_wall_s",
           "started_at", "finished_at"]
    for c in num:
        df[c] = pd.to_numeric(df[c], errors="raise").astype(float)
    return df


def load_trials(conn: sqlite3.Connection, run_ids: list[str]) -> pd.DataFrame:
    """All trials of `run_ids`, in store order, tidied."""
    if not run_ids:
        return tidy(pd.DataFrame(columns=list(TRIAL_COLUMNS) + ["order"]))
    marks = ", ".join("?" * len(run_ids))
    df = _select(conn, "trials", TRIAL_COLUMNS + ("rowid",),
                 f"WHERE run_id IN ({marks}) ORDER BY rowid", tuple(run_ids))
    df = df.rename(columns={"rowid": "order"})
    return tidy(df)


def load_runs(conn: sqlite3.Connection) -> pd.DataFrame:
    """The `runs` table; a store without it yields runs reconstructed from `trials`."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    have = {r[1] for r in conn.execute("PRAGMA table_info(trials)")}
    suite = "MAX(suite)" if "suite" in have else "NULL"
    started = "MIN(COALESCE(started_at, finished_at))" if "started_at" in have else "NULL"
    cur = conn.execute(
        f"SELECT run_id, {suite}, {started} FROM trials GROUP BY run_id ORDER BY MIN(rowid)"
    )
    from_trials = pd.DataFrame(cur.fetchall(), columns=["run_id", "suite", "started_at"])
    if "runs" in tables:
        runs = _select(conn, "runs", RUN_COLUMNS, "", ())
    else:
        runs = pd.DataFrame(columns=list(RUN_COLUMNS))
    # Runs that have trials but no `runs` row still count (a crashed run never wrote it).
    missing = from_trials[~from_trials["run_id"].isin(runs["run_id"])]
    if len(missing):
        extra = missing.reindex(columns=list(RUN_COLUMNS))
        runs = pd.concat([runs.astype(object), extra.astype(object)], ignore_index=True)
    # Trials know the suite even when the runs row lost it.
    suites = dict(zip(from_trials["run_id"], from_trials["suite"]))
    runs["suite"] = [s if isinstance(s, str) and s else suites.get(r)
                     for r, s in zip(runs["run_id"], runs["suite"])]
    first_trial = dict(zip(from_trials["run_id"], from_trials["started_at"]))
    runs["started_at"] = [
        s if s is not None and not pd.isna(s) else first_trial.get(r)
        for r, s in zip(runs["run_id"], runs["started_at"])
    ]
    runs["env"] = [_parse_json(v, dict, f"run {r!r} column env_json")
                   for v, r in zip(runs["env_json"], runs["run_id"])]
    return runs.reset_index(drop=True)


def run_row(runs: pd.DataFrame, run_id: str, db_path: str | Path) -> dict:
    hit = runs[runs["run_id"] == run_id]
    if hit.empty:
        known = ", ".join(map(str, runs["run_id"].tolist()[-10:])) or "none"
        raise StoreError(f"run_id {run_id!r} is not in {str(db_path)!r} (latest runs: {known})")
    return hit.iloc[0].to_dict()
