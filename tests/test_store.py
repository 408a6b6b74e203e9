"""The results store contract: table `trials`, the agreed columns, one row per trial."""

from __future__ import annotations

import sqlite3

from harness.store import COLUMN_NAMES, Store, TrialRow

CONTRACT = ["run_id", "detector", "dataset", "method", "bits", "format", "device", "runtime", "status",
            "auc", "eer", "ap", "acc", "size_bytes", "p50_ms", "p90_ms", "p99_ms", "fps"]


def _row(run="r1", status="ok", auc=0.9):
    return TrialRow(run, "d", "synthetic", "minmax", "W8A8", "onnx-qdq", "local", "onnxruntime-cpu", status,
                    {"auc": auc, "extra_json": {"k": [1, 2]}})


def test_contract_columns_exist(tmp_path):
    s = Store(tmp_path / "r.db")
    cols = [r[1] for r in sqlite3.connect(tmp_path / "r.db").execute("PRAGMA table_info(trials)")]
    assert all(c in cols for c in CONTRACT) and cols[: len(CONTRACT)] == CONTRACT
    assert COLUMN_NAMES[: len(CONTRACT)] == CONTRACT
    s.close()


def test_one_row_per_trial_and_retry_replaces(tmp_path):
    s = Store(tmp_path / "r.db")
    s.add_trial(_row(status="failed", auc=None))
    assert s.done_keys("r1") == set()
    s.add_trial(_row(status="ok", auc=0.91))
    rows = s.rows("r1")
    assert len(rows) == 1 and rows[0]["auc"] == 0.91 and rows[0]["extra_json"] == '{"k": [1, 2]}'
    assert len(s.done_keys("r1")) == 1


def test_unknown_column_rejected(tmp_path):
    import pytest

    s = Store(tmp_path / "r.db")
    with pytest.raises(KeyError, match="unknown store column"):
        s.add_trial(TrialRow("r", "d", "x", "m", "b", "f", "dev", "rt", "ok", {"nope": 1}))


def test_old_store_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE trials (" + ", ".join(f"{c} TEXT" for c in CONTRACT) + ", trial_key TEXT, UNIQUE(trial_key))")
    con.commit()
    con.close()
    s = Store(db)
    s.add_trial(_row())
    assert s.rows()[0]["extra_json"] is not None
