#!/usr/bin/env python3
"""A protocol-faithful ADB *device* (the phone side of ADB, i.e. adbd) written in Python.

Why it exists: no device-side adbd is packaged in Debian or on PyPI, and the suite must be
tested against something that speaks the real ADB transport protocol. The tests drive it with
Debian's real ``adb`` client and with adb-shell; it is a test device, not a phone.

What it implements (over TCP, like ``adb tcpip``/``adb connect``):

* CNXN with version and max-payload negotiation (``min(client, device)``), banner
  ``device::ro.product.name=…;ro.product.model=…;ro.product.device=…;features=…``;
* AUTH with real RSA: a random 20-byte TOKEN, the SIGNATURE checked (PKCS#1 v1.5 over the
  token as a SHA-1 digest, like adbd) against the trusted keys (``adbkey.pub`` format:
  base64 of Android's RSAPublicKey struct + `` user@host``); an unknown key makes the client
  send RSAPUBLICKEY, which is accepted only when the device was built with
  ``accept_new_keys=True`` (otherwise it is never answered: the real client then reports the
  device as ``unauthorized``, as with an unconfirmed prompt on a phone);
* OPEN/OKAY/WRTE/CLSE with correct local/remote ids and one WRTE in flight per stream in each
  direction (a WRTE is only sent after the peer's OKAY for the previous one);
* the data checksum (byte sum) is always computed on what it sends and checked on what it
  receives, but a mismatch is only counted (``stats``), never rejected — modern clients
  send 0 there;
* ``shell:`` (pty-less, stdout+stderr in one raw stream, exit by CLSE) and ``shell,v2,…:``
  (packets: stdin 0 / stdout 1 / stderr 2 / exit 3 / close-stdin 4 / window-size 5; ``pty``
  and ``raw`` options), both with and without a command;
* ``sync:`` (STAT/LIST/SEND/RECV/DATA/DONE/OKAY/FAIL/QUIT), parsed as a byte stream: clients
  pack several sync packets into one WRTE and split packets across WRTEs.

The sandbox: the device's filesystem root ``/`` maps into a host folder (``root``). The sync
service maps every device path there. Commands run through ``/bin/sh -c`` with the working
directory at the sandbox root; this is NOT a chroot (the host's /bin, /usr and /proc stay
visible, so the phone's toolbox is the host's coreutils). Absolute device paths written in a
command under /data, /sdcard, /storage, /system, /vendor, /mnt, /sys/devices/system/cpu and
/sys/class/thermal are rewritten to the sandbox before the shell sees them, so
``cd /data/local/tmp && ls`` and ``cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq``
work as on a phone; paths assembled at run time inside a script are not rewritten, and a
Python program on the device reads the host's /sys and /proc. /data/local/tmp is therefore
``<root>/data/local/tmp``.

The phone's tools are stand-ins placed in ``<root>/system/bin`` (first in PATH): ``getprop``
(reads ``<root>/system/build.prop``), ``dumpsys thermalservice`` / ``dumpsys battery`` (in
the real output format, from the sandbox's /sys/class/thermal zones), ``cmd``, ``python3``
(the controller's Python), and a labelled stand-in ``benchmark_model`` (also at
/data/local/tmp/benchmark_model) that accepts the real flags, runs the .tflite with the
LiteRT Python interpreter (real inference, real timing) and prints the real tool's current
output format. None of them is the Android original.

Run it by hand:  python devices/adb/testdevice.py serve --root /tmp/phone --port 5555 \
                     --trust ~/.android/adbkey.pub
"""

from __future__ import annotations

import argparse
import base64
import collections
import hmac
import itertools
import os
import platform
import posixpath
import pty
import queue
import re
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# --- protocol constants (system/core/adb/adb.h, protocol.txt) ---------------------------
A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
COMMAND_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_OPEN: "OPEN", A_OKAY: "OKAY",
                 A_CLSE: "CLSE", A_WRTE: "WRTE", A_AUTH: "AUTH"}
A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001
A_VERSION = A_VERSION_SKIP_CHECKSUM
MAX_PAYLOAD = 1024 * 1024
MAX_PAYLOAD_V1 = 4096
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
HEADER = struct.Struct("<6I")

SYNC_DATA_MAX = 64 * 1024
SYNC_PATH_MAX = 1024
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT = 0, 1, 2, 3
SHELL_CLOSE_STDIN, SHELL_WINDOW_SIZE = 4, 5

ANDROID_PUBKEY_WORDS = 64  # 2048-bit modulus, the only size adbd accepts
_PUBKEY = struct.Struct("<II256s256sI")
_SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")

_DEVICE_ROOTS = ("data", "sdcard", "storage", "system", "vendor", "mnt",
                 "sys/devices/system/cpu", "sys/class/thermal")
_PATH_RE = re.compile(r"(?<![\w./~-])/(?:" + "|".join(map(re.escape, _DEVICE_ROOTS)) + r")(?![\w.-])")
_SAFE_ROOT = re.compile(r"^/[A-Za-z0-9_./-]+$")


def checksum(data: bytes) -> int:
    """The legacy ADB data checksum: the byte sum, mod 2**32."""
    return sum(data) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return HEADER.pack(command, arg0, arg1, len(data), checksum(data), command ^ 0xFFFFFFFF) + data


# --- RSA keys ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdbPublicKey:
    """An RSA public key as adb stores it: modulus n, exponent e, and the ' user@host' tail."""

    n: int
    e: int
    comment: str = ""

    @property
    def bits(self) -> int:
        return self.n.bit_length()


def parse_adbkey_pub(text: str | bytes, where: str = "adbkey.pub") -> AdbPublicKey:
    """Parse one ``adbkey.pub`` line: base64(RSAPublicKey struct) [+ ' user@host']."""
    if isinstance(text, bytes):
        text = text.rstrip(b"\0").decode("ascii", "replace")
    b64, _, comment = text.strip().partition(" ")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not base64: {exc}") from exc
    if len(raw) != _PUBKEY.size:
        raise ValueError(f"{where}: RSAPublicKey struct is {len(raw)} bytes; expected {_PUBKEY.size}")
    words, _n0inv, modulus, _rr, exponent = _PUBKEY.unpack(raw)
    if words != ANDROID_PUBKEY_WORDS:
        raise ValueError(f"{where}: modulus_size_words={words}; only 64 (RSA-2048) is allowed")
    if exponent not in (3, 65537):
        raise ValueError(f"{where}: exponent {exponent}; allowed: 3, 65537")
    return AdbPublicKey(int.from_bytes(modulus, "little"), exponent, comment.strip())


def verify_token_signature(key: AdbPublicKey, token: bytes, signature: bytes) -> bool:
    """adbd's check: RSA_verify(NID_sha1, token, sig) — PKCS#1 v1.5, token used as the digest."""
    k = (key.n.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= key.n:
        return False
    em = pow(s, key.e, key.n).to_bytes(k, "big")
    tail = _SHA1_DIGEST_INFO + token
    expected = b"\x00\x01" + b"\xff" * (k - 3 - len(tail)) + b"\x00" + tail
    return hmac.compare_digest(em, expected)


# --- the sandbox -----------------------------------------------------------------------------
@dataclass
class ThermalZone:
    name: str  # sysfs type, e.g. "cpu0-silver", "battery", "skin"
    celsius: float
    hal_type: int  # android.os.Temperature.TYPE_*: 0 CPU, 1 GPU, 2 BATTERY, 3 SKIN, 9 NPU


def default_props() -> dict[str, str]:
    machine = platform.machine().lower()
    abi = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a"}.get(
        machine, machine)
    return {
        "ro.product.name": "defakeq_testdevice",
        "ro.product.model": "DeFakeQ ADB Test Device",
        "ro.product.device": "defakeq_testdevice",
        "ro.product.brand": "DeFakeQ",
        "ro.product.manufacturer": "DeFakeQ",
        "ro.soc.manufacturer": "DeFakeQ",
        "ro.soc.model": "PySoC-1",
        "ro.board.platform": "pysoc",
        "ro.hardware": "defakeq",
        "ro.build.version.release": "14",
        "ro.build.version.sdk": "34",
        "ro.build.type": "userdebug",
        "ro.build.fingerprint": "DeFakeQ/defakeq_testdevice/defakeq_testdevice:14/TEST/1:userdebug/test-keys",
        "ro.product.cpu.abi": abi,
        "ro.product.cpu.abilist": abi,
        "ro.serialno": "DEFAKEQ0001",
    }


def default_thermal() -> list[ThermalZone]:
    return [ThermalZone("cpu0-silver", 41.5, 0), ThermalZone("cpu4-gold", 44.0, 0),
            ThermalZone("gpu0", 39.0, 1), ThermalZone("battery", 30.5, 2),
            ThermalZone("skin", 33.25, 3)]


_GETPROP = r"""#!/bin/sh
# STAND-IN for Android's getprop (DeFakeQ ADB test device): reads the sandbox's build.prop.
props='@ROOT@/system/build.prop'
if [ $# -eq 0 ]; then
  awk -F= 'NF && $1 !~ /^#/ { k=$1; sub(/^[^=]*=/, ""); printf "[%s]: [%s]\n", k, $0 }' "$props" | sort
  exit 0
fi
awk -F= -v k="$1" -v d="$2" '$1 == k { sub(/^[^=]*=/, ""); print; f=1; exit } END { if (!f) print d }' "$props"
"""

_DUMPSYS = r"""#!/bin/sh
# STAND-IN for Android's dumpsys (DeFakeQ ADB test device). Output follows the real
# ThermalManagerService.dump and BatteryService.dump formats; values come from the sandbox's
# /sys/class/thermal zones (temp in millidegrees C, type = zone name).
R='@ROOT@'
fmt_zones() {
  for z in "$R"/sys/class/thermal/thermal_zone*; do
    [ -f "$z/temp" ] || continue
    printf '%s %s %s\n' "$(cat "$z/type")" "$(cat "$z/temp")" "$(cat "$z/hal_type" 2>/dev/null || echo 0)"
  done | awk '{ v = sprintf("%g", $2 / 1000.0); if (v !~ /[.e]/) v = v ".0";
                printf "\tTemperature{mValue=%s, mType=%d, mName=%s, mStatus=0}\n", v, $3, $1 }'
}
case "$1" in
  thermalservice)
    echo "IsStatusOverride: false"
    echo "ThermalEventListeners:"
    printf '\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n'
    echo "ThermalStatusListeners:"
    printf '\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n'
    echo "Thermal Status: $(cat "$R/sys/class/thermal/.status" 2>/dev/null || echo 0)"
    echo "Cached temperatures:"
    fmt_zones
    echo "HAL Ready: true"
    echo "HAL connection:"
    printf '\tThermalHAL 2.0 connected: yes\n'
    echo "Current temperatures from HAL:"
    fmt_zones
    echo "Current cooling devices from HAL:"
    for c in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
      printf '\tCoolingDevice{mValue=0, mType=2, mName=%s}\n' "$(basename "$c")"
    done
    echo "Temperature static thresholds from HAL:"
    ;;
  battery)
    t=0
    for z in "$R"/sys/class/thermal/thermal_zone*; do
      [ "$(cat "$z/type" 2>/dev/null)" = battery ] && t=$(( $(cat "$z/temp") / 100 ))
    done
    echo "Current Battery Service state:"
    echo "  AC powered: false"
    echo "  USB powered: true"
    echo "  Wireless powered: false"
    echo "  Max charging current: 500000"
    echo "  Max charging voltage: 5000000"
    echo "  Charge counter: 3152000"
    echo "  status: 2"
    echo "  health: 2"
    echo "  present: true"
    echo "  level: 87"
    echo "  scale: 100"
    echo "  voltage: 4218"
    echo "  temperature: $t"
    echo "  technology: Li-ion"
    ;;
  -l)
    echo "Currently running services:"
    echo "  battery"
    echo "  thermalservice"
    ;;
  *)
    echo "Can't find service: $1" >&2
    exit 1
    ;;
esac
"""

_CMD = r"""#!/bin/sh
# STAND-IN for Android's cmd (DeFakeQ ADB test device): lists services and forwards the two
# the stand-in dumpsys knows; anything else fails like the real tool.
case "$1" in
  -l) exec dumpsys -l ;;
  battery|thermalservice) exec dumpsys "$1" ;;
  "") echo "cmd: No service specified; use -l to list all services" >&2; exit 20 ;;
  *) echo "cmd: Can't find service: $1" >&2; exit 20 ;;
esac
"""


class Sandbox:
    """The device's filesystem: ``/`` on the device is the host folder ``root``."""

    def __init__(self, root: str | Path):
        root = Path(root).resolve()
        if not _SAFE_ROOT.match(str(root)):
            raise ValueError(f"sandbox root {root}: only [A-Za-z0-9_./-] are allowed in its path "
                             "(it is spliced into shell commands)")
        self.root = root

    def host_path(self, device_path: str) -> Path:
        """Map an absolute device path into the sandbox (``..`` cannot climb out of it)."""
        norm = posixpath.normpath("/" + device_path.lstrip("/"))
        return self.root / norm.lstrip("/") if norm != "/" else self.root

    def rewrite_command(self, command: str) -> str:
        """Point literal device paths under the sandboxed trees at the sandbox (see module doc)."""
        return _PATH_RE.sub(lambda m: str(self.root) + m.group(0), command)

    def populate(self, props: dict[str, str], thermal: Iterable[ThermalZone],
                 cpu_khz: list[int], python: str) -> None:
        r = self.root
        for d in ("system/bin", "system/xbin", "data/local/tmp", "data/misc/adb", "sdcard",
                  "vendor", "storage", "mnt"):
            (r / d).mkdir(parents=True, exist_ok=True)
        with open(r / "system/build.prop", "w") as f:
            f.write("# DeFakeQ ADB test device properties\n")
            for k, v in props.items():
                f.write(f"{k}={v}\n")
        tools = {
            "getprop": _GETPROP,
            "dumpsys": _DUMPSYS,
            "cmd": _CMD,
            "python3": f"#!/bin/sh\n# STAND-IN: the phone's python3 is the controller's interpreter.\nexec '{python}' \"$@\"\n",
            "benchmark_model": (
                "#!/bin/sh\n# STAND-IN for TFLite's benchmark_model (DeFakeQ ADB test device): real flags,\n"
                "# LiteRT Python interpreter, the real tool's output format. Not the Google binary.\n"
                f"exec '{python}' '{Path(__file__).resolve()}' benchmark_model \"$@\"\n"),
        }
        for name, text in tools.items():
            path = r / "system/bin" / name
            path.write_text(text.replace("@ROOT@", str(r)))
            path.chmod(0o755)
        sh = r / "system/bin/sh"
        if not sh.is_symlink():
            sh.symlink_to("/bin/sh")  # scripts that say /system/bin/sh get the host's sh
        link = r / "data/local/tmp/benchmark_model"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(r / "system/bin/benchmark_model")
        tdir = r / "sys/class/thermal"
        if tdir.exists():
            shutil.rmtree(tdir)
        for i, z in enumerate(thermal):
            zd = tdir / f"thermal_zone{i}"
            zd.mkdir(parents=True)
            (zd / "type").write_text(z.name + "\n")
            (zd / "temp").write_text(f"{round(z.celsius * 1000)}\n")
            (zd / "hal_type").write_text(f"{z.hal_type}\n")
        cdir = r / "sys/devices/system/cpu"
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "online").write_text(f"0-{len(cpu_khz) - 1}\n")
        (cdir / "possible").write_text(f"0-{len(cpu_khz) - 1}\n")
        for i, khz in enumerate(cpu_khz):
            fd = cdir / f"cpu{i}/cpufreq"
            fd.mkdir(parents=True, exist_ok=True)
            top = max(cpu_khz)
            for fname, value in (("scaling_cur_freq", khz), ("scaling_min_freq", 300000),
                                 ("scaling_max_freq", top), ("cpuinfo_min_freq", 300000),
                                 ("cpuinfo_max_freq", top), ("scaling_governor", "schedutil")):
                (fd / fname).write_text(f"{value}\n")

    def shell_env(self) -> dict[str, str]:
        r = str(self.root)
        return {
            "PATH": f"{r}/system/bin:{r}/system/xbin:/usr/local/bin:/usr/bin:/bin",
            "HOME": r,
            "TMPDIR": f"{r}/data/local/tmp",
            "ANDROID_ROOT": "/system",
            "ANDROID_DATA": "/data",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
        }


# --- streams -------------------------------------------------------------------------------
class _StreamClosed(Exception):
    pass


class _Stream:
    """One OPENed stream. Outbound: one WRTE in flight, then wait for the peer's OKAY."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self._ready = threading.Event()
        self._ready.set()  # the first WRTE after OPEN needs no OKAY
        self._wlock = threading.Lock()
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self._clse_sent = False
        self._clse_lock = threading.Lock()
        self.awaiting_ack = 0  # WRTEs received and not yet acknowledged

    # outbound
    def write(self, data: bytes, stall_s: float = 60.0) -> None:
        with self._wlock:
            step = self.conn.max_payload
            for off in range(0, len(data), step):
                t0 = time.monotonic()
                while not self._ready.wait(0.2):
                    if self.closed.is_set():
                        raise _StreamClosed
                    if time.monotonic() - t0 > stall_s:
                        self.close_local()
                        raise _StreamClosed
                if self.closed.is_set():
                    raise _StreamClosed
                self._ready.clear()
                self.conn.send(A_WRTE, self.local_id, self.remote_id, data[off:off + step])
                self.conn.device._count("wrte_out")

    def on_okay(self) -> None:
        self._ready.set()

    def drain(self, timeout: float = 5.0) -> None:
        """Wait for the OKAY of the last WRTE, so that it does not arrive after our CLSE."""
        with self._wlock:
            self._ready.wait(timeout)

    # inbound
    def on_write(self, data: bytes) -> None:
        if self.awaiting_ack:
            self.conn.device._count("client_wrte_overrun")  # peer ignored flow control
        self.awaiting_ack += 1
        self.inbox.put(data)

    def recv(self) -> bytes:
        """Next chunk from the peer; acknowledged (OKAY) as it is taken, like adbd's socket."""
        data = self.inbox.get()
        if data is None:
            self.inbox.put(None)  # stay closed for every later reader
            raise _StreamClosed
        self.awaiting_ack -= 1
        if not self.closed.is_set():
            self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return data

    # closing
    def close_local(self) -> None:
        with self._clse_lock:
            if not self._clse_sent:
                self._clse_sent = True
                try:
                    self.conn.send(A_CLSE, self.local_id, self.remote_id)
                except OSError:
                    pass
        self._shut()

    def on_peer_close(self) -> None:
        self.close_local()  # adbd answers a CLSE with its own (adb-shell waits for it)

    def _shut(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._ready.set()
            self.inbox.put(None)
            self.conn.forget(self.local_id)


# --- services ------------------------------------------------------------------------------
class _ShellService:
    """``shell:`` (raw, pty-less, stderr merged) or ``shell,v2,…:`` (packetised).

    File descriptors are owned by one object each and closed once (a stray second close can
    hit a number the process has reused); the stdin side is guarded by a lock because the
    pty master is shared by the output and input threads.
    """

    def __init__(self, stream: _Stream, sandbox: Sandbox, command: str, v2: bool, use_pty: bool):
        self.s, self.sandbox, self.command = stream, sandbox, command
        self.v2, self.use_pty = v2, use_pty
        self.proc: subprocess.Popen | None = None
        self._master: int | None = None
        self._in_lock = threading.Lock()
        self._in_closed = False

    def start(self) -> None:
        argv = ["/bin/sh", "-c", self.sandbox.rewrite_command(self.command)] if self.command else ["/bin/sh"]
        kw = dict(cwd=self.sandbox.root, env=self.sandbox.shell_env(), start_new_session=True,
                  close_fds=True)
        if self.use_pty:
            master, slave = pty.openpty()
            try:
                self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, **kw)
            except OSError:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self._master = master
            outs = {master: SHELL_STDOUT}
        else:
            err = subprocess.PIPE if self.v2 else subprocess.STDOUT
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, **kw)
            outs = {self.proc.stdout.fileno(): SHELL_STDOUT}
            if self.v2:
                outs[self.proc.stderr.fileno()] = SHELL_STDERR
        threading.Thread(target=self._pump_output, args=(outs,), daemon=True).start()
        threading.Thread(target=self._pump_input, daemon=True).start()

    def _packet(self, kind: int, data: bytes) -> bytes:
        return struct.pack("<BI", kind, len(data)) + data if self.v2 else data

    def _pump_output(self, outs: dict[int, int]) -> None:
        step = max(1, self.s.conn.max_payload - (5 if self.v2 else 0))
        sel = selectors.DefaultSelector()
        for fd, kind in outs.items():
            sel.register(fd, selectors.EVENT_READ, kind)
        try:
            while sel.get_map():
                for key, _ in sel.select(0.5):
                    try:
                        chunk = os.read(key.fd, step)
                    except OSError:  # EIO: the pty's child side is gone
                        chunk = b""
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    self.s.write(self._packet(key.data, chunk))
            code = self.proc.wait()
            if code < 0:
                code = 128 - code  # killed by a signal: 128 + signo, as adbd reports it
            if self.v2:
                self.s.write(struct.pack("<BIB", SHELL_EXIT, 1, code & 0xFF))
            self.s.drain()
            self.s.close_local()
        except _StreamClosed:
            self.kill()
        finally:
            sel.close()
            if self._master is not None:
                with self._in_lock:  # no write may race the close of the shared pty master
                    self._in_closed = True
                    os.close(self._master)
            else:
                for f in (self.proc.stdout, self.proc.stderr):
                    if f is not None:
                        f.close()

    def _pump_input(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = self.s.recv()
                if not self.v2:
                    self._to_stdin(data)
                    continue
                buf += data
                while len(buf) >= 5:
                    kind, size = struct.unpack_from("<BI", buf)
                    if len(buf) < 5 + size:
                        break
                    payload = bytes(buf[5:5 + size])
                    del buf[:5 + size]
                    if kind == SHELL_STDIN:
                        self._to_stdin(payload)
                    elif kind == SHELL_CLOSE_STDIN:
                        self._close_stdin()
                    elif kind == SHELL_WINDOW_SIZE and self._master is not None:
                        self._resize(payload)
        except _StreamClosed:
            self.kill()
            self._close_stdin()

    def _to_stdin(self, data: bytes) -> None:
        with self._in_lock:
            if self._in_closed:
                return
            fd = self._master if self._master is not None else self.proc.stdin.fileno()
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except OSError:  # the command closed its stdin or exited
                    return

    def _close_stdin(self) -> None:
        with self._in_lock:
            if self._in_closed or self._master is not None:  # a pty has no separate stdin
                return
            self._in_closed = True
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _resize(self, payload: bytes) -> None:
        import fcntl
        import termios

        m = re.match(rb"(\d+)x(\d+),(\d+)x(\d+)", payload)
        if m:
            rows, cols, xp, yp = (int(x) for x in m.groups())
            with self._in_lock:
                if not self._in_closed:
                    fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xp, yp))

    def kill(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGHUP)  # what a phone's shell gets when adb goes away
            try:
                p.wait(1.0)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _SyncService:
    """``sync:``: a loop over requests parsed from the byte stream of WRTE payloads."""

    def __init__(self, stream: _Stream, sandbox: Sandbox):
        self.s, self.sandbox = stream, sandbox
        self._buf = bytearray()
        self._out = bytearray()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _need(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._flush()
            self._buf += self.s.recv()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _emit(self, data: bytes, flush_at: int = 0) -> None:
        self._out += data
        if len(self._out) >= max(flush_at, 1) and flush_at:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            self.s.write(data)

    def _fail(self, message: str) -> None:
        msg = message.encode()
        self._emit(b"FAIL" + struct.pack("<I", len(msg)) + msg)

    def _run(self) -> None:
        try:
            while True:
                rid, length = struct.unpack("<4sI", self._need(8))
                if rid in (b"STAT", b"LIST", b"SEND", b"RECV") and length > SYNC_PATH_MAX:
                    self._fail(f"path too long: {length}")
                    break
                if rid == b"QUIT":
                    break
                if rid == b"STAT":
                    self._stat(self._need(length).decode("utf-8", "surrogateescape"))
                elif rid == b"LIST":
                    self._list(self._need(length).decode("utf-8", "surrogateescape"))
                elif rid == b"SEND":
                    self._send(self._need(length).decode("utf-8", "surrogateescape"))
                elif rid == b"RECV":
                    self._recv(self._need(length).decode("utf-8", "surrogateescape"))
                else:
                    self._fail(f"unknown sync command {rid!r}")
                    break
                self._flush()
            self._flush()
            self.s.drain()
            self.s.close_local()
        except _StreamClosed:
            pass

    @staticmethod
    def _u32(x: float) -> int:
        return int(x) & 0xFFFFFFFF

    def _stat(self, path: str) -> None:
        try:
            st = os.lstat(self.sandbox.host_path(path))
            mode, size, mtime = st.st_mode, st.st_size, st.st_mtime
        except OSError:
            mode = size = mtime = 0
        self._emit(b"STAT" + struct.pack("<III", self._u32(mode), self._u32(size), self._u32(mtime)))

    def _list(self, path: str) -> None:
        host = self.sandbox.host_path(path)
        try:
            names = [".", ".."] + sorted(os.listdir(host))
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(host / name)
            except OSError:
                continue
            raw = name.encode("utf-8", "surrogateescape")
            self._emit(b"DENT" + struct.pack("<IIII", self._u32(st.st_mode), self._u32(st.st_size),
                                             self._u32(st.st_mtime), len(raw)) + raw,
                       flush_at=self.s.conn.max_payload)
        self._emit(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    def _send(self, spec: str) -> None:
        path, sep, mode_s = spec.rpartition(",")
        if not sep:
            path, mode_s = spec, str(stat.S_IFREG | 0o644)
        try:
            mode = int(mode_s)
        except ValueError:
            mode = stat.S_IFREG | 0o644
        host = self.sandbox.host_path(path)
        error = None
        f = None
        link_target = bytearray()
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
            if not stat.S_ISLNK(mode):
                if host.is_symlink() or host.exists():
                    host.unlink()  # adbd unlinks first: a running binary can be replaced
                f = open(host, "wb")
        except OSError as exc:
            error = f"couldn't create file: {exc.strerror or exc}"
        try:
            while True:
                rid, length = struct.unpack("<4sI", self._need(8))
                if rid == b"DATA":
                    if length > SYNC_DATA_MAX:
                        error = error or f"data chunk {length} > {SYNC_DATA_MAX}"
                    data = self._need(length)
                    if f is not None and error is None:
                        try:
                            f.write(data)
                        except OSError as exc:
                            error = f"write failed: {exc.strerror or exc}"
                    elif stat.S_ISLNK(mode):
                        link_target += data
                elif rid == b"DONE":
                    mtime = length
                    break
                else:
                    self._fail(f"invalid data message {rid!r}")
                    self._flush()
                    self.s.close_local()
                    raise _StreamClosed
        finally:
            if f is not None:
                f.close()
        if error is None:
            try:
                if stat.S_ISLNK(mode):
                    if host.is_symlink() or host.exists():
                        host.unlink()
                    os.symlink(link_target.decode("utf-8", "surrogateescape"), host)
                else:
                    os.chmod(host, stat.S_IMODE(mode))
                    os.utime(host, (mtime, mtime))
            except OSError as exc:
                error = f"{exc.strerror or exc}"
        if error is None:
            self._emit(b"OKAY" + struct.pack("<I", 0))
        else:
            if f is not None:
                host.unlink(missing_ok=True)
            self._fail(error)

    def _recv(self, path: str) -> None:
        host = self.sandbox.host_path(path)
        try:
            f = open(host, "rb")
        except OSError as exc:
            self._fail(f"open failed: {exc.strerror or exc}")
            return
        with f:
            while chunk := f.read(SYNC_DATA_MAX):
                # DATA packets are packed back to back and cut at max_payload by the stream,
                # so a packet can straddle two WRTEs, as with adbd.
                self._emit(b"DATA" + struct.pack("<I", len(chunk)) + chunk,
                           flush_at=self.s.conn.max_payload)
        self._emit(b"DONE" + struct.pack("<I", 0))


# --- connections ---------------------------------------------------------------------------
class _Connection:
    def __init__(self, device: AdbTestDevice, sock: socket.socket, peer: str):
        self.device, self.sock, self.peer = device, sock, peer
        self._send_lock = threading.Lock()
        self.online = False
        self.version = A_VERSION_MIN
        self.max_payload = MAX_PAYLOAD_V1
        self.token = b""
        self.client_banner = ""
        self.streams: dict[int, _Stream] = {}
        self.services: list[_ShellService] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self._sel = selectors.DefaultSelector()  # poll/epoll: no FD_SETSIZE limit
        self._sel.register(sock, selectors.EVENT_READ)

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        msg = pack_message(command, arg0, arg1, data)
        with self._send_lock:
            self.device._trace("out", command, arg0, arg1, data)
            self.sock.sendall(msg)
        self.device._count("messages_out")

    def forget(self, local_id: int) -> None:
        with self._lock:
            self.streams.pop(local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            ready = self._sel.select(0.5)
            if self.device._stopping.is_set():
                raise ConnectionAbortedError("device stopping")
            if not ready:
                continue
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError("client closed the connection")
            buf += chunk
        return bytes(buf)

    def run(self) -> None:
        try:
            while True:
                cmd, arg0, arg1, length, crc, magic = HEADER.unpack(self._recv_exact(HEADER.size))
                if magic != cmd ^ 0xFFFFFFFF:
                    raise ConnectionError(f"bad magic on command 0x{cmd:08x}")
                if length > self.device.max_payload_limit:
                    raise ConnectionError(f"payload {length} > device maximum {self.device.max_payload_limit}")
                data = self._recv_exact(length) if length else b""
                self.device._count("messages_in")
                self.device._trace("in", cmd, arg0, arg1, data)
                if crc and checksum(data) != crc:
                    self.device._count("checksum_mismatches")  # counted, never rejected
                self.dispatch(cmd, arg0, arg1, data)
        except (OSError, ConnectionError, struct.error, ValueError):  # ValueError: selector closed by stop()
            pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in list(self.streams.values()):
            s._shut()
        for svc in self.services:
            svc.kill()
        self._sel.close()
        try:
            self.sock.close()
        except OSError:
            pass

    # -- packets ---------------------------------------------------------------------------
    def dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        dev = self.device
        if cmd == A_CNXN:
            self.online = False
            with self._lock:
                streams = list(self.streams.values())
            for s in streams:  # a new CNXN resets the transport, as in adbd
                s._shut()
            self.version = min(arg0, A_VERSION)
            self.max_payload = max(256, min(arg1, dev.max_payload))
            self.client_banner = data.rstrip(b"\0").decode("utf-8", "replace")
            dev._note("max_payload_negotiated", self.max_payload)
            dev._note("client_version", arg0)
            if dev.require_auth:
                self._send_token()
            else:
                self._go_online()
        elif cmd == A_AUTH:
            self._auth(arg0, data)
        elif not self.online:
            dev._count("ignored_while_offline")
        elif cmd == A_OPEN:
            self._open(arg0, data)
        elif cmd in (A_OKAY, A_WRTE, A_CLSE):
            with self._lock:
                s = self.streams.get(arg1)
            if s is None or (s.remote_id != arg0 and arg0 != 0):
                # a CLSE answering our own CLSE is normal; anything else names no stream
                dev._count("clse_after_close" if cmd == A_CLSE else "packets_for_unknown_stream")
                return
            if cmd == A_OKAY:
                s.on_okay()
            elif cmd == A_WRTE:
                s.on_write(data)
            else:
                s.on_peer_close()
        else:
            dev._count("unknown_commands")

    def _send_token(self) -> None:
        self.token = os.urandom(TOKEN_SIZE)
        self.send(A_AUTH, AUTH_TOKEN, 0, self.token)

    def _go_online(self) -> None:
        self.online = True
        self.send(A_CNXN, self.version, self.max_payload, self.device.banner().encode())

    def _auth(self, kind: int, data: bytes) -> None:
        dev = self.device
        if kind == AUTH_SIGNATURE and self.token:
            if any(verify_token_signature(k, self.token, data) for k in dev.trusted_keys()):
                dev._count("auth_ok")
                self.token = b""
                self._go_online()
            else:
                dev._count("auth_bad_signature")
                self._send_token()  # adbd asks again; the client then offers its public key
        elif kind == AUTH_RSAPUBLICKEY:
            try:
                key = parse_adbkey_pub(data, "RSAPUBLICKEY from " + self.peer)
            except ValueError:
                dev._count("auth_malformed_key")
                return
            if dev.accept_new_keys:
                dev.trust_key(data.rstrip(b"\0").decode("ascii", "replace"))
                dev._count("auth_key_accepted")
                self._go_online()
            else:
                # A phone would show the "Allow USB debugging?" prompt; nobody confirms it here.
                dev._count("auth_key_refused")
                dev.refused_keys.append(key)

    def _open(self, remote_id: int, data: bytes) -> None:
        dev = self.device
        dest = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        service, _, arg = dest.partition(":")
        opts = service.split(",")
        ok = True
        if opts[0] == "shell":
            v2 = "v2" in opts[1:]
            if v2 and "shell_v2" not in dev.features:
                ok = False
            elif all(o in ("v2", "raw", "pty") or o.startswith("TERM=") for o in opts[1:]):
                use_pty = v2 and "pty" in opts[1:]  # the legacy shell is pty-less (module doc)
                local_id = next(self._ids)
                s = _Stream(self, local_id, remote_id)
                with self._lock:
                    self.streams[local_id] = s
                svc = _ShellService(s, dev.sandbox, arg, v2=v2, use_pty=use_pty)
                self.services.append(svc)
                self.send(A_OKAY, local_id, remote_id)
                try:
                    svc.start()
                except OSError:
                    s.close_local()
                dev._count("shell_v2" if v2 else "shell_legacy")
                return
            else:
                ok = False
        elif dest == "sync:":
            local_id = next(self._ids)
            s = _Stream(self, local_id, remote_id)
            with self._lock:
                self.streams[local_id] = s
            self.send(A_OKAY, local_id, remote_id)
            _SyncService(s, dev.sandbox).start()
            dev._count("sync")
            return
        else:
            ok = False
        if not ok:
            dev._count("open_refused")
            self.send(A_CLSE, 0, remote_id)


# --- the device ----------------------------------------------------------------------------
def _key_text(key: str | Path) -> str:
    """An adbkey.pub given as a path (Path, or a str naming an existing file) or as its text."""
    if isinstance(key, Path):
        return key.read_text()
    text = str(key).strip()
    if " " not in text and len(text) < 4096:
        path = Path(os.path.expanduser(text))
        try:
            if path.is_file():
                return path.read_text()
        except OSError:
            pass
    return text


class AdbTestDevice:
    """A test phone: an adbd on ``host:port`` over a sandbox folder (see the module docstring).

    ``trusted_keys``: adbkey.pub texts or paths; ``accept_new_keys``: answer RSAPUBLICKEY with
    CNXN (a user tapping "Allow"); ``max_payload``: the device's maximum (negotiated down to
    the client's); ``features``: what the banner advertises (only implemented ones allowed).
    """

    IMPLEMENTED_FEATURES = ("shell_v2", "cmd")

    def __init__(self, root: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 trusted_keys: Iterable[str | Path] = (), accept_new_keys: bool = False,
                 require_auth: bool = True, max_payload: int = MAX_PAYLOAD,
                 features: Iterable[str] = ("shell_v2", "cmd"), props: dict[str, str] | None = None,
                 thermal: Iterable[ThermalZone] | None = None, cpu_khz: list[int] | None = None,
                 python: str = sys.executable, trace: bool = False):
        self.features = tuple(features)
        self._trace_log: collections.deque | None = collections.deque(maxlen=2000) if trace else None
        bad = [f for f in self.features if f not in self.IMPLEMENTED_FEATURES]
        if bad:
            raise ValueError(f"features {bad} are not implemented; allowed: {list(self.IMPLEMENTED_FEATURES)}")
        if not 256 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload {max_payload}: allowed 256..{MAX_PAYLOAD}")
        self.sandbox = Sandbox(root)
        self.host, self._port = host, port
        self.require_auth, self.accept_new_keys = require_auth, accept_new_keys
        self.max_payload = max_payload
        self.max_payload_limit = MAX_PAYLOAD  # what adbd accepts from a client in any case
        self.props = {**default_props(), **(props or {})}
        self.thermal = list(thermal) if thermal is not None else default_thermal()
        self.cpu_khz = list(cpu_khz) if cpu_khz else [1804800] * 4 + [2419200] * 4
        self.python = python
        self._keys: list[AdbPublicKey] = []
        self.refused_keys: list[AdbPublicKey] = []
        self._stats: dict[str, int] = {}
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: socket.socket | None = None
        self._conns: list[_Connection] = []
        for k in trusted_keys:
            self.trust_key(_key_text(k))

    # -- configuration ---------------------------------------------------------------------
    def trust_key(self, pub_text: str) -> AdbPublicKey:
        key = parse_adbkey_pub(pub_text)
        self._keys.append(key)
        keys_file = self.sandbox.root / "data/misc/adb/adb_keys"  # where adbd keeps them
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        with open(keys_file, "a") as f:
            f.write(pub_text.strip() + "\n")
        return key

    def trusted_keys(self) -> list[AdbPublicKey]:
        return list(self._keys)

    def banner(self) -> str:
        p = self.props
        return (f"device::ro.product.name={p['ro.product.name']};ro.product.model={p['ro.product.model']};"
                f"ro.product.device={p['ro.product.device']};features={','.join(self.features)}")

    def host_path(self, device_path: str) -> Path:
        return self.sandbox.host_path(device_path)

    def set_temperature(self, zone: str, celsius: float) -> None:
        """Change a thermal zone's reading (what dumpsys and the sandbox's sysfs report)."""
        for zd in (self.sandbox.root / "sys/class/thermal").glob("thermal_zone*"):
            if (zd / "type").read_text().strip() == zone:
                (zd / "temp").write_text(f"{round(celsius * 1000)}\n")
                return
        raise KeyError(f"no thermal zone {zone!r}")

    def set_cpu_khz(self, cpu: int, khz: int) -> None:
        path = self.sandbox.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"
        if not path.exists():
            raise KeyError(f"no cpu{cpu} in the sandbox")
        path.write_text(f"{int(khz)}\n")

    # -- statistics ------------------------------------------------------------------------
    def _trace(self, direction: str, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if self._trace_log is not None:
            self._trace_log.append((round(time.monotonic(), 4), direction, COMMAND_NAMES.get(cmd, hex(cmd)),
                                    arg0, arg1, len(data), bytes(data[:32])))

    def trace_tail(self, n: int = 60) -> str:
        """The last messages in and out (when built with trace=True), for failure reports."""
        rows = list(self._trace_log or [])[-n:]
        return "\n".join(" ".join(str(x) for x in r) for r in rows)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + n

    def _note(self, key: str, value: int) -> None:
        with self._stats_lock:
            self._stats[key] = value

    @property
    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    # -- server ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("device not started")
        return self._server.getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> AdbTestDevice:
        self.sandbox.populate(self.props, self.thermal, self.cpu_khz, self.python)
        srv = socket.create_server((self.host, self._port))
        srv.settimeout(0.5)
        self._server = srv
        threading.Thread(target=self._accept_loop, name="adbd-accept", daemon=True).start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(60.0)  # bounds sendall() to a client that stopped reading
            conn = _Connection(self, sock, f"{addr[0]}:{addr[1]}")
            self._conns = [c for c in self._conns if not c.closed.is_set()] + [conn]
            self._count("connections")
            threading.Thread(target=conn.run, name="adbd-conn", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.shutdown()

    def __enter__(self) -> AdbTestDevice:
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the stand-in benchmark_model ------------------------------------------------------------
_BM_FLAGS: dict[str, type] = {
    "graph": str, "num_threads": int, "use_xnnpack": bool, "use_gpu": bool, "use_nnapi": bool,
    "warmup_runs": int, "warmup_min_secs": float, "num_runs": int, "min_secs": float,
    "max_secs": float, "run_delay": float, "input_layer_value_files": str,
    "output_filepath": str, "report_peak_memory_footprint": bool, "verbose": bool,
}
_BM_DEFAULTS = {"num_threads": -1, "warmup_runs": 1, "warmup_min_secs": 0.5, "num_runs": 50,
                "min_secs": 1.0, "max_secs": 150.0, "run_delay": -1.0}


def _g(x: float) -> str:
    """C++ ostream's default float format (6 significant digits), as the real tool prints."""
    return f"{x:g}"


def _stat_line(samples_us: list[int]) -> str:
    import numpy as np

    a = np.asarray(samples_us, dtype=np.int64)
    srt = np.sort(a)

    def pct(q: float) -> int:  # nearest rank
        return int(srt[min(len(srt) - 1, int(round(q * (len(srt) - 1))))])

    line = f"count={len(a)}"
    if len(a) > 1:
        line += f" first={a[0]} curr={a[-1]} min={a.min()} max={a.max()} avg={_g(a.mean())} std={int(a.std())}"
        line += f" p5={pct(0.05)} median={pct(0.5)} p95={pct(0.95)}"
    else:
        line += f" curr={a[-1]}"
    return line


def _rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def benchmark_model_main(argv: list[str]) -> int:
    """STAND-IN for TFLite's ``benchmark_model`` (see the module docstring): same flags for
    what it supports, real LiteRT inference and timing, the real tool's current log format."""
    import resource

    log = sys.stderr  # the real tool logs through TFLITE_LOG, i.e. to stderr

    def info(msg: str = "") -> None:
        print(f"INFO: {msg}" if msg else "", file=log, flush=True)

    def error(msg: str) -> int:
        print(f"ERROR: {msg}", file=log, flush=True)
        return 1

    flags: dict[str, object] = dict(_BM_DEFAULTS)
    for a in argv:
        m = re.fullmatch(r"--([a-z_]+)=(.*)", a, re.S)
        if not m or m.group(1) not in _BM_FLAGS:
            return error(f"unknown or malformed flag {a!r} (this stand-in accepts: "
                         f"{', '.join('--' + k for k in _BM_FLAGS)})")
        name, raw = m.groups()
        kind = _BM_FLAGS[name]
        try:
            flags[name] = raw.lower() in ("1", "true") if kind is bool else kind(raw)
        except ValueError:
            return error(f"--{name}: cannot parse {raw!r} as {kind.__name__}")
    try:  # imported before the baseline: the real tool's runtime is linked in, not loaded
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        return error(f"LiteRT interpreter not available: {exc}")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info("STARTING!")
    info("Log parameter values verbosely: [0]")
    shown = (("num_runs", "Min num runs"), ("min_secs", "Min runs duration (seconds)"),
             ("max_secs", "Max runs duration (seconds)"), ("num_threads", "Num threads"),
             ("warmup_runs", "Min warmup runs"), ("warmup_min_secs", "Min warmup runs duration (seconds)"),
             ("graph", "Graph"), ("input_layer_value_files", "Input value files"),
             ("use_xnnpack", "Use xnnpack"), ("use_gpu", "Use gpu"), ("use_nnapi", "Use NNAPI"))
    given = {re.match(r"--([a-z_]+)=", a).group(1) for a in argv}
    for key, label in shown:
        if key in given:
            v = flags[key]
            info(f"{label}: [{int(v) if isinstance(v, bool) else _g(v) if isinstance(v, float) else v}]")
    graph = flags.get("graph")
    if not graph:
        return error("Please specify the name of your TF Lite input file with --graph")
    if flags.get("use_gpu"):
        return error("GPU delegate is not available on this device (DeFakeQ ADB test device stand-in)")
    if flags.get("use_nnapi"):
        return error("NNAPI delegate is not available on this device (DeFakeQ ADB test device stand-in)")
    if not os.path.isfile(str(graph)):
        return error(f"Failed to mmap model {graph}")
    threads = int(flags["num_threads"])
    info(f"Loaded model {graph}")
    t0 = time.perf_counter()
    kwargs = {"model_path": str(graph), "num_threads": threads if threads > 0 else None}
    if flags.get("use_xnnpack") is False:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        it = Interpreter(**kwargs)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        return error(f"Failed to construct interpreter: {exc}")
    init_us = int((time.perf_counter() - t0) * 1e6)
    if threads > 0:
        info(f"#threads used for CPU inference: [{threads}]")
    info(f"The input model file size (MB): {_g(os.path.getsize(str(graph)) / 1e6)}")
    info(f"Initialized session in {_g(init_us / 1000)}ms.")
    rss_init = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    files: dict[str, str] = {}
    for item in filter(None, str(flags.get("input_layer_value_files") or "").split(",")):
        # As the real tool: the name ends at the first ':' not escaped as '\:'.
        m = re.fullmatch(r"((?:[^:\\]|\\:|\\(?!:))*):(.*)", item, re.S)
        if not m:
            return error(f"--input_layer_value_files item {item!r}: expected name:path")
        files[m.group(1).replace("\\:", ":")] = m.group(2)
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        shape, dtype = tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])
        if d["name"] in files:
            raw = np.fromfile(files.pop(d["name"]), dtype=dtype)
            if raw.size != int(np.prod(shape)):
                return error(f"input {d['name']}: file has {raw.size} values; tensor needs {int(np.prod(shape))}")
            value = raw.reshape(shape)
        elif dtype.kind == "f":
            value = rng.uniform(-0.5, 0.5, size=shape).astype(dtype)
        else:
            info_ = np.iinfo(dtype)
            value = rng.integers(info_.min, info_.max, size=shape, endpoint=True).astype(dtype)
        it.set_tensor(d["index"], value)
    if files:
        return error(f"--input_layer_value_files names no input tensor: {sorted(files)}")

    peak = [0]
    stop = threading.Event()
    if flags.get("report_peak_memory_footprint"):
        def monitor() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_kb())
                stop.wait(0.05)
        threading.Thread(target=monitor, daemon=True).start()

    def phase(min_runs: int, min_secs: float, max_secs: float) -> list[int]:
        info(f"Running benchmark for at least {min_runs} iterations and at least {_g(min_secs)} "
             f"seconds but terminate if exceeding {_g(max_secs)} seconds.")
        samples: list[int] = []
        start = time.perf_counter()
        while True:
            t = time.perf_counter_ns()
            it.invoke()
            samples.append((time.perf_counter_ns() - t) // 1000)
            el = time.perf_counter() - start
            if (len(samples) >= min_runs and el >= min_secs) or el >= max_secs:
                break
            if float(flags["run_delay"]) > 0:
                time.sleep(float(flags["run_delay"]))
        info(_stat_line(samples))
        print("", file=log)
        return samples

    peak[0] = _rss_kb()
    max_secs = float(flags["max_secs"])
    warm = phase(max(1, int(flags["warmup_runs"])), float(flags["warmup_min_secs"]), max_secs)
    runs = phase(max(1, int(flags["num_runs"])), float(flags["min_secs"]), max_secs)
    stop.set()
    peak[0] = max(peak[0], _rss_kb())
    info(f"Inference timings in us: Init: {init_us}, First inference: {warm[0]}, "
         f"Warmup (avg): {_g(sum(warm) / len(warm))}, Inference (avg): {_g(sum(runs) / len(runs))}")
    if flags.get("output_filepath"):
        with open(str(flags["output_filepath"]), "wb") as f:
            for d in it.get_output_details():
                f.write(np.ascontiguousarray(it.get_tensor(d["index"])).tobytes())
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info("Note: as the benchmark tool itself affects memory footprint, the following is only "
         "APPROXIMATE to the actual memory footprint of the model at runtime. Take the "
         "information at your discretion.")
    info(f"Memory footprint delta from the start of the tool (MB): init={_g((rss_init - rss0) / 1024)} "
         f"overall={_g((rss_end - rss0) / 1024)}")
    if flags.get("report_peak_memory_footprint"):
        info(f"Overall peak memory footprint (MB) via periodic monitoring: {_g(peak[0] / 1024)}")
    return 0


# --- command line --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "benchmark_model":
        return benchmark_model_main(argv[1:])
    p = argparse.ArgumentParser(description="DeFakeQ ADB test device (a Python adbd)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve a sandbox folder as a phone over ADB/TCP")
    s.add_argument("--root", required=True, help="sandbox folder (the phone's /)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5555)
    s.add_argument("--trust", action="append", default=[], help="adbkey.pub to trust (repeatable)")
    s.add_argument("--accept-new-keys", action="store_true")
    s.add_argument("--max-payload", type=int, default=MAX_PAYLOAD)
    args = p.parse_args(argv)
    dev = AdbTestDevice(args.root, host=args.host, port=args.port, trusted_keys=args.trust,
                        accept_new_keys=args.accept_new_keys, max_payload=args.max_payload).start()
    print(f"adb test device on {dev.address}: {dev.banner()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        dev.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
