"""The ADB test device (devices/adb/testdevice.py) driven by Debian's real `adb` client
(apt-get install -y adb), plus raw-protocol checks of what a client cannot show: flow control,
checksums, sync packets split across WRTEs, RSA verification.

Every test uses an isolated adb server (its own port, HOME in a temp dir so the client's keys
are generated fresh there) and kills it at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner

from devices.adb.testdevice import (
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_VERSION,
    A_WRTE,
    HEADER,
    MAX_PAYLOAD,
    AdbTestDevice,
    checksum,
    parse_adbkey_pub,
    verify_token_signature,
)

ADB = shutil.which("adb")
needs_adb = pytest.mark.skipif(ADB is None, reason="Debian's adb client is needed: apt-get install -y adb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbClient:
    """The real adb client with a private server (port, HOME) — never the user's."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ADB_", "ANDROID_"))}
        self.env.update(HOME=str(home), ANDROID_ADB_SERVER_PORT=str(self.port))

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([ADB, "-P", str(self.port), *args], env=self.env, capture_output=True,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              timeout=timeout)

    @property
    def pubkey(self) -> Path:
        return self.home / ".android" / "adbkey.pub"


@pytest.fixture
def adb(tmp_path):
    client = AdbClient(tmp_path / "home")
    client.home.mkdir()
    r = client("start-server")
    assert r.returncode == 0, r.stderr
    assert client.pubkey.is_file(), "the adb server did not create its key pair in HOME/.android"
    yield client
    client("kill-server", timeout=15)


@pytest.fixture
def phone(tmp_path, adb):
    dev = AdbTestDevice(tmp_path / "phone", trusted_keys=[adb.pubkey], trace=True).start()
    yield dev
    dev.stop()
    print("device trace (last messages; shown by pytest on failure):\n" + dev.trace_tail())


def out(r: subprocess.CompletedProcess) -> str:
    return r.stdout.decode()


@needs_adb
def test_real_client_connects_with_its_key_and_runs_shell_v2(adb, phone):
    r = adb("connect", phone.address)
    assert out(r).strip() == f"connected to {phone.address}"
    devices = out(adb("devices", "-l"))
    assert f"{phone.address}" in devices and " device " in devices
    assert "product:defakeq_testdevice" in devices and "model:DeFakeQ_ADB_Test_Device" in devices
    s = ("-s", phone.address)
    assert out(adb(*s, "shell", "echo", "hello")) == "hello\n"
    r = adb(*s, "shell", "echo out; echo err >&2; exit 7")
    assert (r.returncode, out(r), r.stderr.decode()) == (7, "out\n", "err\n")  # v2: split streams + exit code
    assert adb(*s, "shell", "true").returncode == 0
    assert out(adb(*s, "shell", "getprop", "ro.product.model")) == "DeFakeQ ADB Test Device\n"
    assert out(adb(*s, "shell", "getprop ro.soc.model")) == "PySoC-1\n"
    # stdin travels as shell-v2 stdin packets and EOF as close-stdin
    r = adb(*s, "shell", "cat; echo done", input=b"piped through adb\n")
    assert out(r) == "piped through adb\ndone\n"
    r = adb(*s, "shell", "-tt", "tty; exit 5")  # forced pty: shell,v2,pty
    assert r.returncode == 5 and out(r).startswith("/dev/pts/") and out(r).endswith("\r\n")
    r = adb(*s, "shell", "cmd -l; cmd nope")
    assert "thermalservice" in out(r) and r.returncode == 20
    st = phone.stats
    assert st["auth_ok"] == 1 and st["shell_v2"] >= 6 and st.get("shell_legacy", 0) == 0
    assert st.get("client_wrte_overrun", 0) == 0 and st.get("auth_bad_signature", 0) == 0
    assert st.get("packets_for_unknown_stream", 0) == 0 and st.get("checksum_mismatches", 0) == 0
    assert st["max_payload_negotiated"] == MAX_PAYLOAD and st["client_version"] == A_VERSION


@needs_adb
def test_push_pull_multi_megabyte_byte_exact(adb, phone, tmp_path):
    assert adb("connect", phone.address).returncode == 0
    s = ("-s", phone.address)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(5 * 1024 * 1024 + 12345))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    r = adb(*s, "push", str(blob), "/data/local/tmp/dir/blob.bin")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(phone.host_path("/data/local/tmp/dir/blob.bin").read_bytes()).hexdigest() == digest
    assert out(adb(*s, "shell", "sha256sum /data/local/tmp/dir/blob.bin")).split()[0] == digest
    back = tmp_path / "back.bin"
    r = adb(*s, "pull", "/data/local/tmp/dir/blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == blob.read_bytes()
    r = adb(*s, "pull", "/data/local/tmp/nope.bin", str(tmp_path / "nope"))
    assert r.returncode != 0 and b"does not exist" in r.stdout + r.stderr  # from our STAT
    listing = out(adb(*s, "shell", "ls /data/local/tmp/dir"))
    assert listing.split() == ["blob.bin"]
    (phone.host_path("/data/local/tmp/dir/sub")).mkdir()
    (phone.host_path("/data/local/tmp/dir/sub/x.txt")).write_text("x")
    r = adb(*s, "pull", "/data/local/tmp/dir", str(tmp_path / "tree"))  # a directory: LIST
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tree/blob.bin").read_bytes() == blob.read_bytes()
    assert (tmp_path / "tree/sub/x.txt").read_text() == "x"
    assert phone.stats.get("client_wrte_overrun", 0) == 0


@needs_adb
def test_small_max_payload_is_negotiated_and_transfers_still_exact(adb, tmp_path):
    dev = AdbTestDevice(tmp_path / "phone", trusted_keys=[adb.pubkey], max_payload=4096).start()
    try:
        assert adb("connect", dev.address).returncode == 0
        blob = tmp_path / "b.bin"
        blob.write_bytes(os.urandom(300_001))
        s = ("-s", dev.address)
        assert adb(*s, "push", str(blob), "/sdcard/b.bin").returncode == 0
        assert adb(*s, "pull", "/sdcard/b.bin", str(tmp_path / "c.bin")).returncode == 0
        assert (tmp_path / "c.bin").read_bytes() == blob.read_bytes()
        r = adb(*s, "shell", "head -c 50000 /dev/zero | wc -c")
        assert out(r).strip() == "50000"
        assert dev.stats["max_payload_negotiated"] == 4096
        assert dev.stats["wrte_out"] > 300_001 // 4096  # the device cut its output at 4 KiB
    finally:
        dev.stop()


@needs_adb
def test_unknown_key_is_refused_and_the_client_says_unauthorized(adb, tmp_path):
    dev = AdbTestDevice(tmp_path / "phone").start()  # trusts nothing, accepts nothing new
    try:
        r = adb("connect", dev.address)
        assert "authenticate" in out(r) + r.stderr.decode()
        deadline = time.time() + 5
        while "unauthorized" not in out(adb("devices")) and time.time() < deadline:
            time.sleep(0.1)
        assert f"{dev.address}\tunauthorized" in out(adb("devices"))
        r = adb("-s", dev.address, "shell", "echo", "hi")
        assert r.returncode != 0 and b"unauthorized" in r.stderr
        st = dev.stats
        assert st["auth_bad_signature"] >= 1 and st["auth_key_refused"] >= 1 and "auth_ok" not in st
        client_key = parse_adbkey_pub(adb.pubkey.read_text())
        assert dev.refused_keys[0].n == client_key.n  # the client offered its real public key
    finally:
        dev.stop()


@needs_adb
def test_new_key_accepted_when_the_device_allows_it(adb, tmp_path):
    dev = AdbTestDevice(tmp_path / "phone", accept_new_keys=True).start()
    try:
        # As with a phone whose user taps "Allow": connect first reports the failed signature,
        # then the device comes online once the offered key is accepted.
        adb("connect", dev.address)
        deadline = time.time() + 5
        while f"{dev.address}\tdevice" not in out(adb("devices")) and time.time() < deadline:
            time.sleep(0.1)
        assert out(adb("-s", dev.address, "shell", "echo ok")) == "ok\n"
        assert dev.stats["auth_key_accepted"] == 1
        stored = (dev.host_path("/data/misc/adb/adb_keys")).read_text()
        assert adb.pubkey.read_text().split()[0] in stored
    finally:
        dev.stop()


# --- raw protocol ------------------------------------------------------------------------------
class Raw:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, cmd: int, a0: int, a1: int, data: bytes = b"", crc: int | None = None) -> None:
        crc = checksum(data) if crc is None else crc
        self.sock.sendall(HEADER.pack(cmd, a0, a1, len(data), crc, cmd ^ 0xFFFFFFFF) + data)

    def recv(self, timeout: float = 5.0):
        self.sock.settimeout(timeout)
        try:
            head = self._exact(HEADER.size)
        except TimeoutError:
            return None
        cmd, a0, a1, n, crc, magic = HEADER.unpack(head)
        data = self._exact(n) if n else b""
        assert magic == cmd ^ 0xFFFFFFFF and crc == checksum(data)  # device always computes it
        return cmd, a0, a1, data

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "device closed the connection"
            buf += chunk
        return buf


@pytest.fixture
def open_phone(tmp_path):
    dev = AdbTestDevice(tmp_path / "phone", require_auth=False, max_payload=4096).start()
    yield dev
    dev.stop()


def test_checksum_is_computed_but_never_rejected(open_phone):
    raw = Raw(open_phone.port)
    raw.send(A_CNXN, 0x01000000, 4096, b"host::\0", crc=12345)  # wrong checksum
    cmd, version, maxdata, banner = raw.recv()
    assert cmd == A_CNXN and version == 0x01000000 and maxdata == 4096
    assert banner.decode() == ("device::ro.product.name=defakeq_testdevice;ro.product.model=DeFakeQ ADB "
                               "Test Device;ro.product.device=defakeq_testdevice;features=shell_v2,cmd")
    assert open_phone.stats["checksum_mismatches"] == 1


def test_one_wrte_in_flight_until_okay(open_phone):
    raw = Raw(open_phone.port)
    raw.send(A_CNXN, A_VERSION, MAX_PAYLOAD, b"host::\0")
    assert raw.recv()[0] == A_CNXN
    raw.send(A_OPEN, 7, 0, b"shell,v2,raw:head -c 100000 /dev/zero\0")
    cmd, dev_id, my_id, _ = raw.recv()
    assert (cmd, my_id) == (A_OKAY, 7) and dev_id != 0
    got = 0
    for _ in range(3):
        cmd, a0, a1, data = raw.recv()
        assert (cmd, a0, a1) == (A_WRTE, dev_id, 7) and len(data) <= 4096
        got += len(data)
        assert raw.recv(timeout=0.4) is None  # nothing more until we acknowledge
        raw.send(A_OKAY, 7, dev_id)
    raw.send(A_CLSE, 7, dev_id)
    while (msg := raw.recv(timeout=2)) is not None and msg[0] != A_CLSE:
        pass
    assert msg is not None and msg[:3] == (A_CLSE, dev_id, 7)  # the device answers the CLSE
    assert got > 0


def test_sync_requests_split_across_writes_and_packed_together(open_phone):
    raw = Raw(open_phone.port)
    raw.send(A_CNXN, A_VERSION, MAX_PAYLOAD, b"host::\0")
    raw.recv()
    raw.send(A_OPEN, 3, 0, b"sync:\0")
    _, dev_id, _, _ = raw.recv()
    body = os.urandom(100_000)
    spec = b"/data/local/tmp/split.bin,33188"  # S_IFREG | 0644
    stream = b"SEND" + struct.pack("<I", len(spec)) + spec
    for off in range(0, len(body), 60_000):
        chunk = body[off:off + 60_000]
        stream += b"DATA" + struct.pack("<I", len(chunk)) + chunk
    stream += b"DONE" + struct.pack("<I", 1_234_567)
    target = b"/data/local/tmp/split.bin"
    stream += b"STAT" + struct.pack("<I", len(target)) + target
    cuts = [0, 1, 5, 9, 4000, 4096 * 3 + 17, len(stream)]
    pieces = [stream[a:b] for a, b in zip(cuts, cuts[1:])]
    pieces = [p[i:i + 4096] for p in pieces for i in range(0, len(p), 4096)]
    replies = b""
    for p in pieces:
        raw.send(A_WRTE, 3, dev_id, p)
        while True:
            cmd, _, _, data = raw.recv()
            if cmd == A_OKAY:
                break
            replies += data
            raw.send(A_OKAY, 3, dev_id)
    while len(replies) < 8 + 16:
        cmd, _, _, data = raw.recv()
        replies += data
        raw.send(A_OKAY, 3, dev_id)
    assert replies[:8] == b"OKAY" + struct.pack("<I", 0)
    rid, mode, size, mtime = struct.unpack("<4sIII", replies[8:24])
    host = open_phone.host_path("/data/local/tmp/split.bin")
    assert host.read_bytes() == body
    assert (rid, mode & 0o777, size) == (b"STAT", 0o644, len(body)) and mtime == 1_234_567
    assert host.stat().st_mtime == 1_234_567


def test_rsa_signature_verification_is_real(tmp_path):
    keygen(str(tmp_path / "k1"))
    keygen(str(tmp_path / "k2"))
    key1 = parse_adbkey_pub((tmp_path / "k1.pub").read_text())
    signer1 = PythonRSASigner.FromRSAKeyPath(str(tmp_path / "k1"))
    signer2 = PythonRSASigner.FromRSAKeyPath(str(tmp_path / "k2"))
    token = os.urandom(20)
    assert key1.bits == 2048 and key1.e == 65537
    assert verify_token_signature(key1, token, signer1.Sign(token))
    assert not verify_token_signature(key1, token, signer2.Sign(token))
    assert not verify_token_signature(key1, os.urandom(20), signer1.Sign(token))
    sig = bytearray(signer1.Sign(token))
    sig[-1] ^= 1
    assert not verify_token_signature(key1, token, bytes(sig))
    with pytest.raises(ValueError, match="RSAPublicKey struct"):
        parse_adbkey_pub("aGVsbG8= user@host")


def test_sandbox_paths_and_tools(open_phone):
    sb = open_phone.sandbox
    assert sb.host_path("/../../etc/passwd") == sb.root / "etc/passwd"  # cannot climb out
    assert sb.rewrite_command("cd /data/local/tmp && cat /sys/devices/system/cpu/cpu0/x") == (
        f"cd {sb.root}/data/local/tmp && cat {sb.root}/sys/devices/system/cpu/cpu0/x")
    assert sb.rewrite_command("echo /database foo/data /proc/cpuinfo") == "echo /database foo/data /proc/cpuinfo"
    with pytest.raises(ValueError, match="features"):
        AdbTestDevice(sb.root, features=("shell_v2", "stat_v2"))
