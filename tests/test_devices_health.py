"""devices.health: checks by transport, the CLI's summary form, and what blocks a trial."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from devices import health
from devices.inventory import LocalDevice
from devices.runner import RUNNER_PATH


def test_every_transport_has_a_loadable_check():
    from devices.transports.adb import health_check

    for kind in ("local", "ssh", "adb"):
        assert callable(health._resolve(kind))
    assert health._resolve("adb") is health_check


def test_local_check_and_its_summary(tmp_path):
    import onnxruntime

    h = health.check(
        LocalDevice(
            name="here",
            workdir=str(tmp_path / "wd"),
            runtimes=["onnxruntime-cpu", "onnxruntime-tensorrt"],
        )
    )
    assert h["reachable"] and h["error"] is None
    assert h["runtimes"]["onnxruntime-cpu"]["version"] == onnxruntime.__version__
    assert not h["ok"] and any("onnxruntime-tensorrt" in p for p in h["problems"])
    row = health.summary(h)
    assert row["name"] == "here" and row["reachable"] == "yes"
    assert row["os"].split(" / ")[1].startswith("Linux")
    assert f"onnxruntime-cpu {onnxruntime.__version__}" in row["runtimes"]
    assert "onnxruntime-tensorrt" in row["runtimes"] and "(unavailable)" in row["runtimes"]
    assert "TensorrtExecutionProvider missing" in row["note"]
    assert row["temp °C"] == ("-" if h["max_temp_c"] is None else f"{h['max_temp_c']:.1f}")


def test_a_pinning_taskset_rejects_is_a_problem(tmp_path):
    h = health.check(
        LocalDevice(
            name="pinned",
            workdir=str(tmp_path / "wd"),
            runtimes=["onnxruntime-cpu"],
            cpu_affinity=[1000],
        )
    )
    assert not h["ok"] and any("cpu_affinity [1000]" in p for p in h["problems"])
    ok = health.check(
        LocalDevice(
            name="pinned",
            workdir=str(tmp_path / "wd"),
            runtimes=["onnxruntime-cpu"],
            cpu_affinity=[0],
        )
    )
    assert ok["ok"], ok["problems"]


def test_unreachable_summary_says_why():
    row = health.summary(
        {
            "device": "gone",
            "reachable": False,
            "error": "connection refused",
            "problems": [],
            "warnings": [],
        }
    )
    assert row["reachable"] == "no" and row["note"] == "connection refused" and row["os"] == "-"


def test_runner_thins_kept_samples_but_not_the_statistics(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"])],
        "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    )
    import onnx

    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 1, 1), np.float32))
    p = subprocess.run(
        [
            sys.executable,
            str(RUNNER_PATH),
            "--model",
            "m.onnx",
            "--inputs",
            "x.npy",
            "--out",
            "-",
            "--runs",
            "35",
            "--warmup",
            "0",
            "--max-samples",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    body = p.stdout.split("@@DEFAKEQ_RESULT_BEGIN@@\n", 1)[1].split("\n@@DEFAKEQ_RESULT_END@@")[0]
    lat = json.loads(body)["latency"]
    assert lat["n"] == 35 and lat["samples_stride"] == 4 and len(lat["samples_ms"]) == 9
