"""The on-device runner as a subprocess, exactly as a board runs it (numpy + one runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices.runner import RUNNER_PATH
from devices.runner.defakeq_runner import percentiles, softmax_fake


def tiny_onnx(path: Path) -> np.ndarray:
    """A 1-layer model (global mean -> linear) with known weights; no torch needed."""
    w = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 2.0]], np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return w


def run_runner(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER_PATH), *args], cwd=tmp, capture_output=True, text=True, timeout=120)


def test_runner_scores_and_latency(tmp_path):
    w = tiny_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    p = run_runner(tmp_path, "--model", "m.onnx", "--inputs", "x.npy", "--out", "r.json", "--runs", "40", "--warmup", "3")
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    logits = x.mean(axis=(2, 3)) @ w.T
    expected = softmax_fake(logits)
    assert np.allclose(res["scores"], expected, atol=1e-5)
    lat = res["latency"]
    assert lat["n"] == 40 and len(lat["samples_ms"]) == 40
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["fps"] == pytest.approx(1000 / lat["mean"])
    assert res["runtime"] == "onnxruntime-cpu" and res["env"]["numpy"] == np.__version__
    assert "thermal_before" in res["env"] and "thermal_after" in res["env"]


def test_runner_min_secs_extends_the_run(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    p = run_runner(tmp_path, "--model", "m.onnx", "--inputs", "x.npy", "--out", "r.json", "--runs", "5", "--min-secs", "0.3")
    assert p.returncode == 0, p.stderr
    lat = json.loads((tmp_path / "r.json").read_text())["latency"]
    assert lat["n"] > 5  # kept running until 0.3 s had passed


def test_runner_refuses_a_model_with_the_wrong_hash(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    p = run_runner(tmp_path, "--model", "m.onnx", "--inputs", "x.npy", "--out", "r.json", "--expect-sha256", "0" * 64)
    assert p.returncode == 3
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["status"] == "error" and "sha256 mismatch" in res["error"] and "scores" not in res


def test_runner_bad_input_is_a_clear_usage_error(tmp_path):
    p = run_runner(tmp_path, "--model", "missing.onnx", "--inputs", "x.npy")
    assert p.returncode == 2 and "model file not found: missing.onnx" in p.stderr
    (tmp_path / "s.json").write_text(json.dumps({"model": "m", "bogus": 1}))
    p = run_runner(tmp_path, "--settings", "s.json")
    assert p.returncode == 2 and "unknown settings ['bogus']" in p.stderr


def test_runner_unavailable_execution_provider_fails_in_json(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    p = run_runner(tmp_path, "--model", "m.onnx", "--inputs", "x.npy", "--out", "r.json", "--runtime", "onnxruntime-tensorrt")
    assert p.returncode == 3
    assert "TensorrtExecutionProvider not available" in json.loads((tmp_path / "r.json").read_text())["error"]


def test_runner_imports_nothing_of_the_project():
    src = RUNNER_PATH.read_text()
    for banned in ("import torch", "from harness", "from quant", "from devices", "import harness"):
        assert banned not in src


def test_percentiles_and_drift():
    samples = [1.0] * 10 + [2.0] * 80 + [4.0] * 10
    p = percentiles(samples)
    assert p["p50"] == 2.0 and p["min"] == 1.0 and p["max"] == 4.0
    assert p["drift"] == pytest.approx(4.0)  # last decile 4 ms vs first decile 1 ms
    assert p["fps"] == pytest.approx(1000 / 2.1)
