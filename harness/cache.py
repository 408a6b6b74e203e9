"""Content-addressed artifact cache.

Keys hash everything that made an entry (inputs, method and its config, code and converter
versions); entries are written to a temporary folder and renamed into place, so a crash never
leaves a partial entry, and every file's sha256 is re-checked before reuse: a corrupted
artifact is caught before any trial uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from importlib import metadata
from pathlib import Path

from .export.base import sha256_file

EXPORT_CODE_VERSION = 2  # 2: narrow grids clamp after Q/DQ, Relu/Clip kept when the grid needs it
QUANT_CODE_VERSION = 1


def tool_versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "torchao", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def key_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


class CorruptEntry(RuntimeError):
    pass


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lookup(self, kind: str, key: str) -> dict | None:
        """The entry's record if complete and intact; raises CorruptEntry if a file changed."""
        folder = self.entry(kind, key)
        rec_path = folder / "record.json"
        if not rec_path.is_file():
            return None
        record = json.loads(rec_path.read_text())
        for name, digest in record.get("files", {}).items():
            f = folder / name
            if not f.is_file() or sha256_file(f) != digest:
                raise CorruptEntry(f"cache entry {kind}/{key}: {name} does not match its recorded sha256 {digest[:12]}…")
        return record

    def lookup_or_evict(self, kind: str, key: str, say, then: str = "recomputing") -> dict | None:
        """`lookup`, but a corrupt entry is reported, evicted and treated as a miss."""
        try:
            return self.lookup(kind, key)
        except CorruptEntry as exc:
            say(f"{exc}; {then}")
            self.evict(kind, key)
            return None

    def store(self, kind: str, key: str, files: dict[str, Path], record: dict) -> dict:
        """Move `files` into a new entry atomically; returns the record (with file hashes)."""
        final = self.entry(kind, key)
        tmp = final.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        hashes = {}
        for name, src in files.items():
            dst = tmp / name
            shutil.copyfile(src, dst)
            hashes[name] = sha256_file(dst)
        record = {**record, "files": hashes}
        (tmp / "record.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return record

    def evict(self, kind: str, key: str) -> None:
        shutil.rmtree(self.entry(kind, key), ignore_errors=True)

    def clean_stale(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary leftovers of killed runs (entries being written, export folders);
        only those untouched for `older_than_s`, so a concurrent run's work in progress stays."""
        import time

        if not self.root.is_dir():
            return 0
        now, removed = time.time(), 0
        candidates = [p for p in self.root.glob(".*") if p.name.startswith((".export-", ".params-"))]
        for kind in ("quant", "artifacts"):
            candidates += [p for p in (self.root / kind).glob(".*.tmp")] if (self.root / kind).is_dir() else []
        for p in candidates:
            try:
                if now - p.stat().st_mtime < older_than_s:
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed += 1
            except OSError:
                continue
        return removed
