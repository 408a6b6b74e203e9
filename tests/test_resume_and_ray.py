"""Nightly operations: kill -9 the controller at random points and resume to the same store as an
uninterrupted run; the Ray executor (a real local cluster) gives the local executor's results."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUITE = """
name: ops
store: {store}
cache_dir: {cache}
datasets:
  - name: synthetic
    options: {{n_train: 1024, n_calib: 128, n_test: 200, difficulty: 0.0}}
    frames: 200
detectors:
  - name: tiny-dsnet
    train: {{steps: 60}}
methods:
  - {{name: fp32}}
  - {{name: minmax, bits: [W8A8, W4A8, W4A4]}}
  - {{name: minmax, label: minmax-pt, bits: [W8A8], options: {{granularity: per-tensor}}}}
formats: [onnx, tflite]
calibration: {{frames: 128}}
trials: {{runs: 150, warmup: 5}}
"""

# columns that must not depend on interruptions or the executor (latency naturally does)
STABLE = ["detector", "dataset", "method", "bits", "format", "device", "runtime", "status", "auc", "eer", "ap", "acc",
          "sim_auc", "fp32_auc", "codes_exact", "size_bytes", "packed_bytes", "artifact_sha256", "decision_agreement"]


def _cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)


def _rows(store: Path, run_id: str) -> list[tuple]:
    con = sqlite3.connect(store)
    rows = con.execute(f"SELECT {', '.join(STABLE)} FROM trials WHERE run_id=? ORDER BY detector, method, bits, format", (run_id,)).fetchall()
    con.close()
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in rows]


def _suite(folder: Path, cache: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "suite.yaml"
    path.write_text(SUITE.format(store=folder / "results.db", cache=cache))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run; its data and trained detector seed the other tests' caches."""
    root = tmp_path_factory.mktemp("ops-ref")
    suite = _suite(root, root / "cache")
    p = _cli("run", str(suite), "--run-id", "ref", "--no-progress", cwd=root)
    out, err = p.communicate(timeout=1200)
    assert p.returncode == 0, err[-3000:]
    return root


def _seeded_cache(reference: Path, dest: Path) -> Path:
    """Generated data and the trained detector are reused; quantization and artifacts are not."""
    cache = dest / "cache"
    for sub in ("synthetic", "detectors"):
        shutil.copytree(reference / "cache" / sub, cache / sub)
    return cache


@pytest.mark.slow
def test_kill9_and_resume_gives_the_uninterrupted_store(reference, tmp_path):
    expected = _rows(reference / "results.db", "ref")
    assert len(expected) == 10 and len({r[:8] for r in expected}) == 10
    suite = _suite(tmp_path, _seeded_cache(reference, tmp_path))
    rng = random.Random(7)
    kills = 0
    for attempt in range(4):
        args = ["run", str(suite), "--no-progress"] + (["--run-id", "victim"] if attempt == 0 else [])
        p = _cli(*args, cwd=tmp_path)
        if attempt < 2:
            time.sleep(rng.uniform(6, 20))  # somewhere in start-up, quantization, export or trials
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                kills += 1
            p.communicate(timeout=60)
            continue
        out, err = p.communicate(timeout=1200)
        assert p.returncode == 0, err[-3000:]
        if attempt == 2:
            assert "resuming run victim" in err or kills == 0  # picked up automatically, no flag needed
        break
    assert kills >= 1  # the test must actually interrupt something
    got = _rows(tmp_path / "results.db", "victim")
    assert got == expected  # same rows, no duplicates, same numbers
    # no partial artifacts: every cache entry is complete and matches its recorded hashes
    from harness.cache import Cache

    cache = Cache(tmp_path / "cache")
    for kind in ("quant", "artifacts"):
        for entry in (tmp_path / "cache" / kind).iterdir():
            if not entry.name.startswith("."):
                assert cache.lookup(kind, entry.name) is not None, entry
    con = sqlite3.connect(tmp_path / "results.db")
    assert con.execute("SELECT status FROM runs WHERE run_id='victim'").fetchone()[0] == "finished"


@pytest.mark.slow
def test_resume_of_a_finished_run_redoes_nothing(reference):
    p = _cli("run", str(reference / "suite.yaml"), "--resume", "ref", "--no-progress", cwd=reference)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    assert "10 of 10 trials already recorded" in err and "0 trials to run" in err
    assert "quantized in" not in err and "exported in" not in err


@pytest.mark.slow
def test_resume_refuses_another_suite(reference, tmp_path):
    other = _suite(tmp_path, tmp_path / "cache")
    other.write_text(other.read_text().replace("runs: 150", "runs: 151").replace(str(tmp_path / "results.db"), str(reference / "results.db")))
    p = _cli("run", str(other), "--resume", "ref", cwd=tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "different suite" in err


@pytest.mark.slow
def test_ray_executor_matches_local(reference, tmp_path):
    pytest.importorskip("ray")
    suite = _suite(tmp_path, _seeded_cache(reference, tmp_path))
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    p = _cli("run", str(suite), "--run-id", "ray", "--executor", "ray", "--no-progress", cwd=tmp_path, env=env)
    out, err = p.communicate(timeout=1500)
    assert p.returncode == 0, err[-3000:]
    assert "deploy job(s) on the ray executor" in err
    assert _rows(tmp_path / "results.db", "ray") == _rows(reference / "results.db", "ref")
