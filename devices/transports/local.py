"""The local machine as a device: the same runner, in a subprocess, in a work folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .base import ExecResult, TransportError, sha256_file


class LocalTransport:
    def __init__(self, name: str = "local", workdir: str | None = None, python: str | None = None):
        self.name = name
        self._dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="defakeq-local-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable

    def workdir(self) -> str:
        return str(self._dir)

    def put(self, local: Path, remote_name: str, sha256: str | None = None) -> str:
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
        src = self._dir / remote_name
        if not src.is_file():
            raise TransportError(f"{self.name}: {remote_name} not found in {self._dir}")
        shutil.copyfile(src, local)
        return local

    def exists(self, remote_name: str, sha256: str) -> bool:
        path = self._dir / remote_name
        return path.is_file() and sha256_file(path) == sha256

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        t = time.perf_counter()
        argv = [self.python if a == "python3" else a for a in argv]
        try:
            p = subprocess.run(argv, cwd=self._dir, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{self.name}: command timed out after {timeout:.0f} s", transient=True) from exc
        return ExecResult(p.returncode, p.stdout, p.stderr, time.perf_counter() - t)

    def close(self) -> None:
        pass

    @classmethod
    def from_device(cls, device) -> LocalTransport:
        return cls(name=device.name, workdir=device.workdir, python=None if device.python == "python3" else device.python)
