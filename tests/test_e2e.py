"""`defakeq run` end to end on this machine: data -> train -> quantize -> export -> trials ->
store -> report, and `defakeq report` rebuilding it from the store alone."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """
name: e2e
store: runs/results.db
cache_dir: runs/cache
datasets:
  - name: synthetic
    options: {n_train: 2048, n_calib: 256, n_test: 400, difficulty: 0.0}
    frames: 400
detectors:
  - name: tiny-dsnet
    train: {steps: 300}
methods:
  - {name: fp32}
  - {name: minmax, bits: [W8A8, W4A4]}
formats: [onnx, tflite]
calibration: {frames: 256}
trials: {runs: 30, warmup: 3}
gates: {auc_drop_max: 0.5}
"""


def defakeq(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the module: data and the trained detector are made once."""
    return tmp_path_factory.mktemp("e2e-cache")


@pytest.mark.slow
def test_run_then_report(tmp_path, cache_dir):
    (tmp_path / "suite.yaml").write_text(SUITE.replace("cache_dir: runs/cache", f"cache_dir: {cache_dir}"))
    p = defakeq("run", "suite.yaml", "--run-id", "e2e-1", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    report = Path(p.stdout.strip().splitlines()[-1])
    assert report.is_file() and report.name == "report.html"
    html = report.read_text()
    assert "tiny-dsnet" in html and "minmax" in html

    con = sqlite3.connect(tmp_path / "runs/results.db")
    con.row_factory = sqlite3.Row
    rows = {(r["method"], r["bits"], r["format"]): r for r in con.execute("SELECT * FROM trials WHERE run_id='e2e-1'")}
    assert len(rows) == 6
    fp32 = rows[("fp32", "fp32", "onnx-fp32")]
    assert fp32["status"] == "ok" and fp32["auc"] > 0.7 and fp32["fps"] > 0 and fp32["p50_ms"] > 0
    assert rows[("fp32", "fp32", "tflite-fp32")]["auc"] == pytest.approx(fp32["auc"], abs=1e-3)
    for fmt in ("onnx-qdq", "tflite-int8"):
        r = rows[("minmax", "W8A8", fmt)]
        assert r["status"] == "ok" and r["codes_exact"] == 1, dict(r)
        assert abs(r["auc"] - r["sim_auc"]) <= 0.01  # deployed vs simulated
        assert r["size_bytes"] > 0 and r["packed_bytes"] > 0
    assert rows[("minmax", "W4A4", "onnx-qdq")]["status"] == "ok"
    simonly = rows[("minmax", "W4A4", "tflite-int8")]
    assert simonly["status"] == "simulated-only" and "4" in simonly["reason"] and simonly["auc"] is not None

    # a second run of the unchanged suite re-does no training, quantization or export
    p2 = defakeq("run", "suite.yaml", "--run-id", "e2e-2", "--no-progress", cwd=tmp_path)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "cached weights" in p2.stderr and "exported in" not in p2.stderr and "quantized in" not in p2.stderr

    # the report is rebuilt from the store alone
    out = tmp_path / "rebuilt"
    p3 = defakeq("report", "e2e-1", "--store", "runs/results.db", "--out", str(out), cwd=tmp_path)
    assert p3.returncode == 0, p3.stderr
    assert (out / "report.html").is_file() and (out / "tables.tex").is_file() and (out / "gates.xml").is_file()


@pytest.mark.slow
def test_failing_gate_exits_nonzero(tmp_path, cache_dir):
    suite = (SUITE.replace("cache_dir: runs/cache", f"cache_dir: {cache_dir}").replace("auc_drop_max: 0.5", "auc_drop_max: 0.0001")
             .replace("W8A8, W4A4", "W4A4").replace("formats: [onnx, tflite]", "formats: [onnx]"))
    (tmp_path / "suite.yaml").write_text(suite)
    p = defakeq("run", "suite.yaml", "--run-id", "gate", "--no-progress", cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "gates failed" in p.stderr
