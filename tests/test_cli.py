"""The `defakeq` command's read-only subcommands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_list_registries():
    p = cli("list", "methods")
    assert p.returncode == 0 and "fp32" in p.stdout and "minmax" in p.stdout
    p = cli("list", "formats")
    assert all(f in p.stdout for f in ("onnx-fp32", "onnx-qdq", "tflite-fp32", "tflite-int8"))
    p = cli("list", "detectors")
    assert "tiny-resnet" in p.stdout and "tiny-dsnet" in p.stdout


def test_plan_prints_the_matrix_without_running(tmp_path):
    p = cli("plan", str(ROOT / "suite.yaml"))
    assert p.returncode == 0, p.stderr
    assert "10 quantizations, 20 artifacts, 20 trials" in p.stdout
    assert p.stdout.count("todo") == 20


def test_devices_list_and_check_local():
    p = cli("devices", "list")
    assert p.returncode == 0 and "local" in p.stdout
    p = cli("devices", "check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "onnxruntime-cpu" in p.stdout and "yes" in p.stdout


def test_devices_bad_file_exit_2(tmp_path):
    bad = tmp_path / "devices.yaml"
    bad.write_text("devices:\n  - {name: a, transport: carrier-pigeon}\n")
    p = cli("devices", "list", "--devices", str(bad))
    assert p.returncode == 2 and str(bad) in p.stderr


def test_report_of_unknown_store_exit_2(tmp_path):
    p = cli("report", "nope", "--store", str(tmp_path / "missing.db"))
    assert p.returncode == 2 and "store not found" in p.stderr
