"""Security of the devices layer, against real endpoints (loopback sshd, the ADB test device):

* an artifact is verified by sha256 ON the device before a trial: a copy that does not match
  fails the trial, is never run, and is deleted so the next trial sends it again (local, SSH,
  ADB with the Python runner, ADB with benchmark_model), also when the bytes are corrupted
  during the push itself;
* no shell injection: hostile work folders, artifact file names and python paths (`; rm -rf`,
  `$(...)`, backticks, spaces, quotes) reach the remote shell quoted, over SSH and ADB;
* secrets: a passphrase-protected key whose passphrase only an environment variable holds
  drives a whole `defakeq -v run`; the passphrase is in no output: stdout/stderr, the SQLite
  file, the reports, the cache, the device's work folder, the lock files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from adb_shell.auth.keygen import keygen as adb_keygen

from devices.adb.testdevice import AdbTestDevice
from devices.health import check
from devices.inventory import ADBDevice, LocalDevice, load_inventory
from devices.transports import open_transport
from devices.trial import TrialSpec, run_trial

try:
    import sshd as sshd_support
    from test_adb_transport import tiny_tflite
    from test_fleet_suite import cli, encrypted_key, leaks, shared_cache, suite_yaml
    from test_ssh_transport import onnx_classifier, reference_scores
except ImportError:  # tests/ imported as a package
    from tests import sshd as sshd_support
    from tests.test_adb_transport import tiny_tflite
    from tests.test_fleet_suite import cli, encrypted_key, leaks, shared_cache, suite_yaml
    from tests.test_ssh_transport import onnx_classifier, reference_scores

sshd_server = sshd_support.sshd_server
HOSTILE_DIR = "a b;$(touch PWNED);`touch PWNED2`;'q\"x;rm -rf ~"


@pytest.fixture(autouse=True)
def lockdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFAKEQ_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def adbkey(tmp_path) -> Path:
    key = tmp_path / "adbkey"
    adb_keygen(str(key))
    return key


@pytest.fixture
def phone(tmp_path, adbkey):
    dev = AdbTestDevice(tmp_path / "phone", trusted_keys=[Path(f"{adbkey}.pub")]).start()
    yield dev
    dev.stop()


def onnx_pair(tmp_path: Path) -> tuple[Path, Path, Path, dict, np.ndarray]:
    """The artifact, an impostor (valid, different weights) and frames."""
    model, impostor = tmp_path / "model.onnx", tmp_path / "impostor.onnx"
    weights = onnx_classifier(model, seed=0)
    onnx_classifier(impostor, seed=1)
    x = np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return model, impostor, tmp_path / "x.npy", weights, x


def swap_on_device(workdir: Path, suffix: str, impostor: Path) -> Path:
    [copy] = list(workdir.glob(f"model-*{suffix}"))
    shutil.copyfile(impostor, copy)  # a valid model that WOULD run: only the hash tells
    return copy


def assert_refused_then_recovered(transport, spec, workdir: Path, impostor: Path, check_ok) -> None:
    first = run_trial(transport, spec)
    assert first.ok, first.error
    copy = swap_on_device(workdir, spec.model.suffix, impostor)
    bad = run_trial(transport, spec)
    assert not bad.ok and "sha256 mismatch" in bad.error, bad.error
    assert "scores" not in bad.result and "latency" not in bad.result  # it never ran
    assert not copy.exists()  # the bad copy is gone ...
    again = run_trial(transport, spec)  # ... so the next trial sends the genuine one
    assert again.ok, again.error
    assert copy.name in again.timings["pushed"] and check_ok(again.result)


# --- artifacts verified on the device ---------------------------------------------------------
def test_tampered_artifact_fails_and_never_runs_local(tmp_path):
    model, impostor, inputs, w, x = onnx_pair(tmp_path)
    t = open_transport(
        LocalDevice(name="here", workdir=str(tmp_path / "wd"), runtimes=["onnxruntime-cpu"])
    )
    spec = TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", warmup=1, runs=5)
    assert_refused_then_recovered(
        t,
        spec,
        tmp_path / "wd",
        impostor,
        lambda r: np.allclose(r["scores"], reference_scores(w, x), atol=1e-5),
    )


def test_tampered_artifact_fails_and_never_runs_ssh(sshd_server, tmp_path):
    model, impostor, inputs, w, x = onnx_pair(tmp_path)
    dev = sshd_server.device(tmp_path / "wd", name="board", python=sys.executable, runtimes=["onnxruntime-cpu"])
    t = open_transport(dev)
    try:
        spec = TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", warmup=1, runs=5)
        assert_refused_then_recovered(
            t,
            spec,
            tmp_path / "wd",
            impostor,
            lambda r: np.allclose(r["scores"], reference_scores(w, x), atol=1e-5),
        )
        # bytes corrupted during the push itself (after a clean transfer, before first use)
        (tmp_path / "wd").joinpath(next(p.name for p in (tmp_path / "wd").glob("model-*"))).unlink()

        def flip(remote_tmp: str) -> None:
            with open(remote_tmp, "r+b") as f:
                f.seek(100)
                f.write(b"\xff\xff")

        t.after_upload = flip
        bad = run_trial(t, spec)
        assert not bad.ok and "sha256 mismatch" in bad.error and "scores" not in bad.result
        assert not list((tmp_path / "wd").glob("model-*"))
    finally:
        t.close()


def test_tampered_artifact_fails_and_never_runs_adb(phone, adbkey, tmp_path):
    work = phone.host_path("/data/local/tmp/defakeq")
    model, impostor, inputs, w, x = onnx_pair(tmp_path)
    py = open_transport(
        ADBDevice(
            name="p",
            transport="adb",
            address=phone.address,
            adbkey=str(adbkey),
            runner="python",
            runtimes=["onnxruntime-cpu", "litert"],
        )
    )
    try:
        spec = TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", warmup=1, runs=5)
        assert_refused_then_recovered(
            py,
            spec,
            work,
            impostor,
            lambda r: np.allclose(r["scores"], reference_scores(w, x), atol=1e-5),
        )
    finally:
        py.close()
    # benchmark_model: the launcher hashes the .tflite with sha256sum before the tool starts
    rng = np.random.default_rng(0)
    tfl, fake = tmp_path / "m.tflite", tmp_path / "fake.tflite"
    tw, tb = tiny_tflite(tfl, rng)
    tiny_tflite(fake, rng)
    frames = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "f.npy", frames)
    bm = open_transport(
        ADBDevice(
            name="p",
            transport="adb",
            address=phone.address,
            adbkey=str(adbkey),
            runtimes=["litert"],
        )
    )
    try:
        spec = TrialSpec(model=tfl, inputs=tmp_path / "f.npy", runtime="litert", warmup=1, runs=3)
        expected = frames.reshape(2, -1) @ tw.T + tb
        assert_refused_then_recovered(
            bm, spec, work, fake, lambda r: np.allclose(np.array(r["logits"]), expected, atol=1e-4)
        )
    finally:
        bm.close()


# --- no shell injection -----------------------------------------------------------------------
def hostile_python(tmp_path: Path) -> str:
    """The device's python behind a path that is itself hostile shell text."""
    folder = tmp_path / "bin $(touch PWNED3)"
    folder.mkdir()
    wrapper = folder / "py'th\"on; echo"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_hostile_workdir_names_and_python_over_ssh(sshd_server, tmp_path):
    model, _, inputs, w, x = onnx_pair(tmp_path)
    named = tmp_path / "m; rm -rf ~ $(touch PWNED4) 'q.onnx"
    shutil.copyfile(model, named)
    wd = tmp_path / HOSTILE_DIR
    dev = sshd_server.device(wd, name="board", python=hostile_python(tmp_path), runtimes=["onnxruntime-cpu"],
                             cpu_affinity=[0])
    t = open_transport(dev)
    try:
        out = run_trial(t, TrialSpec(model=named, inputs=inputs, runtime="onnxruntime-cpu", runs=5))
        assert out.ok, out.error
        assert np.allclose(out.result["scores"], reference_scores(w, x), atol=1e-5)
        assert out.result["env"]["cpu_affinity"] == [0]
        assert wd.is_dir() and len(list(wd.iterdir())) == 3
    finally:
        t.close()
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.home().glob("PWNED*"))
    assert Path.home().is_dir()


def test_hostile_workdir_names_and_python_over_adb(phone, adbkey, tmp_path):
    workdir = "/data/local/tmp/" + HOSTILE_DIR
    model, _, inputs, w, x = onnx_pair(tmp_path)
    rng = np.random.default_rng(1)
    tfl = tmp_path / "t $(touch PWNED5);'.tflite"
    tw, tb = tiny_tflite(tfl, rng)
    frames = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "f.npy", frames)
    (tmp_path / "py").mkdir()
    python = hostile_python(tmp_path / "py")  # the phone sees the host's files (not a chroot)
    for runner in ("python", "benchmark_model"):
        dev = ADBDevice(
            name="p",
            transport="adb",
            address=phone.address,
            adbkey=str(adbkey),
            workdir=workdir,
            runner=runner,
            python=python,
            runtimes=["litert"] + (["onnxruntime-cpu"] if runner == "python" else []),
            cpu_affinity=[0],
        )
        t = open_transport(dev)
        try:
            out = run_trial(
                t, TrialSpec(model=tfl, inputs=tmp_path / "f.npy", runtime="litert", runs=3)
            )
            assert out.ok, out.error
            assert np.allclose(
                np.array(out.result["logits"]), frames.reshape(2, -1) @ tw.T + tb, atol=1e-4
            )
            assert out.result["command"][0] == "/data/local/tmp/benchmark_model"
            if runner == "python":
                out = run_trial(
                    t, TrialSpec(model=model, inputs=inputs, runtime="onnxruntime-cpu", runs=3)
                )
                assert out.ok, out.error
                assert np.allclose(out.result["scores"], reference_scores(w, x), atol=1e-5)
        finally:
            t.close()
    assert phone.host_path(workdir).is_dir()
    assert not list(phone.sandbox.root.rglob("PWNED*")) and not list(tmp_path.rglob("PWNED*"))


# --- secrets ----------------------------------------------------------------------------------
def test_the_key_passphrase_is_in_no_output_of_a_suite_run(tmp_path_factory):
    why = sshd_support.sshd_missing()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("secret-suite")
    secret = "dfq-secret-" + secrets.token_hex(12)
    env_name = "DEFAKEQ_SECURITY_TEST_PASSPHRASE"
    server = sshd_support.SSHServer(root / "sshd")
    (root / "sshd").mkdir()
    key = encrypted_key(root / "sshd", secret)
    server.authorized_keys.write_text(Path(f"{key}.pub").read_text())  # only the encrypted key
    server.start()
    try:
        entry = {
            "name": "board",
            "transport": "ssh",
            "address": server.host,
            "port": server.port,
            "user": server.user,
            "key_file": str(key),
            "key_passphrase_env": env_name,
            "known_hosts": str(server.known_hosts),
            "workdir": str(root / "board-wd"),
            "python": sys.executable,
            "runtimes": ["onnxruntime-cpu"],
        }
        (root / "devices.yaml").write_text(yaml.safe_dump({"devices": [entry]}))
        (root / "suite.yaml").write_text(
            suite_yaml(
                shared_cache(tmp_path_factory),
                ["board"],
                "[{name: fp32}]",
                "[onnx]",
                runs=10,
                min_secs=0,
            )
        )
        env = {**os.environ, env_name: secret, "DEFAKEQ_LOCK_DIR": str(root / "locks")}
        p = cli(root, env, "run", "suite.yaml", "--run-id", "secret-1", "--no-progress")
        assert p.wait(timeout=400) == 0, (root / "cli.stderr").read_text()[-3000:]
        con = sqlite3.connect(root / "runs" / "results.db")
        [(status, reason)] = con.execute("SELECT status, reason FROM trials").fetchall()
        con.close()
        assert status == "ok", reason  # the key (hence the passphrase) was really used
        p = cli(root, env, "devices", "check", "--devices", "devices.yaml", tag="check")
        assert p.wait(timeout=120) == 0, (root / "check.stdout").read_text()[-2000:]
        # the same key without its variable: refused naming the variable, never a value
        os.environ.pop(env_name, None)
        h = check(load_inventory(root / "devices.yaml").devices[0])
        assert not h["ok"] and f"${env_name} is not set" in h["error"]
    finally:
        server.stop()
    assert "DEBUG" in (root / "cli.stderr").read_text()  # -v: every logger at debug level
    found = leaks(secret, root, shared_cache(tmp_path_factory))
    assert found == [], f"the passphrase leaked into {found}"
    assert secret.encode() not in (root / "runs" / "results.db").read_bytes()
