"""devices.trial on the local transport: the launcher (one command per trial once the files are
there), the result on stdout, threads and CPU affinity from the inventory, and the per-device
lock across threads and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from devices.inventory import LocalDevice, SSHDevice
from devices.lock import device_lock, lock_path
from devices.transports import open_transport
from devices.transports.base import ExecResult
from devices.trial import (
    LAUNCHER,
    TrialFailed,
    TrialSpec,
    launch_argv,
    parse_runner_output,
    run_device_trial,
    run_trial,
)

try:
    from test_ssh_transport import onnx_classifier, reference_scores
except ImportError:  # tests/ imported as a package
    from tests.test_ssh_transport import onnx_classifier, reference_scores


@pytest.fixture
def lockdir(tmp_path, monkeypatch):
    d = tmp_path / "locks"
    monkeypatch.setenv("DEFAKEQ_LOCK_DIR", str(d))
    return d


@pytest.fixture
def model_and_inputs(tmp_path):
    model = tmp_path / "clf.onnx"
    weights = onnx_classifier(model)
    x = np.random.default_rng(5).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return model, tmp_path / "x.npy", weights, x


def test_one_command_per_trial_once_the_files_are_there(tmp_path, lockdir, model_and_inputs):
    model, inputs, weights, x = model_and_inputs
    dev = LocalDevice(name="here", workdir=str(tmp_path / "wd"), runtimes=["onnxruntime-cpu"])
    t = open_transport(dev)
    assert t.device is dev  # the inventory entry travels with the transport
    spec = TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", warmup=2, runs=25)
    first = run_trial(t, spec)
    assert first.ok, first.error
    assert np.allclose(first.result["scores"], reference_scores(weights, x), atol=1e-5)
    assert first.timings["execs"] == 2 and len(first.timings["pushed"]) == 3
    second = run_trial(t, spec)
    assert second.ok and second.timings["execs"] == 1 and second.timings["pushed"] == []
    names = sorted(p.name for p in (tmp_path / "wd").iterdir())
    assert [n.split("-")[0] for n in names] == ["defakeq_runner", "inputs", "model"]  # nothing else
    lat = second.result["latency"]
    assert lat["n"] == 25 and lat["drift"] is not None and lat["p50"] <= lat["p99"]
    assert {"startup", "verify", "open"} <= set(second.result["phases_s"])
    assert second.timings["overhead_s"] > 0 and second.timings["lock_wait_s"] >= 0


def test_threads_and_cpu_affinity_come_from_the_inventory(tmp_path, lockdir, model_and_inputs):
    model, inputs, _, _ = model_and_inputs
    dev = LocalDevice(
        name="pinned",
        workdir=str(tmp_path / "wd"),
        runtimes=["onnxruntime-cpu"],
        threads=1,
        cpu_affinity=[0],
    )
    out = run_trial(
        open_transport(dev),
        TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", runs=5),
    )
    assert out.ok, out.error
    assert out.result["env"]["cpu_affinity"] == [0]  # taskset 1 <runner>
    assert out.result["settings"]["threads"] == 1
    # the spec wins over the inventory
    out = run_trial(
        open_transport(dev),
        TrialSpec(
            model=model,
            inputs=inputs,
            runtime="onnxruntime-cpu",
            runs=5,
            threads=2,
            cpu_affinity=[1],
        ),
    )
    assert (
        out.ok
        and out.result["env"]["cpu_affinity"] == [1]
        and out.result["settings"]["threads"] == 2
    )
    bad = run_trial(
        open_transport(dev.model_copy(update={"cpu_affinity": [1000]})),
        TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", runs=5),
    )
    assert not bad.ok and "taskset" in bad.error  # no such CPU: a clear failure, nothing run


def test_launch_argv_quotes_nothing_itself_and_pins_with_a_hex_mask():
    argv = launch_argv([("a b", None), ("m.tflite", "ab" * 32)], ["prog", "$(x)"], [0, 2, 5])
    assert argv[:4] == ["sh", "-c", LAUNCHER, "defakeq-launch"]
    assert argv[4:] == ["2", "a b", "-", "m.tflite", "ab" * 32, "taskset", "25", "prog", "$(x)"]


def test_launcher_reports_missing_files_and_deletes_mismatching_ones(tmp_path):
    (tmp_path / "ok.bin").write_bytes(b"fine")
    (tmp_path / "bad.bin").write_bytes(b"tampered")
    import hashlib

    ok = hashlib.sha256(b"fine").hexdigest()

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    p = run(launch_argv([("ok.bin", ok), ("gone; rm -rf ~", None)], ["echo", "ran"]))
    assert (
        p.returncode == 45
        and "@@DEFAKEQ_MISSING@@gone; rm -rf ~" in p.stdout
        and "ran" not in p.stdout
    )
    p = run(launch_argv([("ok.bin", ok), ("bad.bin", ok)], ["echo", "ran"]))
    assert (
        p.returncode == 46 and "@@DEFAKEQ_MISMATCH@@bad.bin" in p.stdout and "ran" not in p.stdout
    )
    assert not (tmp_path / "bad.bin").exists()  # deleted: the next trial sends it again
    p = run(launch_argv([("ok.bin", ok)], ["printf", "%s|", "a b", "$HOME", "'"]))
    assert p.returncode == 0 and p.stdout == "a b|$HOME|'|"


def test_result_is_found_between_markers_despite_noise():
    out = (
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n\n@@DEFAKEQ_RESULT_BEGIN@@\n"
        '{"status": "ok", "scores": [0.5]}\n@@DEFAKEQ_RESULT_END@@\ntrailing noise\n'
    )
    assert parse_runner_output(ExecResult(0, out, "", 0.1)) == {"status": "ok", "scores": [0.5]}
    with pytest.raises(TrialFailed, match="no result from the runner \\(exit 137\\): Killed"):
        parse_runner_output(ExecResult(137, "half a line", "Killed", 0.1))


# --- one trial at a time per device ------------------------------------------------------------
def test_lock_is_per_endpoint(lockdir):
    a = LocalDevice(name="a")
    b = LocalDevice(name="b-4-threads", threads=4)
    pi = SSHDevice(name="pi", transport="ssh", address="10.0.0.2", user="pi")
    pi_alias = pi.model_copy(update={"name": "pi-again"})
    assert lock_path(a) == lock_path(b)  # one machine, one CPU: the same lock
    assert lock_path(pi) == lock_path(pi_alias) != lock_path(a)
    assert lock_path(pi).parent == lockdir


def test_lock_excludes_other_processes_and_names_the_holder(lockdir, tmp_path, model_and_inputs):
    dev = SSHDevice(name="pi", transport="ssh", address="10.0.0.2", user="pi")
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from devices.inventory import SSHDevice
        from devices.lock import device_lock
        dev = SSHDevice(name="pi", transport="ssh", address="10.0.0.2", user="pi")
        with device_lock(dev, 5, what="a long trial"):
            print("held", flush=True)
            time.sleep(float(sys.argv[1]))
    """)
    env = {**os.environ, "DEFAKEQ_LOCK_DIR": str(lockdir)}
    p = subprocess.Popen(
        [sys.executable, "-c", holder, "1.5"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=f"held by pid {p.pid} .*a long trial"):
            with device_lock(dev, 0.3):
                pass
        assert time.monotonic() - t0 < 1.0
        # a trial on the busy device waits its lock_timeout_s, then fails saying why
        model, inputs, _, _ = model_and_inputs
        out = run_device_trial(
            dev,
            None,
            TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", lock_timeout_s=0.2),
        )
        assert not out.ok and "still busy" in out.error
        t0 = time.monotonic()
        with device_lock(dev, 10):  # released when the holder exits
            waited = time.monotonic() - t0
        assert 0.1 < waited < 5
    finally:
        p.wait(timeout=10)


def test_threads_on_one_device_serialise_and_devices_run_in_parallel(lockdir):
    a = LocalDevice(name="a")
    pi = SSHDevice(name="pi", transport="ssh", address="10.0.0.2", user="pi")
    spans: dict[str, list[tuple[float, float]]] = {"a": [], "pi": []}

    def hold(dev, key):
        with device_lock(dev, 10):
            t = time.monotonic()
            time.sleep(0.2)
            spans[key].append((t, time.monotonic()))

    threads = [
        threading.Thread(target=hold, args=(d, k))
        for d, k in ((a, "a"), (a, "a"), (pi, "pi"), (pi, "pi"))
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in spans:
        (s1, e1), (s2, e2) = sorted(spans[key])
        assert s2 >= e1  # never two at once on one device
    assert time.monotonic() - t0 < 0.75  # the two devices overlapped (serial would be 0.8 s)
