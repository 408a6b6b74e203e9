"""What every transport offers: files in and out, a command with a timeout, and facts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class TransportError(RuntimeError):
    """A device could not be reached or a transfer/command failed; `transient` ones may be retried."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float


class Transport(Protocol):
    name: str

    def workdir(self) -> str:
        """Absolute path of the device-side folder trials use."""

    def put(
        self, local: Path, remote_name: str, sha256: str | None = None, verify: bool = True
    ) -> str:
        """Copy `local` into the work folder as `remote_name` (atomically, checksum verified on
        the device); returns the device-side path. verify=False lets a transport skip its own
        device-side hash when the caller verifies the content there before using it."""

    def get(self, remote_name: str, local: Path) -> Path:
        """Copy `remote_name` from the work folder to `local`."""

    def exists(self, remote_name: str, sha256: str) -> bool:
        """True when the work folder already holds `remote_name` with this content."""

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        """Run a command (argv, quoted by the transport) in the work folder."""

    def close(self) -> None: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
