"""Test support: a real OpenSSH server (Debian openssh-server) on a port we choose.

`SSHServer.start()` generates a host key, a client key and an sshd_config in a folder, runs
`sshd -D -e -f <config>` (optionally inside a network namespace, optionally in a cgroup) and
waits until it answers with its banner. `known_hosts` holds the host key the way paramiko
looks it up. The pytest fixtures `sshd_server` (session) and `fresh_sshd` (per test: for tests
that kill it) wrap it. Root needs /run/sshd to exist (sshd's privilege-separation dir).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def sshd_missing() -> str | None:
    """Why a real sshd cannot run here, or None."""
    for tool in (SSHD, SSH_KEYGEN):
        if not os.access(tool, os.X_OK):
            return f"{tool} not found: apt-get install -y openssh-server"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def keygen(path: Path, passphrase: str = "", kind: str = "ed25519") -> Path:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, "-N", passphrase, "-C", "defakeq-test", "-f", str(path)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return path


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (from /proc), children first-found order."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces/parens: the ppid comes after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class SSHServer:
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    netns: str | None = None
    cgroup_procs: Path | None = None  # a cgroup v1 cgroup.procs file to start sshd in
    # SHLVL=1 stops Debian's bash from sourcing ~/.bashrc for every command (SSH_SOURCE_BASHRC):
    # root's rc here runs pyenv init, 0.35 s per command. False keeps the login shell as is.
    quiet_shell: bool = True
    user: str = field(default_factory=lambda: os.environ.get("USER") or _whoami())
    proc: subprocess.Popen | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def host_entry(self) -> str:
        """The known_hosts host field paramiko looks up for this server."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def device(self, workdir: Path, **kw):
        """An SSHDevice reaching this server with its client key (fields in `kw` override)."""
        from devices.inventory import SSHDevice

        fields = dict(name="loop", transport="ssh", address=self.host, port=self.port, user=self.user,
                      key_file=str(self.client_key), known_hosts=str(self.known_hosts), workdir=str(workdir))
        return SSHDevice(**{**fields, **kw})

    def start(self, timeout: float = 15.0) -> SSHServer:
        self.root.mkdir(parents=True, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privsep dir sshd insists on as root
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.client_key.exists():
            keygen(self.client_key)
        if not self.authorized_keys.exists():
            self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.authorized_keys.chmod(0o600)
        if not self.port:  # a namespace has its own ports: 22 is free there
            self.port = free_port(self.host) if self.netns is None else 22
        pubkey = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"{self.host_entry()} {pubkey[0]} {pubkey[1]}\n")
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "StrictModes no",  # test folders live under /tmp with loose modes
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 64",
                    "MaxSessions 64",
                    "LogLevel INFO",
                    *(["SetEnv SHLVL=1"] if self.quiet_shell else []),
                    "",
                ]
            )
        )
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        cgroup = self.cgroup_procs

        def _enter_cgroup() -> None:  # runs in the child before exec: sshd and its sessions inherit
            if cgroup is not None:
                cgroup.write_text(str(os.getpid()))

        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps its own copy of the fd
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=_enter_cgroup if cgroup else None,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _banner(self) -> bytes:
        # In a namespace the address is reached over its veth: the caller sets that up first.
        with socket.create_connection((self.host, self.port), timeout=1.0) as s:
            s.settimeout(2.0)
            return s.recv(64)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self.proc.returncode}: {self.log_text()[-2000:]}"
                )
            try:
                if self._banner().startswith(b"SSH-"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"sshd on {self.host}:{self.port} not ready in {timeout} s: {self.log_text()[-2000:]}"
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def session_pids(self) -> list[int]:
        """Processes serving connections (per-connection sshd children and what they run)."""
        return descendants(self.proc.pid) if self.proc else []

    def kill_sessions(self) -> None:
        """SIGKILL every per-connection sshd and the commands they run; the listener lives on."""
        _kill(self.session_pids(), signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the whole server: the listener, its sessions and their commands (a dead board)."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *self.session_pids()]
        _kill(pids, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            pids = self.session_pids()
            _kill([self.proc.pid], signal.SIGTERM)
            _kill(pids, signal.SIGKILL)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill([self.proc.pid], signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory) -> Iterator[SSHServer]:
    """One loopback sshd for the whole session (tests must not kill it)."""
    why = sshd_missing()
    if why:
        pytest.skip(why)
    server = SSHServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_sshd(tmp_path) -> Iterator[SSHServer]:
    """A loopback sshd of this test's own: for tests that stall or kill it."""
    why = sshd_missing()
    if why:
        pytest.skip(why)
    server = SSHServer(tmp_path / "sshd").start()
    yield server
    server.stop()
