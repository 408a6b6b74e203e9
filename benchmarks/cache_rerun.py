"""Cached re-run cost: a second run of an unchanged suite re-does no quantization or export.

Runs the default suite (suite.yaml, this machine as the device) twice in a fresh folder and
compares the non-trial time of the two runs (everything but the trials: data, training,
quantization, export, parity, report). Target: rerun <= 5 % of the first run.
Writes benchmarks/out/cache_rerun.json: {first_s, rerun_s, ratio, ...}.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "cache_rerun.json"


def non_trial_seconds(store: Path, run_id: str) -> tuple[float, dict]:
    t = json.loads(sqlite3.connect(store).execute("SELECT timings_json FROM runs WHERE run_id=?", (run_id,)).fetchone()[0])
    trials = t.get("trials_after_deploy_s", 0.0)
    return t["total_s"] - trials, t


def main() -> int:
    suite = yaml.safe_load((ROOT / "suite.yaml").read_text())
    suite.pop("profiles", None)
    with tempfile.TemporaryDirectory(prefix="cache-rerun-") as tmp:
        folder = Path(tmp)
        suite.update(store=str(folder / "results.db"), cache_dir=str(folder / "cache"), out_dir=str(folder / "runs"))
        (folder / "suite.yaml").write_text(yaml.safe_dump(suite))
        results = {}
        for run_id in ("first", "rerun"):
            p = subprocess.run([sys.executable, "-m", "harness.cli", "run", "suite.yaml", "--run-id", run_id, "--no-progress"],
                               cwd=folder, capture_output=True, text=True, env={**os.environ})
            if p.returncode not in (0, 1):  # 1 = a gate failed, which is fine here
                print(p.stderr[-3000:])
                return 1
            results[run_id] = non_trial_seconds(folder / "results.db", run_id)
            print(f"{run_id}: non-trial {results[run_id][0]:.1f} s  stages {results[run_id][1]}")
    first, rerun = results["first"][0], results["rerun"][0]
    row = {"first_s": round(first, 2), "rerun_s": round(rerun, 2), "ratio": round(rerun / first, 4),
           "first_stages": results["first"][1], "rerun_stages": results["rerun"][1], "target_ratio": 0.05}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
