"""ADBTransport (devices/transports/adb.py) against the ADB test device: key auth, files with
on-device sha256, exit codes and quoting, Android facts, full trials through the one entry
point (devices.trial.run_trial): the real runner (python3 in the phone's PATH is the venv's),
benchmark_model latency with scores from the runner or from benchmark_model per frame, the
health check, and a 4 MiB push over an ~8 Mbit/s relay."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
import pytest
from adb_shell.adb_device import AdbDevice, AdbDeviceTcp
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from ai_edge_litert import schema_py_generated as tfl
from onnx import TensorProto, helper, numpy_helper

from devices.adb.tcp import FastTcpTransport
from devices.adb.testdevice import AdbTestDevice
from devices.health import check
from devices.inventory import ADBDevice
from devices.transports import TransportError, open_transport
from devices.transports.adb import ADBTransport
from devices.trial import TrialSpec, run_device_trial, run_trial


@pytest.fixture(scope="module")
def adbkey(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "adbkey"
    keygen(str(key))  # the same key format `adb keygen` writes
    return key


@pytest.fixture
def phone(tmp_path, adbkey):
    dev = AdbTestDevice(tmp_path / "phone", trusted_keys=[adbkey.with_suffix(".pub")]).start()
    yield dev
    dev.stop()


def device_entry(dev: AdbTestDevice, key: Path, **kw) -> ADBDevice:
    fields = dict(name="testphone", transport="adb", address=dev.address, adbkey=str(key),
                  runner="python", runtimes=["litert-xnnpack", "litert", "litert-gpu", "onnxruntime-cpu"])
    return ADBDevice(**{**fields, **kw})


@pytest.fixture
def transport(phone, adbkey):
    t = open_transport(device_entry(phone, adbkey))  # through the registry: "adb" -> ADBTransport
    yield t
    t.close()


def test_key_auth_and_banner_features(transport, phone):
    assert isinstance(transport, ADBTransport)
    transport.connect()
    assert transport.features == {"shell_v2", "cmd"}
    assert "ro.product.model=DeFakeQ ADB Test Device" in transport.banner
    assert phone.stats["auth_ok"] == 1
    assert phone.host_path("/data/local/tmp/defakeq").is_dir()  # work folder created on connect


def test_a_key_the_device_does_not_trust_is_refused(phone, tmp_path):
    keygen(str(tmp_path / "other"))
    t = ADBTransport("p", phone.address, adbkey=str(tmp_path / "other"), connect_timeout_s=1.0)
    with pytest.raises(TransportError, match="unauthorized") as err:
        t.exec(["true"], timeout=5)
    assert err.value.transient
    assert phone.stats["auth_bad_signature"] >= 1 and phone.stats["auth_key_refused"] == 1
    missing = ADBTransport("p", phone.address, adbkey=str(tmp_path / "nokey"))
    with pytest.raises(TransportError, match="adbkey"):
        missing.connect()


HOSTILE = ["a b.bin", "it's.bin", "$(touch PWNED).bin", "`touch PWNED2`", "x;rm -rf ..;y",
           "-n", "*", "tab\there", "ünï.bin", 'q"uote', "back\\slash", "new\nline"]


def test_put_get_exists_with_device_checksums_and_hostile_names(transport, phone, tmp_path):
    for i, name in enumerate(HOSTILE):
        src = tmp_path / f"src{i}"
        src.write_bytes(os.urandom(1000 + i))
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        dest = transport.put(src, name, sha256=digest)
        assert dest == f"/data/local/tmp/defakeq/{name}"
        assert phone.host_path(dest).read_bytes() == src.read_bytes()
        assert transport.exists(name, digest) and not transport.exists(name, "0" * 64)
        back = tmp_path / f"back{i}"
        transport.get(name, back)
        assert back.read_bytes() == src.read_bytes()
    work = phone.host_path("/data/local/tmp/defakeq")
    assert sorted(p.name for p in work.iterdir()) == sorted(HOSTILE)  # no .part leftovers
    assert not list(phone.sandbox.root.rglob("PWNED*")) and not Path("PWNED").exists()
    assert not transport.exists("absent.bin", "0" * 64)
    with pytest.raises(TransportError, match="not found"):
        transport.get("absent.bin", tmp_path / "x")
    with pytest.raises(TransportError, match="refusing to push"):
        transport.put(tmp_path / "src0", "y.bin", sha256="1" * 64)
    with pytest.raises(TransportError, match="relative path"):
        transport.put(tmp_path / "src0", "../escape.bin")
    (work / "a b.bin").write_bytes(b"changed on the phone")
    assert not transport.exists("a b.bin", hashlib.sha256((tmp_path / "src0").read_bytes()).hexdigest())


def test_exec_exit_codes_streams_quoting_and_timeouts(transport, phone):
    r = transport.exec(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = transport.exec(["printf", "[%s]\n", "a b", "$HOME", "`id`", "it's", ""], timeout=10)
    assert r.stdout == "[a b]\n[$HOME]\n[`id`]\n[it's]\n[]\n"
    assert transport.exec(["pwd"], timeout=10).stdout.strip().endswith("/data/local/tmp/defakeq")
    assert transport.exec(["sh", "-c", "kill -9 $$"], timeout=10).rc == 137  # 128 + SIGKILL
    t0 = time.perf_counter()
    with pytest.raises(TransportError, match="timed out") as err:
        transport.exec(["sleep", "30"], timeout=1.0)
    assert err.value.transient and time.perf_counter() - t0 < 10
    assert transport.exec(["echo", "reconnected"], timeout=10).stdout == "reconnected\n"
    assert phone.stats["connections"] == 2
    with pytest.raises(ValueError, match="non-empty list"):
        transport.exec([], timeout=1)


def test_legacy_shell_without_shell_v2_keeps_exit_codes_and_stderr(tmp_path, adbkey):
    dev = AdbTestDevice(tmp_path / "old", trusted_keys=[adbkey.with_suffix(".pub")], features=("cmd",)).start()
    try:
        t = ADBTransport("old", dev.address, adbkey=str(adbkey))
        r = t.exec(["sh", "-c", "printf 'no newline'; echo oops >&2; exit 42"], timeout=10)
        assert (r.rc, r.stdout, r.stderr) == (42, "no newline", "oops\n")
        assert t.exec(["true"], timeout=10).rc == 0
        src = tmp_path / "f"
        src.write_bytes(b"x" * 5000)
        t.put(src, "f")
        assert t.exists("f", hashlib.sha256(b"x" * 5000).hexdigest())
        assert dev.stats["shell_legacy"] >= 3 and "shell_v2" not in dev.stats
        t.close()
    finally:
        dev.stop()


def test_getprop_facts_and_thermal_cpufreq_snapshots(transport, phone):
    facts = transport.facts()
    assert facts["model"] == "DeFakeQ ADB Test Device" and facts["soc"] == "PySoC-1"
    assert facts["soc_source"] == "ro.soc.model" and facts["android_version"] == "14"
    assert facts["sdk"] == 34 and facts["abi"] in ("x86_64", "arm64-v8a")
    before = transport.snapshot()
    assert before["temps_c"]["cpu4-gold"] == 44.0 and before["max_temp_c"] == 44.0
    assert before["android"]["battery_temp_c"] == 30.5 and before["android"]["thermal_source"] == "hal"
    assert before["android"]["battery_level"] == 87 and before["source"] == "dumpsys"
    assert before["freq_mhz"]["cpu4"] == 2419.2 and len(before["freq_mhz"]) == 8
    phone.set_temperature("cpu4-gold", 71.25)
    phone.set_temperature("battery", 36.0)
    phone.set_cpu_khz(4, 998400)
    after = transport.snapshot()
    assert after["temps_c"]["cpu4-gold"] == 71.25 and after["max_temp_c"] == 71.25
    assert after["android"]["battery_temp_c"] == 36.0 and after["freq_mhz"]["cpu4"] == 998.4
    assert after["at"] >= before["at"]  # ISO 8601, UTC


def test_max_payload_negotiation_with_adb_shell(tmp_path, adbkey):
    dev = AdbTestDevice(tmp_path / "p", trusted_keys=[adbkey.with_suffix(".pub")], max_payload=4096).start()
    try:
        t = ADBTransport("small", dev.address, adbkey=str(adbkey))
        src = tmp_path / "f"
        src.write_bytes(os.urandom(200_000))
        t.put(src, "f")
        t.get("f", tmp_path / "g")
        assert (tmp_path / "g").read_bytes() == src.read_bytes()
        assert t._dev._maxdata == 4096 and dev.stats["max_payload_negotiated"] == 4096
        assert dev.stats.get("client_wrte_overrun", 0) == 0
        t.close()
    finally:
        dev.stop()


# --- trials ------------------------------------------------------------------------------------
def tiny_onnx(path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w = rng.normal(0, 0.2, size=(2, 3 * 8 * 8)).astype(np.float32)
    b = np.array([0.05, -0.05], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return w, b


def tiny_tflite(path: Path, rng: np.random.Generator, chw=(3, 16, 16),
                input_name: str = "input") -> tuple[np.ndarray, np.ndarray]:
    """RESHAPE + FULLY_CONNECTED written with LiteRT's flatbuffer schema (no converter, no torch)."""
    n_in = int(np.prod(chw))
    w = rng.normal(0, 0.1, size=(2, n_in)).astype(np.float32)
    b = np.array([0.1, -0.1], np.float32)
    buffers = [tfl.BufferT()]

    def buffer(data: bytes | None = None) -> int:
        bt = tfl.BufferT()
        bt.data = list(data) if data is not None else None
        buffers.append(bt)
        return len(buffers) - 1

    def tensor(name: str, shape, kind=tfl.TensorType.FLOAT32, data: bytes | None = None):
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), kind, buffer(data)
        return t

    tensors = [tensor(input_name, (1, *chw)), tensor("flat", (1, n_in)), tensor("weights", w.shape, data=w.tobytes()),
               tensor("bias", b.shape, data=b.tobytes()), tensor("logits", (1, 2)),
               tensor("shape", (2,), tfl.TensorType.INT32, np.array([1, n_in], np.int32).tobytes())]
    codes = []
    for op in (tfl.BuiltinOperator.RESHAPE, tfl.BuiltinOperator.FULLY_CONNECTED):
        c = tfl.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = op, op, 1
        codes.append(c)
    reshape, fc = tfl.OperatorT(), tfl.OperatorT()
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = 0, [0, 5], [1]
    reshape.builtinOptionsType = tfl.BuiltinOptions.ReshapeOptions
    reshape.builtinOptions = tfl.ReshapeOptionsT()
    reshape.builtinOptions.newShape = [1, n_in]
    fc.opcodeIndex, fc.inputs, fc.outputs = 1, [1, 2, 3], [4]
    fc.builtinOptionsType = tfl.BuiltinOptions.FullyConnectedOptions
    fc.builtinOptions = tfl.FullyConnectedOptionsT()
    sub = tfl.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [0], [4], [reshape, fc], b"main"
    model = tfl.ModelT()
    model.version, model.subgraphs, model.operatorCodes, model.buffers = 3, [sub], codes, buffers
    fbb = flatbuffers.Builder(1024)
    fbb.Finish(model.Pack(fbb), file_identifier=b"TFL3")
    path.write_bytes(fbb.Output())
    return w, b


def softmax_fake(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e[:, 1] / e.sum(axis=1)


def test_run_trial_with_the_real_runner_on_the_phone(transport, phone, tmp_path):
    rng = np.random.default_rng(7)
    model = tmp_path / "tiny.onnx"
    w, b = tiny_onnx(model, rng)
    x = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    spec = TrialSpec(model=model, inputs=tmp_path / "x.npy", runtime="onnxruntime-cpu",
                     warmup=2, runs=20, timeout_s=120)
    phone.set_temperature("skin", 35.5)
    out = run_trial(transport, spec)  # the inventory entry travels with the transport
    assert out.ok, out.error
    res = out.result
    expected = x.reshape(6, -1) @ w.T + b
    assert np.allclose(np.array(res["logits"]), expected, atol=1e-4)
    assert np.allclose(res["scores"], softmax_fake(expected), atol=1e-5)
    assert res["latency"]["n"] == 20 and res["runtime"] == "onnxruntime-cpu"
    env = res["env"]
    assert env["android"]["model"] == "DeFakeQ ADB Test Device"
    # the controller's snapshots (thermal HAL via dumpsys) bracket the run
    assert env["thermal_before"]["source"] == "dumpsys"
    assert env["thermal_before"]["temps_c"]["skin"] == 35.5 and env["thermal_before"]["max_temp_c"] == 44.0
    assert env["thermal_after"]["freq_mhz"]["cpu0"] == 1804.8
    assert env["runner_thermal_before"]["source"] == "sysfs"  # what the runner itself could read
    assert out.timings["pushed"] and out.timings["execs"] == 2  # launch (3 missing), push, launch
    # a second trial sends nothing new and is one launcher command
    again = run_trial(transport, spec)
    assert again.ok and again.timings["pushed"] == [] and again.timings["execs"] == 1
    names = sorted(p.name for p in phone.host_path("/data/local/tmp/defakeq").iterdir())
    assert len([n for n in names if n.startswith("model-")]) == 1
    assert not any(n.startswith(("result-", "settings-")) or ".part" in n for n in names)


def test_onnx_on_a_phone_without_python_is_refused(phone, adbkey):
    with pytest.raises(ValueError, match="runner: python"):
        device_entry(phone, adbkey, runner="benchmark_model")


def test_benchmark_model_latency_with_per_frame_scores(phone, adbkey, tmp_path):
    rng = np.random.default_rng(3)
    model = tmp_path / "tiny.tflite"
    w, b = tiny_tflite(model, rng, input_name="serving_default_x:0")  # a ':' to escape
    x = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "frames.npy", x)
    dev = device_entry(phone, adbkey, runner="benchmark_model", runtimes=["litert-xnnpack", "litert-gpu"])
    t = open_transport(dev)
    try:
        phone.set_temperature("cpu4-gold", 52.0)
        spec = TrialSpec(model=model, inputs=tmp_path / "frames.npy", runtime="litert-xnnpack",
                         threads=1, warmup=3, runs=40, timeout_s=120)
        out = run_device_trial(dev, t, spec)
        assert out.ok, out.error
        res = out.result
        lat = res["latency"]
        assert lat["n"] >= 40 and lat["warmup"] >= 3 and lat["source"] == "benchmark_model"
        assert lat["p90"] is None and lat["p99"] is None  # benchmark_model does not print them
        assert lat["p50"] is not None and lat["min"] <= lat["p50"] <= lat["max"]
        assert lat["mean"] == pytest.approx(res["benchmark_model"]["inference_avg_us"] / 1000)
        assert res["benchmark_model"]["memory"]["peak_mb"] > 0
        assert "--use_xnnpack=true" in res["command"] and "--num_threads=1" in res["command"]
        assert "--warmup_runs=3" in res["command"] and "--num_runs=40" in res["command"]
        assert res["env"]["thermal_before"]["max_temp_c"] == 52.0 and "freq_mhz" in res["env"]["thermal_after"]
        assert res["env"]["android"]["soc"] == "PySoC-1"
        assert res["runtime_version"].startswith("benchmark_model sha256:")
        assert res["env"]["accuracy_runner"] == {"runner": "benchmark_model"}
        expected = x.reshape(3, -1) @ w.T + b
        assert np.allclose(np.array(res["logits"]), expected, atol=1e-4)
        assert np.allclose(res["scores"], softmax_fake(expected), atol=1e-5)
        work = phone.host_path("/data/local/tmp/defakeq")
        assert not list(work.glob("in-*")) and not list(work.glob("out-*"))  # scratch removed
        bad = run_device_trial(dev, t, TrialSpec(model=model, inputs=tmp_path / "frames.npy",
                                                 runtime="litert-gpu", runs=1, timeout_s=60))
        assert not bad.ok and "GPU" in bad.error  # the stand-in has no GPU delegate
        wrong = run_device_trial(dev, t, TrialSpec(model=model, inputs=tmp_path / "frames.npy",
                                                   runtime="onnxruntime-cpu", runs=1))
        assert not wrong.ok and "runner: python" in wrong.error
        gone = dev.model_copy(update={"benchmark_model": "/data/local/tmp/nothing/benchmark_model"})
        res = run_device_trial(gone, t, spec)
        assert not res.ok and "no executable benchmark_model" in res.error
    finally:
        t.close()


def test_benchmark_model_latency_with_python_scores(transport, phone, adbkey, tmp_path):
    rng = np.random.default_rng(4)
    model = tmp_path / "tiny.tflite"
    w, b = tiny_tflite(model, rng)
    x = rng.normal(size=(5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "frames.npy", x)
    spec = TrialSpec(model=model, inputs=tmp_path / "frames.npy", runtime="litert",
                     warmup=2, runs=20, timeout_s=120)
    out = run_trial(transport, spec)
    assert out.ok, out.error
    res = out.result
    assert res["latency"]["source"] == "benchmark_model" and res["latency"]["n"] >= 20
    assert res["env"]["accuracy_runner"]["runner"] == "python"
    expected = x.reshape(5, -1) @ w.T + b
    assert np.allclose(np.array(res["logits"]), expected, atol=1e-4)
    assert res["accuracy_s"] > 0 and out.timings["overhead_s"] >= 0


def test_health_check_of_the_phone(phone, adbkey):
    h = check(device_entry(phone, adbkey, runtimes=["litert-xnnpack", "onnxruntime-cpu", "onnxruntime-cuda"]))
    assert h["reachable"] and h["error"] is None, h
    assert h["os"]["name"] == "Android 14 (SDK 34)" and h["cpu"]["soc"] == "DeFakeQ PySoC-1"
    assert h["max_temp_c"] == 44.0 and h["temps_c"]["battery"] == 30.5
    assert h["benchmark_model"]["sha256"] and h["runtimes"]["litert-xnnpack"]["available"]
    assert h["runtimes"]["litert-xnnpack"]["version"].startswith("benchmark_model sha256:")
    assert h["runtimes"]["onnxruntime-cpu"]["available"] and h["python"]["version"]
    assert not h["runtimes"]["onnxruntime-cuda"]["available"] and not h["ok"]
    missing = check(device_entry(phone, adbkey, runtimes=["litert"],
                                 benchmark_model="/data/local/tmp/none/benchmark_model"))
    assert not missing["ok"] and "no executable benchmark_model" in missing["problems"][0]
    gone = check(device_entry(phone, adbkey).model_copy(update={"address": "127.0.0.1:1"}))
    assert not gone["reachable"] and "cannot connect" in gone["error"]


# --- slow link -----------------------------------------------------------------------------------
class ThrottledRelay:
    """A TCP relay that forwards at `rate` bytes/s each way, in `step`-byte partial writes."""

    def __init__(self, target: tuple[str, int], rate: float = 1_000_000, step: int = 8192):
        self.target, self.rate, self.step = target, rate, step
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.3)
        self.port = self.srv.getsockname()[1]
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.srv.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target, timeout=5)
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        start, moved = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                if not select.select([src], [], [], 0.2)[0]:
                    start, moved = time.monotonic(), 0  # an idle link does not bank credit
                    continue
                data = src.recv(self.step)
                if not data:
                    break
                moved += len(data)
                delay = start + moved / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.srv.close()
        for s in self.socks:
            s.close()


LINK_SNDBUF = 64 * 1024  # a Wi-Fi socket's send buffer; loopback's default (~4 MB) hides partial sends


def _per_message_ms(device: AdbDevice, dev: AdbTestDevice, n: int = 10) -> float:
    """Milliseconds per ADB message over `n` sync STATs (8 messages each, 3 with a payload)."""
    device.stat("/data")
    time.sleep(0.1)
    m0 = dev.stats["messages_in"] + dev.stats["messages_out"]
    t = time.perf_counter()
    for _ in range(n):
        device.stat("/data")
    dt = time.perf_counter() - t
    time.sleep(0.2)
    return dt * 1000 / (dev.stats["messages_in"] + dev.stats["messages_out"] - m0)


def test_slow_link_4mib_push_and_per_message_latency(phone, adbkey, tmp_path):
    signer = PythonRSASigner.FromRSAKeyPath(str(adbkey))
    stock = AdbDeviceTcp("127.0.0.1", phone.port, default_transport_timeout_s=10)
    stock.connect(rsa_keys=[signer], auth_timeout_s=5)
    fast = AdbDevice(FastTcpTransport("127.0.0.1", phone.port), default_transport_timeout_s=10)
    fast.connect(rsa_keys=[signer], auth_timeout_s=5)
    ms_stock, ms_fast = _per_message_ms(stock, phone), _per_message_ms(fast, phone)
    stock.close()
    fast.close()
    print(f"\nper ADB message (loopback): stock TcpTransport {ms_stock:.2f} ms, FastTcpTransport {ms_fast:.2f} ms")

    blob = tmp_path / "4mib.bin"
    blob.write_bytes(os.urandom(4 * 1024 * 1024))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    relay = ThrottledRelay(("127.0.0.1", phone.port), rate=1_000_000)  # ~8 Mbit/s
    try:
        t = ADBTransport("slow", f"127.0.0.1:{relay.port}", adbkey=str(adbkey), io_timeout_s=20)
        t.connect()
        t._tcp._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_SNDBUF)
        t0 = time.perf_counter()
        t.put(blob, "4mib.bin", sha256=digest)
        seconds = time.perf_counter() - t0
        assert hashlib.sha256(phone.host_path("/data/local/tmp/defakeq/4mib.bin").read_bytes()).hexdigest() == digest
        assert seconds > 3.0  # it really went through the ~1 MB/s link
        print(f"4 MiB over ~8 Mbit/s with FastTcpTransport (ADBTransport.put, checksum included): {seconds:.2f} s")
        t.close()

        # adb-shell's stock transport on the same link, for the record (not asserted)
        stock = AdbDeviceTcp("127.0.0.1", relay.port, default_transport_timeout_s=5)
        stock.connect(rsa_keys=[signer], auth_timeout_s=5)
        stock._io_manager._transport._connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_SNDBUF)
        outcome: dict = {}

        def push() -> None:
            t1 = time.perf_counter()
            try:
                stock.push(str(blob), "/data/local/tmp/stock.bin", read_timeout_s=5, transport_timeout_s=5)
                outcome["done"] = time.perf_counter() - t1
            except Exception as exc:  # the stock transport's failure mode is what is measured
                outcome["failed"] = f"{type(exc).__name__} after {time.perf_counter() - t1:.1f} s"

        th = threading.Thread(target=push, daemon=True)
        th.start()
        th.join(15)
        print(f"4 MiB over ~8 Mbit/s with adb-shell's stock TcpTransport: {outcome or 'still stalled after 15 s'}")
        try:
            stock.close()
        except Exception:
            pass
    finally:
        relay.close()
