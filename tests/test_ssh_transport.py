"""SSHTransport against a real OpenSSH server on loopback (tests/sshd.py starts it)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from devices.health import check, parse_shell_probe
from devices.inventory import LocalDevice, SSHDevice
from devices.transports import open_transport
from devices.transports.base import TransportError, sha256_file
from devices.transports.ssh import PASSPHRASE_ENV, SSHTransport
from devices.trial import TrialSpec, run_trial

try:
    import sshd as sshd_support
except ImportError:  # tests/ imported as a package
    from tests import sshd as sshd_support

sshd_server = sshd_support.sshd_server
fresh_sshd = sshd_support.fresh_sshd
SSHServer = sshd_support.SSHServer


def transport_for(server: SSHServer, workdir: Path | str, **kw) -> SSHTransport:
    opts = dict(
        port=server.port,
        key_file=str(server.client_key),
        known_hosts=str(server.known_hosts),
        workdir=str(workdir),
        python=sys.executable,
        connect_timeout_s=3.0,
        keepalive_s=1.0,
        backoff_s=0.05,
    )
    opts.update(kw)
    return SSHTransport("board", server.host, server.user, **opts)


@pytest.fixture
def ssh(sshd_server, tmp_path):
    t = transport_for(sshd_server, tmp_path / "wd")
    yield t
    t.close()


def onnx_classifier(path: Path, features: int = 3 * 8 * 8, hidden: int = 16, seed: int = 0) -> dict:
    """A Flatten-Gemm-Relu-Gemm 2-logit model with a dynamic batch; returns its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = rng.standard_normal((hidden, 2)).astype(np.float32)
    b2 = np.array([0.0, 0.1], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def reference_scores(weights: dict, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x.reshape(len(x), -1) @ weights["w1"] + weights["b1"], 0)
    z = h @ weights["w2"] + weights["b2"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e[:, 1] / e.sum(axis=1)


# --- connecting ---------------------------------------------------------------------------
def test_connect_creates_hostile_workdir(sshd_server, tmp_path):
    wd = tmp_path / "a b" / "$(touch pwned);'q\"" / "deep"
    with transport_for(sshd_server, wd) as t:
        assert t.workdir() == str(wd)  # absolute: no command spent on it at connect time
        res = t.exec(["pwd"], timeout=10)
        assert res.rc == 0 and res.stdout.strip() == str(wd) and wd.is_dir()
    up = tmp_path / "up;$(touch pwned2)" / "x y"  # an upload before any command creates it too
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    with transport_for(sshd_server, up) as t:
        t.put(src, "f.bin")
        assert (up / "f.bin").read_bytes() == b"data"
    assert not list(tmp_path.rglob("pwned*"))


def test_unknown_host_key_rejected_by_default(sshd_server, tmp_path):
    kh = tmp_path / "known_hosts"  # absent: nothing is known
    t = transport_for(sshd_server, tmp_path / "wd", known_hosts=str(kh))
    with pytest.raises(TransportError, match="not in .*known_hosts.*trust_on_first_use") as err:
        t.exec(["true"], timeout=5)
    assert not err.value.transient
    assert "SHA256:" in str(err.value)
    assert not kh.exists()  # nothing was trusted behind our back


def test_changed_host_key_refused(sshd_server, tmp_path):
    other = sshd_support.keygen(tmp_path / "other_key")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{sshd_server.host_entry()} {kind} {blob}\n")
    t = transport_for(sshd_server, tmp_path / "wd", known_hosts=str(kh), trust_on_first_use=True)
    with pytest.raises(TransportError, match="host key CHANGED") as err:
        t.connect()
    assert not err.value.transient


def test_trust_on_first_use_saves_key(sshd_server, tmp_path):
    kh = tmp_path / "ssh" / "known_hosts"
    with transport_for(
        sshd_server, tmp_path / "wd", known_hosts=str(kh), trust_on_first_use=True
    ) as t:
        assert t.exec(["true"], timeout=5).rc == 0
    line = kh.read_text().split()
    server_key = Path(f"{sshd_server.host_key}.pub").read_text().split()
    assert line == [sshd_server.host_entry(), server_key[0], server_key[1]]
    # The saved key now authenticates the host with the default (rejecting) policy.
    with transport_for(sshd_server, tmp_path / "wd", known_hosts=str(kh)) as t:
        assert t.exec(["true"], timeout=5).rc == 0
    assert len(kh.read_text().splitlines()) == 1


def test_encrypted_key_passphrase_never_logged(fresh_sshd, tmp_path, caplog, monkeypatch):
    secret = "pa55-Phrase-that-must-not-leak"
    key = sshd_support.keygen(tmp_path / "enc_key", passphrase=secret)
    with open(fresh_sshd.authorized_keys, "a") as f:
        f.write(Path(f"{key}.pub").read_text())
    caplog.set_level(logging.DEBUG)
    without = transport_for(fresh_sshd, tmp_path / "wd", key_file=str(key))
    with pytest.raises(TransportError, match=PASSPHRASE_ENV) as err:
        without.connect()
    assert not err.value.transient
    monkeypatch.setenv(PASSPHRASE_ENV, secret)
    device = fresh_sshd.device(tmp_path / "wd", name="enc", key_file=str(key))
    t = open_transport(device)
    assert isinstance(t, SSHTransport)
    assert t.exec(["echo", "in"], timeout=5).stdout == "in\n"
    t.close()
    assert secret not in caplog.text and secret not in repr(t) and secret not in str(err.value)


# --- files --------------------------------------------------------------------------------
def test_put_get_exists_verified(ssh, tmp_path):
    data = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert not ssh.exists("blob.bin", sha)
    dest = ssh.put(src, "blob.bin", sha256=sha)
    assert dest == f"{ssh.workdir()}/blob.bin"
    assert ssh.exists("blob.bin", sha)
    assert not ssh.exists("blob.bin", "0" * 64)
    back = ssh.get("blob.bin", tmp_path / "back.bin")
    assert sha256_file(back) == sha
    assert sorted(os.listdir(ssh.workdir())) == ["blob.bin"]  # no temp files left behind
    with pytest.raises(TransportError, match="not found"):
        ssh.get("missing.bin", tmp_path / "x")
    ssh._hasher = "python"  # a board without sha256sum: the device python hashes instead
    ssh.put(src, "again.bin", sha256=sha)
    assert ssh.exists("again.bin", sha) and not ssh.exists("again.bin", "1" * 64)


def test_corrupted_upload_detected(ssh, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"genuine model bytes" * 1000)
    tampered: list[str] = []

    def tamper(tmp_remote: str) -> None:  # a flipped byte on the device, after a clean transfer
        tampered.append(tmp_remote)
        with open(tmp_remote, "r+b") as f:
            f.seek(7)
            f.write(b"X")

    ssh.after_upload = tamper
    with pytest.raises(TransportError, match="checksum mismatch") as err:
        ssh.put(src, "model.onnx")
    assert err.value.transient
    assert len(tampered) == ssh.attempts  # every attempt was checked, none accepted
    assert os.listdir(ssh.workdir()) == []  # neither the final name nor a temp file
    ssh.after_upload = None
    # A caller's expected sha that the bytes do not have is refused the same way.
    with pytest.raises(TransportError, match="checksum mismatch"):
        ssh.put(src, "model.onnx", sha256="ab" * 32)
    assert ssh.put(src, "model.onnx", sha256=sha256_file(src))
    assert ssh.exists("model.onnx", sha256_file(src))


HOSTILE = [
    "a; rm -rf canary",
    "$(touch pwned)",
    "`touch pwned2`",
    'it\'s "quoted"',
    "-rf",
    "sp  aces\tand tab",
    "new\nline \\ back",
]


def test_hostile_names_are_quoted(ssh, tmp_path):
    wd = Path(ssh.workdir())
    wd.mkdir(parents=True, exist_ok=True)  # the transport creates it on first use
    (wd / "canary").write_text("alive")
    for i, name in enumerate(HOSTILE):
        src = tmp_path / f"src{i}"
        src.write_bytes(f"content {i}".encode())
        ssh.put(src, name)
        assert ssh.exists(name, sha256_file(src))
        assert ssh.get(name, tmp_path / f"back{i}").read_bytes() == f"content {i}".encode()
    res = ssh.exec(["printf", "%s|", *HOSTILE], timeout=10)
    assert res.rc == 0 and res.stdout == "|".join(HOSTILE) + "|"
    res = ssh.exec(["rm", "-f", "--", HOSTILE[0]], timeout=10)
    assert res.rc == 0
    assert (wd / "canary").read_text() == "alive"
    assert sorted(p.name for p in wd.iterdir()) == sorted(["canary", *HOSTILE[1:]])
    assert not list(Path.cwd().glob("pwned*")) and not list(Path.home().glob("pwned*"))
    for bad in ("../escape", "a/b", "", ".", ".."):
        with pytest.raises(TransportError, match="bad device file name"):
            ssh.put(tmp_path / "src0", bad)


# --- commands -----------------------------------------------------------------------------
def test_exec_exit_codes_streams_and_python(ssh):
    res = ssh.exec(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (res.rc, res.stdout, res.stderr) == (3, "out\n", "err\n")
    res = ssh.exec(["python3", "-c", "import sys; print(sys.executable)"], timeout=30)
    assert res.rc == 0 and res.stdout.strip() == sys.executable  # python3 -> device.python
    assert (
        ssh.exec(["sh", "-c", "kill -9 $$"], timeout=10).rc == 128 + 9
    )  # a signal death is a code
    assert ssh.exec(["no-such-program-here"], timeout=10).rc == 127


def test_exec_timeout_raises_and_kills(ssh):
    t = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 1 s") as err:
        ssh.exec(["sleep", "30.517"], timeout=1)
    assert time.monotonic() - t < 5
    assert err.value.transient
    deadline = time.monotonic() + 5  # the device-side process group is gone too
    while time.monotonic() < deadline and _procs_with("30.517"):
        time.sleep(0.1)
    assert not _procs_with("30.517")
    assert ssh.exec(["echo", "still usable"], timeout=5).stdout == "still usable\n"


def _procs_with(word: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cmd = sshd_support.cmdline(int(pid))
        if word in cmd.split() and "<defunct>" not in cmd:
            pids.append(int(pid))
    return pids


def test_sshd_killed_mid_exec_is_a_transport_error(fresh_sshd, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="devices.transports.ssh")
    t = transport_for(fresh_sshd, tmp_path / "wd", attempts=3)
    t.connect()
    killer = threading.Timer(0.8, fresh_sshd.kill)
    killer.start()
    start = time.monotonic()
    with pytest.raises(TransportError, match="connection lost") as err:
        t.exec(["sleep", "20"], timeout=30)  # paramiko alone would report exit status -1
    assert err.value.transient
    assert time.monotonic() - start < 5
    killer.join()
    start = time.monotonic()
    with pytest.raises(TransportError, match="Connection refused") as err:
        t.exec(
            ["true"], timeout=5
        )  # the board is gone: bounded reconnect attempts, then a clear error
    assert err.value.transient and time.monotonic() - start < 5
    assert caplog.text.count("retrying in") == 2  # attempts=3: two backoffs, then give up
    t.close()


def test_reconnects_after_dropped_sessions(fresh_sshd, tmp_path):
    t = transport_for(fresh_sshd, tmp_path / "wd")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    t.put(src, "f.bin")
    logins = fresh_sshd.log_text().count("Accepted publickey")
    fresh_sshd.kill_sessions()  # the listener lives: like a board whose network blipped
    time.sleep(0.2)
    assert t.exists("f.bin", sha256_file(src))
    assert t.exec(["cat", "f.bin"], timeout=5).stdout == "x" * 1000
    assert fresh_sshd.log_text().count("Accepted publickey") == logins + 1  # one new connection
    t.close()


def test_stalled_server_hits_deadlines(fresh_sshd, tmp_path):
    t = transport_for(
        fresh_sshd, tmp_path / "wd", io_timeout_s=1.0, connect_timeout_s=1.0, attempts=2
    )
    t.connect()
    stalled: list[int] = []

    def stall() -> None:  # TCP stays up, the server stops answering
        stalled.extend(fresh_sshd.session_pids())
        for pid in stalled:
            os.kill(pid, signal.SIGSTOP)

    try:
        timer = threading.Timer(0.3, stall)
        timer.start()
        start = time.monotonic()
        with pytest.raises(TransportError, match="timed out after 1.5 s"):
            t.exec(["sh", "-c", "sleep 0.8; echo late"], timeout=1.5)
        assert time.monotonic() - start < 5
        timer.join()
        # Opening a channel on the stalled connection times out; exec reconnects, then runs.
        assert t.exec(["echo", "fresh"], timeout=5).stdout == "fresh\n"
        # A push on a stalled connection times out, is abandoned, and succeeds on a new one.
        stall()
        src = tmp_path / "g.bin"
        src.write_bytes(b"y" * 100_000)
        start = time.monotonic()
        t.put(src, "g.bin")
        assert t.exists("g.bin", sha256_file(src))
        assert time.monotonic() - start < 8
        # The exec request itself unanswered (paramiko waits for that reply without a timeout):
        # the watchdog closes the connection.
        chan = t._open_channel()
        stall()
        start = time.monotonic()
        with pytest.raises(TransportError, match="unanswered exec request timed out after 3.5 s"):
            t._run("true", timeout=0.5, what="an unanswered exec request", chan=chan)
        assert time.monotonic() - start < 5.5
        # A server that accepts TCP but never sends its banner: bounded connect attempts.
        os.kill(fresh_sshd.proc.pid, signal.SIGSTOP)
        t.close()
        start = time.monotonic()
        with pytest.raises(TransportError, match="connect to .* failed") as err:
            t.connect()
        assert err.value.transient and time.monotonic() - start < 6
    finally:
        for pid in [*stalled, fresh_sshd.proc.pid]:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        t.close()


# --- trials and health ----------------------------------------------------------------------
def ssh_device(server: SSHServer, workdir: Path, **kw) -> SSHDevice:
    fields = dict(python=sys.executable, connect_timeout_s=3.0, keepalive_s=1.0, runtimes=["onnxruntime-cpu"])
    return server.device(workdir, **{**fields, **kw})


def test_run_trial_end_to_end_over_ssh(sshd_server, tmp_path):
    model = tmp_path / "clf.onnx"
    weights = onnx_classifier(model)
    x = np.random.default_rng(1).standard_normal((12, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    device = ssh_device(sshd_server, tmp_path / "wd")
    transport = open_transport(device)
    spec = TrialSpec(
        model=model,
        inputs=tmp_path / "x.npy",
        runtime="onnxruntime-cpu",
        threads=1,
        warmup=2,
        runs=30,
    )
    try:
        first = run_trial(transport, spec)
        assert first.ok, first.error
        assert np.allclose(first.result["scores"], reference_scores(weights, x), atol=1e-5)
        lat = first.result["latency"]
        assert lat["n"] >= 30 and 0 < lat["p50"] <= lat["p99"]
        assert first.result["env"]["python"] == sys.version.split()[0]
        assert {"push_s", "exec_s", "pull_s", "overhead_s"} <= set(first.timings)
        pushed = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "wd").iterdir()}
        assert len(pushed) == 3  # runner, model, inputs; settings and result were cleaned up
        second = run_trial(transport, spec)
        assert second.ok, second.error
        assert {
            p.name: p.stat().st_mtime_ns for p in (tmp_path / "wd").iterdir()
        } == pushed  # nothing re-sent
        # A runtime the device lacks fails with the runner's reason, not a hang or a crash.
        bad = run_trial(
            transport,
            TrialSpec(model=model, inputs=tmp_path / "x.npy", runtime="onnxruntime-cuda", runs=1),
        )
        assert not bad.ok and "CUDAExecutionProvider" in bad.error
    finally:
        transport.close()


def test_health_check_ssh_local_and_unreachable(sshd_server, tmp_path):
    import numpy
    import onnxruntime

    dev = ssh_device(sshd_server, tmp_path / "wd", runtimes=["onnxruntime-cpu", "onnxruntime-cuda"])
    h = check(dev)
    assert h["reachable"] and h["error"] is None, h
    assert h["python"]["executable"] == sys.executable and h["numpy"] == numpy.__version__
    assert h["runtimes"]["onnxruntime-cpu"] == {
        "available": True,
        "version": onnxruntime.__version__,
        "detail": "CPUExecutionProvider available",
    }
    assert not h["runtimes"]["onnxruntime-cuda"]["available"]
    assert not h["ok"] and any(
        "onnxruntime-cuda" in p for p in h["problems"]
    )  # a trial would fail there
    assert h["os"]["kernel"].startswith("Linux") and h["cpu"]["count"] == os.cpu_count()
    assert h["workdir"] == str(tmp_path / "wd") and h["disk_free_mb"] > 0
    local = check(
        LocalDevice(name="here", runtimes=["onnxruntime-cpu"], workdir=str(tmp_path / "lw"))
    )
    assert local["ok"], local
    assert local["os"] == h["os"] and local["python"]["version"] == h["python"]["version"]
    gone = check(
        ssh_device(sshd_server, tmp_path / "wd", name="gone").model_copy(
            update={"port": sshd_support.free_port()}
        )
    )
    assert not gone["ok"] and not gone["reachable"] and "Connection refused" in gone["error"]


def test_parse_shell_probe_reads_board_facts():
    text = (
        'kernel=Linux 6.1.0-rpi7-rpi-v8\nmachine=aarch64\nos="Debian GNU/Linux 12 (bookworm)"\n'
        "cpu=BCM2835\nsoc=Raspberry Pi 5 Model B Rev 1.0\ncpus=4\nfreq_khz=2400000\nmem_kb=8245384\n"
        "load=0.10 0.20 0.30\ndisk_kb=1024000\ntemp=thermal_zone0:cpu-thermal:61250\n"
        "temp=thermal_zone1:gpu:-1000\ntemp=thermal_zone2:broken:N/A\n"
    )
    facts = parse_shell_probe(text)
    assert facts["os"]["name"] == "Debian GNU/Linux 12 (bookworm)"
    assert facts["cpu"] == {
        "model": "BCM2835",
        "soc": "Raspberry Pi 5 Model B Rev 1.0",
        "count": 4,
        "freq_mhz": 2400.0,
    }
    assert facts["temps_c"] == {"thermal_zone0:cpu-thermal": 61.25, "thermal_zone1:gpu": -1.0}
    assert facts["max_temp_c"] == 61.25 and facts["load"] == [0.1, 0.2, 0.3]
    assert facts["disk_free_mb"] == 1000.0 and round(facts["memory_mb"]) == 8052
