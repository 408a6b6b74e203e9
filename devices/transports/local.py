"""The local machine as a device: the same runner, in a subprocess, in a work folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .base import ExecResult, TransportError, sha256_file


class LocalTransport:
    def __init__(self, name: str = "local", workdir: str | None = None, python: str | None = None):
        self.name = name
        self._owned = not workdir  # a scratch folder of ours: removed on close
        self._dir = Path(workdir).expanduser().resolve() if workdir else Path(tempfile.mkdtemp(prefix="defakeq-local-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable

    def workdir(self) -> str:
        return str(self._dir)

    def put(
        self, local: Path, remote_name: str, sha256: str | None = None, verify: bool = True
    ) -> str:
        # A local copy is cheap to hash: always verified, whatever `verify` says.
        if not remote_name or "/" in remote_name or remote_name in (".", ".."):
            raise TransportError(f"{self.name}: bad file name {remote_name!r}: one path component")
        dest = self._dir / remote_name
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(local, tmp)
        digest = sha256_file(tmp)
        if sha256 and digest != sha256:
            tmp.unlink(missing_ok=True)
            raise TransportError(f"{self.name}: checksum mismatch after copying {local.name}")
        os.replace(tmp, dest)
        return str(dest)

    def get(self, remote_name: str, local: Path) -> Path:
        if not remote_name or "/" in remote_name or remote_name in (".", ".."):
            raise TransportError(f"{self.name}: bad file name {remote_name!r}: one path component")
        src = self._dir / remote_name
        if not src.is_file():
            raise TransportError(f"{self.name}: {remote_name} not found in {self._dir}")
        shutil.copyfile(src, local)
        return local

    def exists(self, remote_name: str, sha256: str) -> bool:
        path = self._dir / remote_name
        return path.is_file() and sha256_file(path) == sha256

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TransportError(f"{self.name}: exec needs a non-empty list of strings, got {argv!r}")
        t = time.perf_counter()
        argv = [self.python if argv[0] == "python3" else argv[0], *argv[1:]]
        try:
            # Its own session: a timeout ends everything the command started, not just the child.
            p = subprocess.Popen(argv, cwd=self._dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        except (FileNotFoundError, PermissionError) as exc:
            return ExecResult(127, "", f"{argv[0]}: cannot run: {exc}", time.perf_counter() - t)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
            raise TransportError(f"{self.name}: command timed out after {timeout:g} s", transient=True) from None
        return ExecResult(p.returncode, out, err, time.perf_counter() - t)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self._dir, ignore_errors=True)

    @classmethod
    def from_device(cls, device) -> LocalTransport:
        return cls(name=device.name, workdir=device.workdir, python=None if device.python == "python3" else device.python)
