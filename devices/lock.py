"""One trial at a time per device, across threads and processes of this controller.

A trial holds an exclusive `flock` on a file named after the device's endpoint (ssh
user@host:port, adb host:port, or this host for local devices), so two inventory entries that
reach the same board, or two `defakeq run`s started side by side, queue instead of measuring
each other. The kernel drops the lock when its holder dies: no stale lock files to clean up.

Lock files live in $DEFAKEQ_LOCK_DIR, else <tmp>/defakeq-locks-<uid> (mode 700). While held, a
lock file names its holder (pid, host, what it runs) so a waiter can say who it waits for.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR_ENV = "DEFAKEQ_LOCK_DIR"
_POLL_S = 0.05


class DeviceBusy(TimeoutError):
    """The device stayed locked by another trial for longer than the caller would wait."""


def lock_dir() -> Path:
    env = os.environ.get(LOCK_DIR_ENV)
    path = Path(env) if env else Path(tempfile.gettempdir()) / f"defakeq-locks-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def endpoint(device) -> str:
    """What physically runs the trial: devices sharing an endpoint share a lock."""
    kind = getattr(device, "transport", "local")
    if kind == "ssh":
        return f"ssh:{device.user}@{device.address}:{device.port}"
    if kind == "adb":
        return f"adb:{device.address}"
    return f"local:{socket.gethostname()}"  # every local device is this machine's CPU


def lock_path(device) -> Path:
    key = endpoint(device)
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", key)[:80]
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]  # keeps sanitised names apart
    return lock_dir() / f"{safe}-{digest}.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    pid, host, what, since = (info.get(k) for k in ("pid", "host", "what", "since"))
    return f"pid {pid} on {host} ({what}, since {since})"


@contextmanager
def device_lock(device, timeout_s: float, what: str = "trial") -> Iterator[Path]:
    """Hold the device's lock for the block; DeviceBusy after `timeout_s` of waiting."""
    path = lock_path(device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise DeviceBusy(
                        f"device {device.name}: still busy after {timeout_s:g} s waiting for "
                        f"its lock {path} held by {_holder(path)}"
                    ) from None
                time.sleep(_POLL_S)
        note = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "what": what,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
