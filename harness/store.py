"""The results store: SQLite, table `trials`, one row per trial, written as each trial finishes.

The column list below is a contract: reports/ and other tools read it. New columns are only
ever appended (old stores are migrated by ALTER TABLE ADD COLUMN on open).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# (name, SQL type). The first block is the contract of DESIGN.md.
COLUMNS: list[tuple[str, str]] = [
    ("run_id", "TEXT NOT NULL"),
    ("detector", "TEXT NOT NULL"),
    ("dataset", "TEXT NOT NULL"),
    ("method", "TEXT NOT NULL"),
    ("bits", "TEXT NOT NULL"),
    ("format", "TEXT NOT NULL"),
    ("device", "TEXT NOT NULL"),
    ("runtime", "TEXT NOT NULL"),
    ("status", "TEXT NOT NULL"),  # ok | failed | simulated-only | skipped
    ("auc", "REAL"),
    ("eer", "REAL"),
    ("ap", "REAL"),
    ("acc", "REAL"),
    ("size_bytes", "INTEGER"),
    ("p50_ms", "REAL"),
    ("p90_ms", "REAL"),
    ("p99_ms", "REAL"),
    ("fps", "REAL"),
    # --- beyond the contract -------------------------------------------------------------
    ("trial_key", "TEXT NOT NULL"),  # run_id + everything that identifies the trial
    ("suite", "TEXT"),  # suite name
    ("suite_hash", "TEXT"),
    ("method_family", "TEXT"),  # fp32 | baseline | defakeq | ablation
    ("reason", "TEXT"),  # why failed / skipped / simulated-only
    ("video_auc", "REAL"),
    ("sim_auc", "REAL"),  # AUC of the PyTorch simulation on the same frames
    ("fp32_auc", "REAL"),  # AUC of the same detector unquantized (torch) on the same frames
    ("parity_max_abs", "REAL"),
    ("parity_mean_abs", "REAL"),
    ("decision_agreement", "REAL"),
    ("codes_exact", "INTEGER"),  # 1 / 0 / NULL (not applicable)
    ("packed_bytes", "INTEGER"),
    ("avg_weight_bits", "REAL"),
    ("mean_ms", "REAL"),
    ("std_ms", "REAL"),
    ("n_frames", "INTEGER"),
    ("n_runs", "INTEGER"),
    ("throttled", "INTEGER"),
    ("artifact_sha256", "TEXT"),
    ("artifact_path", "TEXT"),
    ("seed", "INTEGER"),
    ("quant_wall_s", "REAL"),
    ("device_tags", "TEXT"),  # JSON list
    ("env_json", "TEXT"),  # device / runtime facts
    ("extra_json", "TEXT"),  # anything else (op counts, CI bounds, latency samples ...)
    ("started_at", "REAL"),
    ("finished_at", "REAL"),
]
COLUMN_NAMES = [c for c, _ in COLUMNS]

RUNS_COLUMNS: list[tuple[str, str]] = [
    ("run_id", "TEXT PRIMARY KEY"),
    ("suite", "TEXT"),
    ("suite_hash", "TEXT"),
    ("suite_yaml", "TEXT"),
    ("started_at", "REAL"),
    ("finished_at", "REAL"),
    ("status", "TEXT"),  # running | finished | failed
    ("git_commit", "TEXT"),
    ("env_json", "TEXT"),  # package versions, host facts
    ("timings_json", "TEXT"),  # seconds per stage: prepare, deploy, trials, report
]


@dataclass
class TrialRow:
    run_id: str
    detector: str
    dataset: str
    method: str
    bits: str
    format: str
    device: str
    runtime: str
    status: str
    values: dict = field(default_factory=dict)  # any other column of COLUMNS

    @property
    def trial_key(self) -> str:
        return "|".join(
            [self.run_id, self.detector, self.dataset, self.method, self.bits, self.format, self.device, self.runtime]
        )

    def as_record(self) -> dict:
        rec = {name: None for name in COLUMN_NAMES}
        rec.update(
            run_id=self.run_id,
            detector=self.detector,
            dataset=self.dataset,
            method=self.method,
            bits=self.bits,
            format=self.format,
            device=self.device,
            runtime=self.runtime,
            status=self.status,
            trial_key=self.trial_key,
        )
        for k, v in self.values.items():
            if k not in rec:
                raise KeyError(f"unknown store column {k!r}")
            rec[k] = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v
        return rec


class Store:
    """Append-only trial store. One connection per process; writes are transactions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the device worker threads; _tx serialises them.
        self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        cols = ", ".join(f"{n} {t}" for n, t in COLUMNS)
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS trials ({cols}, UNIQUE(trial_key))")
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(trials)")}
        for n, t in COLUMNS:
            if n not in have:
                self.conn.execute(f"ALTER TABLE trials ADD COLUMN {n} {t.replace('NOT NULL', '')}")
        rcols = ", ".join(f"{n} {t}" for n, t in RUNS_COLUMNS)
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({rcols})")
        have_runs = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        for n, t in RUNS_COLUMNS:
            if n not in have_runs:
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {n} {t.replace('PRIMARY KEY', '')}")
        self.conn.execute("CREATE INDEX IF NOT EXISTS trials_run ON trials(run_id)")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def add_trial(self, row: TrialRow) -> None:
        """Insert one finished trial; a trial already recorded for this run is replaced only
        if the new one is a retry of a failure (never recorded twice)."""
        rec = row.as_record()
        rec.setdefault("finished_at", None)
        if rec["finished_at"] is None:
            rec["finished_at"] = time.time()
        names = list(rec)
        with self._tx() as c:
            c.execute(
                f"INSERT OR REPLACE INTO trials ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [rec[n] for n in names],
            )

    def done_keys(self, run_id: str) -> set[str]:
        rows = self.conn.execute("SELECT trial_key FROM trials WHERE run_id=? AND status != 'failed'", (run_id,))
        return {r[0] for r in rows}

    def start_run(self, run_id: str, suite: str, suite_hash: str, suite_yaml: str, git_commit: str, env: dict) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO runs (run_id, suite, suite_hash, suite_yaml, started_at, status, git_commit, env_json)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (run_id, suite, suite_hash, suite_yaml, time.time(), git_commit, json.dumps(env, sort_keys=True)),
            )

    def finish_run(self, run_id: str, status: str = "finished", timings: dict | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET finished_at=?, status=?, timings_json=? WHERE run_id=?",
                      (time.time(), status, json.dumps(timings or {}, sort_keys=True), run_id))

    def rows(self, run_id: str | None = None) -> list[dict]:
        cur = self.conn.execute(
            "SELECT * FROM trials" + (" WHERE run_id=?" if run_id else "") + " ORDER BY rowid",
            (run_id,) if run_id else (),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()
