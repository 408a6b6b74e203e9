"""A Linux board over SSH (paramiko): verified SFTP pushes, quoted commands, hard deadlines.

Safety and liveness rules, each learnt from a failure mode:
- host keys are checked against `known_hosts`; an unknown key is refused unless the inventory
  opts into trust-on-first-use, which then appends it to that file;
- we open the TCP socket ourselves to set TCP keepalive and TCP_USER_TIMEOUT: without them a
  blackholed link leaves paramiko waiting forever; SSH keepalives alone do not detect it;
- every wait has a deadline (connect, banner, auth, channel open, each SFTP reply, a command),
  and a command that outlives its deadline has its whole process group killed on the device;
- a channel that closes without an exit status (sshd or the link died mid-command; paramiko
  reports -1) is a transient TransportError, never a result;
- uploads go to a temporary name, are hashed ON the device and only then renamed into place;
- commands are built from argv with shlex.quote, run from the work folder.
Secrets (key passphrases) are never logged nor kept in reprs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import re
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import paramiko

from .base import ExecResult, TransportError, sha256_file

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "DEFAKEQ_SSH_KEY_PASSPHRASE"  # read for encrypted key files; never logged
_PID_MARK = "__DEFAKEQ_PID__="
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_STREAM = 16 << 20  # keep at most this much of stdout/stderr (the tail)
_MIN_RATE = 256 << 10  # bytes/s a transfer may not fall below on average (sets its deadline)
T = TypeVar("T")

# Python hasher for devices without sha256sum (argv[1] is the file).
_PY_SHA = (
    "import hashlib,sys\n"
    "h=hashlib.sha256()\n"
    "with open(sys.argv[1],'rb') as f:\n"
    "    for c in iter(lambda: f.read(1<<20), b''): h.update(c)\n"
    "print(h.hexdigest())"
)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class UnknownHostKey(paramiko.SSHException):
    pass


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(
            f"host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in {self.known_hosts}; "
            "add it (ssh-keyscan, or one manual `ssh` login) or set trust_on_first_use: true"
        )


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown key once and append it to known_hosts; later changes are refused."""

    _lock = threading.Lock()

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        with self._lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            prefix = ""
            if self.known_hosts.exists() and self.known_hosts.stat().st_size:
                with open(self.known_hosts, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    prefix = "" if f.read(1) == b"\n" else "\n"
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(f"{prefix}{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning(
            "trusted the host key of %s on first use (%s %s); saved to %s",
            hostname,
            key.get_name(),
            fingerprint(key),
            self.known_hosts,
        )


def _prefer_aead(sock, **kwargs) -> paramiko.Transport:
    """A paramiko Transport that offers AES-GCM first: no separate MAC pass, about a third
    less CPU per pushed byte than paramiko's default AES-CTR + HMAC (measured on 20 MB). The
    server's choice still rules; the other ciphers stay offered."""
    transport = paramiko.Transport(sock, **kwargs)
    opts = transport.get_security_options()
    opts.ciphers = tuple(sorted(opts.ciphers, key=lambda c: "-gcm@" not in c))
    return transport


def check_name(remote_name: str) -> str:
    """A work-folder file name: one path component, nothing that could climb out of it."""
    if (
        not isinstance(remote_name, str)
        or not remote_name
        or "/" in remote_name
        or "\0" in remote_name
        or remote_name in (".", "..")
    ):
        raise TransportError(
            f"bad device file name {remote_name!r}: one path component, no '/' or NUL"
        )
    return remote_name


class SSHTransport:
    """One SSH connection to one board; reconnects with backoff on transient failures."""

    def __init__(
        self,
        name: str,
        address: str,
        user: str,
        port: int = 22,
        key_file: str | None = None,
        known_hosts: str = "~/.ssh/known_hosts",
        trust_on_first_use: bool = False,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 5.0,
        workdir: str | None = "/tmp/defakeq",
        python: str = "python3",
        passphrase: str | None = None,
        passphrase_env: str = PASSPHRASE_ENV,
        attempts: int = 3,
        backoff_s: float = 0.5,
        io_timeout_s: float = 30.0,
        dead_after_s: float | None = None,
    ):
        if attempts < 1:
            raise ValueError(f"{name}: attempts must be >= 1 (got {attempts})")
        self.name = name
        self.address = address
        self.port = int(port)
        self.user = user
        self.key_file = str(Path(key_file).expanduser()) if key_file else None
        self.known_hosts = Path(known_hosts).expanduser()
        self.trust_on_first_use = trust_on_first_use
        self.connect_timeout_s = float(connect_timeout_s)
        self.keepalive_s = float(keepalive_s)
        self.python = python
        self._passphrase = passphrase  # private: excluded from repr and logs
        self.passphrase_env = passphrase_env  # the variable's NAME, for error messages
        self.attempts = int(attempts)
        self.backoff_s = float(backoff_s)
        self.io_timeout_s = float(io_timeout_s)
        # Unacknowledged data older than this kills the TCP connection (TCP_USER_TIMEOUT).
        self.dead_after_s = float(dead_after_s or max(3 * self.keepalive_s, self.connect_timeout_s))
        self._workdir_cfg = workdir
        self._workdir: str | None = None
        self._hasher: str | None = None  # None: sha256sum where present, else python; "python"
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        # Test seam: called with the temporary device path after an upload, before hashing.
        self.after_upload: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"SSHTransport({self.name!r}, {self.user}@{self.address}:{self.port})"

    @classmethod
    def from_device(cls, device) -> SSHTransport:
        key_file = device.key_file
        env_name = device.key_passphrase_env or PASSPHRASE_ENV
        return cls(
            name=device.name,
            address=device.address,
            port=device.port,
            user=device.user,
            key_file=key_file,
            known_hosts=device.known_hosts,
            trust_on_first_use=device.trust_on_first_use,
            connect_timeout_s=device.connect_timeout_s,
            keepalive_s=device.keepalive_s,
            workdir=device.workdir,
            python=device.python,
            passphrase=os.environ.get(env_name) if key_file else None,
            passphrase_env=env_name,
            attempts=device.attempts,
            backoff_s=device.backoff_s,
            io_timeout_s=device.io_timeout_s,
            dead_after_s=device.dead_after_s,
        )

    # --- connection -------------------------------------------------------------------------
    def _socket(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), timeout=self.connect_timeout_s)
        try:
            # Small requests (SFTP, exec) must not wait for Nagle + delayed ACK (~40 ms each).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            idle = max(1, int(self.keepalive_s))
            for opt, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", idle), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
            if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: how long sent data may go unacked
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.dead_after_s * 1000)
                )
        except OSError:
            sock.close()
            raise
        return sock

    def _connect_once(self) -> None:
        where = f"{self.user}@{self.address}:{self.port}"
        log.debug("%s: connecting to %s", self.name, where)
        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        policy = _TrustOnFirstUse if self.trust_on_first_use else _RejectUnknown
        client.set_missing_host_key_policy(policy(self.known_hosts))
        try:
            sock = self._socket()
            t = self.connect_timeout_s
            with self._watchdog(4 * t, f"connect to {where}", client):  # banner+kex+auth+channel
                client.connect(
                    self.address,
                    port=self.port,
                    username=self.user,
                    key_filename=self.key_file,
                    passphrase=self._passphrase,
                    allow_agent=self.key_file is None,
                    look_for_keys=False,
                    sock=sock,
                    timeout=t,
                    banner_timeout=t,
                    auth_timeout=t,
                    channel_timeout=t,
                    transport_factory=_prefer_aead,
                )
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(max(1, int(round(self.keepalive_s))))
            self._client = client
            self._setup_workdir()
        except BaseException as exc:
            client.close()
            self._client = None
            raise self._classify(exc, f"connect to {where}") from exc
        log.debug("%s: connected, workdir %s", self.name, self._workdir)

    def _setup_workdir(self) -> None:
        """mkdir -p the work folder, learn its absolute path and how the device hashes files.

        An absolute work folder costs no command here (a login shell that sources an rc file
        makes every command expensive): commands create it on first use (`_in_workdir`), and so
        do uploads."""
        wd = self._workdir_cfg or ".defakeq"
        if wd.startswith("/"):
            self._workdir = posixpath.normpath(wd)
            return
        if wd == "~":
            wd = "."
        elif wd.startswith("~/"):
            wd = wd[2:]  # relative paths start at the login directory
        script = (
            f"mkdir -p -- {shlex.quote(wd)} && cd -- {shlex.quote(wd)} && pwd"
        )
        res = self._run(script, self.connect_timeout_s, what="prepare the work folder")
        lines = res.stdout.splitlines()
        if res.rc != 0 or not lines or not lines[0].startswith("/"):
            raise TransportError(
                f"{self.name}: cannot create work folder {wd!r} (exit {res.rc}): {res.stderr.strip()[-300:]}"
            )
        self._workdir = lines[0]

    def connect(self) -> SSHTransport:
        self._retrying("connect", lambda: None)
        return self

    def _connected(self) -> bool:
        if self._client is None:
            return False
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def _ensure(self) -> None:
        if not self._connected():
            self._drop()
            self._connect_once()

    def _drop(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # a dead connection fails to close in many ways; it is gone
                    pass
        self._sftp = None
        self._client = None

    def _classify(self, exc: BaseException, what: str) -> TransportError:
        """Map a paramiko/socket failure to a TransportError saying whether a retry may help."""
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        prefix = f"{self.name}: {what} failed"
        if isinstance(exc, UnknownHostKey):
            return TransportError(f"{prefix}: {exc}")
        if isinstance(exc, paramiko.BadHostKeyException):
            return TransportError(
                f"{prefix}: host key CHANGED for {exc.hostname} (got {fingerprint(exc.key)}, "
                f"{self.known_hosts} has {fingerprint(exc.expected_key)}); refusing to connect"
            )
        if isinstance(exc, paramiko.PasswordRequiredException):
            return TransportError(
                f"{prefix}: key file {self.key_file} is encrypted and ${self.passphrase_env} is "
                "not set; export it (inventory key: key_passphrase_env) or load the key into ssh-agent"
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return TransportError(
                f"{prefix}: authentication as {self.user!r} rejected ({type(exc).__name__})"
            )
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return TransportError(f"{prefix}: timed out", transient=True)
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return TransportError(f"{prefix}: {exc}")  # retrying cannot create or unlock it
        if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
            return TransportError(f"{prefix}: no key_file given and no ssh-agent key was accepted")
        if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
            # refused/reset/unreachable, banner or negotiation stalls, a dropped link
            return TransportError(f"{prefix}: {type(exc).__name__}: {exc}", transient=True)
        return TransportError(f"{prefix}: {type(exc).__name__}: {exc}")

    @contextmanager
    def _watchdog(
        self, seconds: float, what: str, client: paramiko.SSHClient | None = None
    ) -> Iterator[None]:
        """Close the connection if the block outlives `seconds`: some paramiko waits (the reply
        to an exec or subsystem request) have no timeout of their own, and a peer that keeps
        TCP alive but stops answering would hold them forever."""
        fired = threading.Event()
        client = client or self._client

        def fire() -> None:
            fired.set()
            log.warning(
                "%s: %s still blocked after %.0f s; closing the connection",
                self.name,
                what,
                seconds,
            )
            if client is not None:
                client.close()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except BaseException as exc:
            if fired.is_set() and not isinstance(exc, TransportError):  # ours says more
                raise TransportError(
                    f"{self.name}: {what} timed out after {seconds:g} s (connection closed)",
                    transient=True,
                ) from exc
            raise
        finally:
            timer.cancel()

    def _retrying(self, what: str, op: Callable[[], T]) -> T:
        """Run `op` on a live connection; transient failures reconnect with exponential backoff."""
        with self._lock:
            for attempt in range(self.attempts):
                try:
                    self._ensure()
                    return op()
                except BaseException as exc:  # noqa: B036 - classified, non-errors re-raised
                    err = self._classify(exc, what)
                    if not err.transient or attempt == self.attempts - 1:
                        if err is exc:
                            raise
                        raise err from exc
                    self._drop()  # a stalled or half-dead connection is not worth reusing
                    delay = self.backoff_s * (2**attempt)
                    log.info(
                        "%s (attempt %d/%d); retrying in %.2f s",
                        err,
                        attempt + 1,
                        self.attempts,
                        delay,
                    )
                    time.sleep(delay)
            raise AssertionError("unreachable")

    # --- commands -----------------------------------------------------------------------------
    def _open_channel(self, timeout: float | None = None) -> paramiko.Channel:
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport.open_session(timeout=timeout or self.connect_timeout_s)

    def _run(
        self, script: str, timeout: float, what: str, chan: paramiko.Channel | None = None
    ) -> ExecResult:
        """Run a shell script (already quoted) with a hard deadline; raises on a lost channel."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        if chan is None:
            chan = self._open_channel()
        # $$ first: the login shell leads its own process group (sshd calls setsid), so on a
        # timeout `kill -- -PID` reaches everything the command started. `; exit $?` keeps the
        # shell from exec'ing the command, so a signal death shows as 128+N, not a lost channel.
        wrapped = f"printf '%s\\n' {_PID_MARK}$$ && {script}; exit $?"
        out, err = bytearray(), bytearray()
        grace = 2 * min(5.0, self.connect_timeout_s) + 1.0  # room for our deadline + the kill
        try:
            with self._watchdog(timeout + grace, what):
                chan.exec_command(wrapped)
                status = self._collect(chan, deadline, timeout, what, out, err)
        finally:
            chan.close()
        if status == -1:
            # The channel closed without an exit status: sshd or the link died mid-command.
            raise TransportError(
                f"{self.name}: connection lost while running {what} (no exit status; "
                f"stderr: {bytes(err).decode(errors='replace').strip()[-300:]!r})",
                transient=True,
            )
        text = bytes(out).decode(errors="replace")
        if text.startswith(_PID_MARK):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        return ExecResult(
            status, text, bytes(err).decode(errors="replace"), time.perf_counter() - t0
        )

    def _collect(
        self,
        chan: paramiko.Channel,
        deadline: float,
        timeout: float,
        what: str,
        out: bytearray,
        err: bytearray,
    ) -> int:
        """Read stdout/stderr until the exit status (or -1: closed without one) or the deadline."""
        transport = chan.get_transport()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill_remote(out)
                raise TransportError(
                    f"{self.name}: {what} timed out after {timeout:g} s", transient=True
                )
            select.select([chan], [], [], min(remaining, 0.5))
            while chan.recv_ready():
                out += chan.recv(1 << 16)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 16)
            del out[:-_MAX_STREAM], err[:-_MAX_STREAM]
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not transport.is_active():
                break
        return chan.exit_status if chan.status_event.is_set() else -1

    def _kill_remote(self, out: bytearray) -> None:
        """Best effort: end the timed-out command's process group on the device."""
        head = bytes(out[:64]).decode(errors="replace")
        m = re.match(re.escape(_PID_MARK) + r"(\d+)", head)
        if not m or not self._connected():
            return
        pgid = m.group(1)
        try:
            chan = self._open_channel(timeout=min(5.0, self.connect_timeout_s))
            chan.exec_command(
                f"kill -TERM -- -{pgid} 2>/dev/null; sleep 0.2; kill -KILL -- -{pgid} 2>/dev/null; true"
            )
            chan.status_event.wait(min(5.0, self.connect_timeout_s))
            chan.close()
        except Exception as exc:  # the timeout is what we report; a failed cleanup is only logged
            log.warning("%s: could not stop timed-out process group %s: %s", self.name, pgid, exc)

    def command(self, argv: list[str]) -> str:
        """The shell text `exec` runs for `argv`: every word quoted, python3 -> device python."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TransportError(
                f"{self.name}: exec needs a non-empty list of strings, got {argv!r}"
            )
        words = [self.python if argv[0] == "python3" else argv[0], *argv[1:]]
        return " ".join(shlex.quote(w) for w in words)

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        script = self.command(argv)
        # Only opening the channel is retried: a command that may have run is never re-run.
        chan = self._retrying("open a session", self._open_channel)
        with self._lock:
            assert self._workdir is not None
            return self._run(
                f"{self._in_workdir()} && {script}",
                timeout,
                what=shlex.join(argv)[:120],
                chan=chan,
            )

    # --- files --------------------------------------------------------------------------------
    def workdir(self) -> str:
        if self._workdir is None:
            self.connect()
        assert self._workdir is not None
        return self._workdir

    def _path(self, remote_name: str) -> str:
        assert self._workdir is not None
        return posixpath.join(self._workdir, check_name(remote_name))

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            assert self._client is not None
            with self._watchdog(self.io_timeout_s, "opening SFTP"):  # subsystem reply: no timeout
                sftp = self._client.open_sftp()
            sftp.get_channel().settimeout(self.io_timeout_s)  # every SFTP reply has a deadline
            self._sftp = sftp
        return self._sftp

    def _deadline_callback(self, size: int, what: str) -> Callable[[int, int], None]:
        deadline = time.monotonic() + self.io_timeout_s + size / _MIN_RATE

        def check(done: int, total: int) -> None:
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{self.name}: {what} too slow ({done}/{total} bytes before its deadline)",
                    transient=True,
                )

        return check

    def _device_sha256(self, path: str) -> str | None:
        """sha256 of a device file computed ON the device; None when it is not there."""
        rel = shlex.quote(path)
        # via stdin: odd names cannot alter sha256sum's output line; python where it is missing
        py = f"{shlex.quote(self.python)} -c {shlex.quote(_PY_SHA)} {rel}"
        script = f"if command -v sha256sum >/dev/null 2>&1; then sha256sum < {rel}; else {py}; fi"
        if self._hasher == "python":
            script = py
        res = self._run(
            f"[ -f {rel} ] || exit 44; {script}",
            self.io_timeout_s,
            what=f"hashing {posixpath.basename(path)}",
        )
        if res.rc == 44:
            return None
        digest = res.stdout.split()[0] if res.stdout.split() else ""
        if res.rc != 0 or not _SHA_RE.match(digest):
            raise TransportError(
                f"{self.name}: cannot hash {path} on the device (exit {res.rc}): {res.stderr.strip()[-300:]}"
            )
        return digest

    def _in_workdir(self) -> str:
        """Shell text that enters the work folder, creating it the first time."""
        q = shlex.quote(self._workdir or ".")
        return f"{{ cd -- {q} 2>/dev/null || {{ mkdir -p -- {q} && cd -- {q}; }}; }}"

    def _sftp_makedirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        """mkdir -p over SFTP (no shell): uploads may come before any command."""
        todo = []
        while path not in ("", "/"):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                todo.append(path)
                path = posixpath.dirname(path)
        for p in reversed(todo):
            try:
                sftp.mkdir(p)
            except OSError:
                sftp.stat(p)  # created meanwhile by someone else: fine; else this raises

    def put(
        self, local: Path, remote_name: str, sha256: str | None = None, verify: bool = True
    ) -> str:
        """Upload to a temporary name, hash it on the device, rename it into place.

        verify=False skips the device-side hash (SFTP still checks the size, and SSH's MAC the
        bytes in transit) for callers that verify the content on the device before using it
        anyway, like the runner: one hash per push, not two."""
        local = Path(local)
        check_name(remote_name)
        if not local.is_file():
            raise TransportError(f"{self.name}: cannot push {local}: no such file")
        expected = sha256 or (sha256_file(local) if verify else None)
        size = local.stat().st_size

        def op() -> str:
            sftp = self._sftp_client()
            dest = self._path(remote_name)
            tmp = self._path(f".{remote_name[:180]}.part-{uuid.uuid4().hex[:8]}")
            try:
                try:
                    sftp.put(
                        str(local),
                        tmp,
                        callback=self._deadline_callback(size, f"push of {local.name}"),
                        confirm=True,
                    )
                except FileNotFoundError:  # the work folder does not exist yet
                    self._sftp_makedirs(sftp, posixpath.dirname(tmp))
                    sftp.put(
                        str(local),
                        tmp,
                        callback=self._deadline_callback(size, f"push of {local.name}"),
                        confirm=True,
                    )
                if self.after_upload is not None:
                    self.after_upload(tmp)
                got = self._device_sha256(tmp) if verify else expected
                if got != expected:
                    raise TransportError(
                        f"{self.name}: checksum mismatch after pushing {local.name} as {remote_name}: "
                        f"expected {expected}, the device has {got}",
                        transient=True,
                    )
                # Atomic: a reader sees the old file or the whole new one, never a part.
                sftp.posix_rename(tmp, dest)
            except BaseException:
                self._remove_quietly(tmp)
                raise
            return dest

        return self._retrying(f"push {local.name}", op)

    def _remove_quietly(self, path: str) -> None:
        try:
            if self._sftp is not None and self._connected():
                self._sftp.remove(path)
        except Exception:  # a leftover temp file is harmless; the failure being handled matters
            pass

    def get(self, remote_name: str, local: Path) -> Path:
        local = Path(local)

        def op() -> Path:
            sftp = self._sftp_client()
            src = self._path(remote_name)
            try:
                size = sftp.stat(src).st_size or 0
            except FileNotFoundError:
                raise TransportError(
                    f"{self.name}: {remote_name} not found in {self._workdir}"
                ) from None
            part = local.with_name(local.name + ".part")
            try:
                sftp.get(
                    src, str(part), callback=self._deadline_callback(size, f"pull of {remote_name}")
                )
                os.replace(part, local)
            finally:
                part.unlink(missing_ok=True)
            return local

        return self._retrying(f"pull {remote_name}", op)

    def exists(self, remote_name: str, sha256: str) -> bool:
        def op() -> bool:
            path = self._path(remote_name)
            try:
                self._sftp_client().stat(path)  # cheap miss: no shell started
            except FileNotFoundError:
                return False
            return self._device_sha256(path) == sha256

        return self._retrying(f"check {remote_name}", op)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
