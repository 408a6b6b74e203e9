"""An Android device over ADB/TCP (``adb tcpip`` / wireless debugging), with adb-shell.

* key auth with the user's ``adbkey`` (adb's own key pair; ``PythonRSASigner``, which needs
  the ``rsa`` and ``pyasn1`` packages adb-shell depends on);
* commands through ``shell,v2`` when the device's banner advertises ``shell_v2`` (separate
  stdout/stderr and the real exit code), else through the legacy ``shell:`` service with the
  exit code and stderr carried back behind markers; argv is quoted with ``shlex.quote`` and
  run in the work folder;
* ``put``/``get`` through the sync service, checked with ``sha256sum`` on the device; a push
  lands under a temporary name and is renamed only after its checksum matches;
* ``FastTcpTransport`` (devices/adb/tcp.py) instead of adb-shell's stock TCP transport, and a
  deadline on every operation; a timed-out or broken connection is dropped (the device then
  hangs up the command) and reopened on the next call.
"""

from __future__ import annotations

import base64
import os
import shlex
import stat
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path

from adb_shell import constants
from adb_shell import exceptions as adb_exc
from adb_shell.adb_device import AdbDevice, _AdbIOManager

from ..adb.tcp import FastTcpTransport
from .base import ExecResult, TransportError, sha256_file

_ADB_ERRORS = (adb_exc.AdbTimeoutError, adb_exc.TcpTimeoutException, adb_exc.InvalidResponseError,
               adb_exc.InvalidCommandError, adb_exc.InvalidChecksumError, adb_exc.AdbConnectionError,
               adb_exc.DeviceAuthError, adb_exc.AdbCommandFailureException, adb_exc.PushFailedError,
               OSError, struct.error)
_TIMEOUTS = (adb_exc.AdbTimeoutError, adb_exc.TcpTimeoutException, TimeoutError)


class _BannerIOManager(_AdbIOManager):
    """adb-shell's I/O manager, keeping the device's CNXN banner (it holds the features)."""

    banner = b""

    def _read_expected_packet_from_device(self, expected_cmds, adb_info):
        cmd, arg0, arg1, data = super()._read_expected_packet_from_device(expected_cmds, adb_info)
        if cmd == constants.CNXN:
            self.banner = bytes(data)
        return cmd, arg0, arg1, data


def parse_address(address: str) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' (port 5555)."""
    host, port = address, 5555
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif address.count(":") == 1:
        host, p = address.split(":")
        port = int(p)
    if not host or not 0 < port < 65536:
        raise ValueError(f"ADB address {address!r}: expected host:port")
    return host, port


def _check_name(remote_name: str) -> str:
    parts = remote_name.split("/")
    if not remote_name or remote_name.startswith("/") or "\0" in remote_name or \
            any(p in ("", ".", "..") for p in parts):
        raise TransportError(f"remote name {remote_name!r}: must be a relative path inside the work "
                             "folder (no leading '/', no '.' or '..' parts, no NUL)")
    return remote_name


def _load_signer(adbkey: Path):
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    if not adbkey.is_file():
        raise TransportError(f"ADB private key {adbkey} not found (inventory key: adbkey); run "
                             "`adb keygen` or start adb once to create ~/.android/adbkey")
    pub = adbkey.with_name(adbkey.name + ".pub")
    if pub.is_file():
        pub_text = pub.read_text()
    else:  # adb can work from the private key alone; derive the public half
        from adb_shell.auth.keygen import encode_pubkey

        pub_text = base64.b64encode(encode_pubkey(str(adbkey))).decode() + " defakeq@controller"
    try:
        return PythonRSASigner(pub_text, adbkey.read_text())
    except Exception as exc:  # a key file of the wrong kind
        raise TransportError(f"{adbkey}: not an adb RSA private key (PKCS#8 PEM): {exc}") from None


class ADBTransport:
    """``Transport`` for an ADB device reached over TCP (see the module docstring)."""

    def __init__(self, name: str, address: str, adbkey: str = "~/.android/adbkey",
                 workdir: str = "/data/local/tmp/defakeq", python: str = "python3",
                 connect_timeout_s: float = 10.0, io_timeout_s: float = 60.0,
                 min_rate_bytes_s: float = 128 * 1024):
        self.name = name
        self.address = address
        self.host, self.port = parse_address(address)
        self.adbkey = Path(os.path.expanduser(adbkey))
        if not workdir.startswith("/"):
            raise ValueError(f"device {name}: workdir {workdir!r} must be an absolute device path")
        self._workdir = workdir.rstrip("/") or "/"
        self.python = python
        self.connect_timeout_s = float(connect_timeout_s)
        self.io_timeout_s = float(io_timeout_s)
        self.min_rate = float(min_rate_bytes_s)  # slowest link a transfer is allowed to be on
        self._tcp = FastTcpTransport(self.host, self.port, connect_timeout_s=self.connect_timeout_s)
        self._dev: AdbDevice | None = None
        self._io: _BannerIOManager | None = None
        self.banner = ""
        self.features: set[str] = set()
        self._lock = threading.RLock()

    @classmethod
    def from_device(cls, device) -> ADBTransport:
        return cls(name=device.name, address=device.address, adbkey=device.adbkey,
                   workdir=device.workdir or "/data/local/tmp/defakeq", python=device.python,
                   connect_timeout_s=device.connect_timeout_s, io_timeout_s=device.io_timeout_s)

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            if self._dev is not None and self._dev.available:
                return
            signer = _load_signer(self.adbkey)
            dev = AdbDevice(self._tcp, default_transport_timeout_s=self.io_timeout_s, banner="defakeq")
            io = _BannerIOManager(self._tcp)
            dev._io_manager = io  # same I/O, and the banner is kept
            self._tcp.set_deadline(self.connect_timeout_s * 2)
            try:
                dev.connect(rsa_keys=[signer], transport_timeout_s=self.connect_timeout_s,
                            auth_timeout_s=self.connect_timeout_s, read_timeout_s=self.connect_timeout_s)
            except _TIMEOUTS:
                self._tcp.close()
                raise TransportError(
                    f"{self.name} ({self.address}): no CNXN within {self.connect_timeout_s:g} s — the "
                    f"device did not accept the key {self.adbkey}.pub (unauthorized: confirm the "
                    "debugging prompt on the phone or add the key to its adb_keys), or no adbd "
                    "answers there", transient=True) from None
            except _ADB_ERRORS as exc:
                self._tcp.close()
                raise TransportError(f"{self.name} ({self.address}): cannot connect: "
                                     f"{type(exc).__name__}: {exc}", transient=True) from None
            finally:
                self._tcp.set_deadline(None)
            self._dev, self._io = dev, io
            self.banner = io.banner.rstrip(b"\0").decode("utf-8", "replace")
            feats = self.banner.partition("features=")[2].split(";")[0]
            self.features = {f for f in feats.split(",") if f}
        res = self.shell(f"mkdir -p {shlex.quote(self._workdir)}", timeout=self.io_timeout_s)
        if res.rc != 0:
            raise TransportError(f"{self.name}: cannot create work folder {self._workdir}: {res.stderr.strip()}")

    def _drop(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.close()
            except OSError:
                pass
        self._tcp.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _device(self) -> AdbDevice:
        if self._dev is None or not self._dev.available:
            self.connect()
        return self._dev

    # -- shell -----------------------------------------------------------------------------
    def workdir(self) -> str:
        return self._workdir

    def shell(self, command: str, timeout: float) -> ExecResult:
        """Run a shell command line as-is (no cd, no quoting) with a hard deadline."""
        with self._lock:
            dev = self._device()
            t0 = time.perf_counter()
            self._tcp.set_deadline(timeout + self.connect_timeout_s)  # + open/close round trips
            try:
                if "shell_v2" in self.features:
                    rc, out, err = self._shell_v2(dev, command, timeout)
                else:
                    rc, out, err = self._shell_legacy(dev, command, timeout)
            except _ADB_ERRORS as exc:
                self._drop()  # the device hangs the command up with the connection
                if isinstance(exc, _TIMEOUTS):
                    raise TransportError(f"{self.name}: command timed out after {timeout:.0f} s: "
                                         f"{command[:120]}", transient=True) from None
                raise TransportError(f"{self.name}: shell failed: {type(exc).__name__}: {exc}",
                                     transient=True) from None
            finally:
                self._tcp.set_deadline(None)
            return ExecResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                              time.perf_counter() - t0)

    def _shell_v2(self, dev: AdbDevice, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        out, err, buf = bytearray(), bytearray(), bytearray()
        rc = None
        for data in dev._streaming_command(b"shell,v2,raw", command.encode(), timeout, timeout, timeout):
            buf += data
            while len(buf) >= 5:
                kind, size = struct.unpack_from("<BI", buf)
                if len(buf) < 5 + size:
                    break
                payload = bytes(buf[5:5 + size])
                del buf[:5 + size]
                if kind == 1:
                    out += payload
                elif kind == 2:
                    err += payload
                elif kind == 3 and payload:
                    rc = payload[0]
        if rc is None:
            raise adb_exc.InvalidResponseError("shell v2 stream ended without an exit packet")
        return rc, bytes(out), bytes(err)

    def _shell_legacy(self, dev: AdbDevice, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        # No exit status in the legacy protocol: carry it, and stderr, behind unique markers.
        mark = f"__defakeq_{uuid.uuid4().hex}__"
        errf = shlex.quote(f"/data/local/tmp/.stderr-{mark}")  # exists and is writable on every phone
        script = (f"{{ {command}\n}} 2>{errf}; r=$?; printf '\\n{mark}E\\n'; cat {errf} 2>/dev/null; "
                  f"rm -f {errf}; printf '\\n{mark}R%d\\n' \"$r\"")
        raw = b"".join(dev._streaming_command(b"shell", script.encode(), timeout, timeout, timeout))
        m_e, m_r = f"\n{mark}E\n".encode(), f"\n{mark}R".encode()
        if m_e not in raw or m_r not in raw:
            raise adb_exc.InvalidResponseError("legacy shell output lacks the exit markers")
        out, _, rest = raw.partition(m_e)  # the markers carry the newlines printed before them
        err, _, code = rest.rpartition(m_r)
        return int(code.strip() or b"255"), out, err

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"exec needs a non-empty list of strings, got {argv!r}")
        argv = [self.python if i == 0 and a == "python3" else a for i, a in enumerate(argv)]
        line = f"cd {shlex.quote(self._workdir)} && " + " ".join(shlex.quote(a) for a in argv)
        return self.shell(line, timeout)

    # -- files -----------------------------------------------------------------------------
    def _path(self, remote_name: str) -> str:
        return f"{self._workdir}/{_check_name(remote_name)}"

    def _transfer_timeout(self, size: int) -> float:
        return self.io_timeout_s + size / self.min_rate

    def remote_info(self, remote_name: str) -> tuple[str, int] | None:
        """(sha256, size) of a work-folder file, computed on the device; None if it is absent."""
        q = shlex.quote(self._path(remote_name))
        # hash stdin: sha256sum escapes a file name holding '\\' or a newline in its output
        res = self.shell(f"if [ -f {q} ]; then sha256sum < {q} && wc -c < {q}; else echo __missing__; fi",
                         timeout=self.io_timeout_s)
        lines = res.stdout.split()
        if lines == ["__missing__"]:
            return None
        if res.rc != 0 or len(lines) < 2 or len(lines[0]) != 64 or not lines[-1].isdigit():
            raise TransportError(f"{self.name}: sha256sum failed on the device (exit {res.rc}): "
                                 f"{res.stderr.strip()[-200:] or res.stdout.strip()[-200:]}")
        return lines[0], int(lines[-1])

    def remote_sha256(self, remote_name: str) -> str | None:
        info = self.remote_info(remote_name)
        return info[0] if info else None

    def put(self, local: Path, remote_name: str, sha256: str | None = None,
            verify: bool = True) -> str:
        # Always verified, whatever `verify` says: the sync service carries no checksum.
        local = Path(local)
        dest = self._path(remote_name)
        digest = sha256_file(local)
        if sha256 and digest != sha256:
            raise TransportError(f"{self.name}: {local} has sha256 {digest[:12]}…, not the expected "
                                 f"{sha256[:12]}…; refusing to push")
        size = local.stat().st_size
        mode = stat.S_IFREG | (0o755 if os.access(local, os.X_OK) else 0o644)
        tmp = f"{dest}.part-{uuid.uuid4().hex[:8]}"
        timeout = self._transfer_timeout(size)
        with self._lock:
            dev = self._device()
            if "/" in remote_name:
                self.shell(f"mkdir -p {shlex.quote(dest.rsplit('/', 1)[0])}", timeout=self.io_timeout_s)
            self._tcp.set_deadline(timeout)
            try:
                dev.push(str(local), tmp, st_mode=mode, transport_timeout_s=self.io_timeout_s,
                         read_timeout_s=timeout)
            except _ADB_ERRORS as exc:
                self._drop()
                raise TransportError(f"{self.name}: push of {local.name} ({size} bytes) failed: "
                                     f"{type(exc).__name__}: {exc}", transient=True) from None
            finally:
                self._tcp.set_deadline(None)
        q_tmp, q_dest = shlex.quote(tmp), shlex.quote(dest)
        res = self.shell(
            f"h=$(sha256sum < {q_tmp}) && h=${{h%% *}} && if [ \"$h\" = {digest} ]; then mv -f {q_tmp} {q_dest}; "
            f"else rm -f {q_tmp}; echo \"sha256 mismatch: device has $h\" >&2; exit 99; fi",
            timeout=self.io_timeout_s)
        if res.rc != 0:
            raise TransportError(f"{self.name}: {local.name} did not arrive intact (exit {res.rc}): "
                                 f"{res.stderr.strip()[-200:]}", transient=res.rc == 99)
        return dest

    def get(self, remote_name: str, local: Path) -> Path:
        local = Path(local)
        path = self._path(remote_name)
        info = self.remote_info(remote_name)
        if info is None:
            raise TransportError(f"{self.name}: {remote_name} not found in {self._workdir}")
        expected, size = info
        fd, tmp = tempfile.mkstemp(prefix=local.name + ".", suffix=".part", dir=local.parent)
        os.close(fd)
        try:
            with self._lock:
                dev = self._device()
                timeout = self._transfer_timeout(size)
                self._tcp.set_deadline(timeout)
                try:
                    dev.pull(path, tmp, transport_timeout_s=self.io_timeout_s, read_timeout_s=timeout)
                except _ADB_ERRORS as exc:
                    self._drop()
                    raise TransportError(f"{self.name}: pull of {remote_name} failed: "
                                         f"{type(exc).__name__}: {exc}", transient=True) from None
                finally:
                    self._tcp.set_deadline(None)
            got = sha256_file(Path(tmp))
            if got != expected:
                raise TransportError(f"{self.name}: {remote_name} changed in transit (sha256 {got[:12]}… "
                                     f"vs {expected[:12]}… on the device)", transient=True)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return local

    def exists(self, remote_name: str, sha256: str) -> bool:
        return self.remote_sha256(remote_name) == sha256

    # -- Android facts -----------------------------------------------------------------------
    def facts(self) -> dict:
        from .. import android

        return android.device_facts(self, timeout=self.io_timeout_s)

    def snapshot(self) -> dict:
        from .. import android

        return android.snapshot(self, timeout=self.io_timeout_s)


def health_check(device) -> dict:
    """`defakeq devices check` for an ADB device (health.CHECKS["adb"]): reachability, Android
    version and SoC (getprop), kernel and CPUs (the POSIX probe), temperatures from the thermal
    HAL (dumpsys), benchmark_model (present, its sha256), and Python + runtimes where the
    inventory says the phone runs the Python runner."""
    from .. import health
    from ..benchmark_model import RUNTIME_FLAGS
    from ..inventory import runtime_format

    result = health.blank(device)
    t0 = time.perf_counter()
    transport = ADBTransport.from_device(device)
    timeout = min(health.PROBE_TIMEOUT_S, device.timeout_s)
    try:
        transport.connect()
        result["connect_s"] = round(time.perf_counter() - t0, 4)
        t = time.perf_counter()
        res = transport.exec(["true"], timeout=timeout)
        result["rtt_ms"] = round((time.perf_counter() - t) * 1000, 2)
        result["reachable"] = res.rc == 0
        result["workdir"] = transport.workdir()
        result.update(health.parse_shell_probe(
            transport.exec(["sh", "-c", health.SHELL_PROBE], timeout=timeout).stdout))
        facts = transport.facts()
        result["android"] = facts
        result["os"]["name"] = f"Android {facts.get('android_version')} (SDK {facts.get('sdk')})"
        result["os"]["machine"] = facts.get("abi") or result["os"].get("machine")
        result["cpu"]["soc"] = " ".join(x for x in (facts.get("soc_manufacturer"), facts.get("soc")) if x) or None
        result["device_model"] = " ".join(x for x in (facts.get("manufacturer"), facts.get("model")) if x)
        snap = transport.snapshot()  # the HAL's view; sysfs zones are often unreadable on phones
        if snap["temps_c"]:
            result["temps_c"], result["max_temp_c"] = snap["temps_c"], snap["max_temp_c"]
        result["thermal"] = snap
        binary = device.benchmark_model
        probe = transport.exec(["sh", "-c", 'test -x "$1" && sha256sum < "$1"', "probe", binary],
                               timeout=timeout)
        tool = probe.stdout.split()[0] if probe.rc == 0 and probe.stdout.split() else None
        result["benchmark_model"] = {"path": binary, "sha256": tool}
        info = health.python_info(transport, device, result, timeout) if device.runner == "python" else {}
        for runtime in device.runtimes:
            if runtime_format(runtime) == "tflite" and runtime in RUNTIME_FLAGS:
                status = {"available": tool is not None,
                          "version": f"benchmark_model sha256:{tool[:16]}" if tool else None,
                          "detail": (f"benchmark_model {' '.join(RUNTIME_FLAGS[runtime]) or '(CPU default)'}"
                                     + ("; delegate loaded at trial time" if runtime in ("litert-gpu", "litert-nnapi") else ""))
                          if tool else f"no executable benchmark_model at {binary} (inventory key: benchmark_model)"}
                if tool and device.runner == "python" and runtime in ("litert", "litert-xnnpack"):
                    scorer = health.runtime_status(runtime, info)
                    if not scorer["available"]:
                        status = {**status, "available": False,
                                  "detail": f"runner: python scores frames, but {scorer['detail']}"}
            else:
                status = health.runtime_status(runtime, info)
            result["runtimes"][runtime] = status
            if not status["available"]:
                result["problems"].append(f"runtime {runtime} unavailable: {status['detail']}")
        health.check_affinity(transport, device, result, timeout)
        health.add_warnings(result)
    except (TransportError, ValueError) as exc:
        result["error"] = str(exc)
    finally:
        transport.close()
    result["ok"] = result["reachable"] and not result["problems"] and result["error"] is None
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
