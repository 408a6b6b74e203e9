"""Dataset manifests: the frame files of one (dataset, split, selection), pinned by sha256.

The first load writes `<cache_dir>/manifests/<dataset>-<split>-<key>.json` (relative paths, size
and sha256 per file, the index file's own sha256); every later load compares against it and
raises `ManifestMismatchError` naming the changed / missing / added files. The manifest file is
never rewritten, and its content is deterministic (no timestamps, no absolute paths), so its
sha256 identifies the data: two machines holding the same frames record the same value.

Hashes are cached in `<cache_dir>/manifests/hashcache.sqlite` by (absolute path, size, mtime_ns),
so verifying unchanged data costs one stat per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.datasets.errors import ManifestMismatchError
from harness.progress import progress_bar

MANIFEST_FORMAT = "defakeq-dataset-manifest/1"
CHUNK = 1 << 20
# A file modified this recently may change again within the same mtime tick without changing
# size; such hashes are not cached, so the next verification reads the file again.
RACY_SECONDS = 2.0
# Below this many files to read, a progress bar is more noise than help.
PROGRESS_MIN_FILES = 256
EXAMPLES = 5


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """sha256 of files, cached by (absolute path, size, mtime_ns) in SQLite."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # timeout: parallel suite workers may verify the same dataset at once.
        self._db = sqlite3.connect(db_path, timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL)"
        )
        self._db.commit()
        self.files_read = 0  # files actually hashed (cache misses) by this instance

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cached(self, keys: list[str]) -> dict[str, tuple[int, int, str]]:
        out: dict[str, tuple[int, int, str]] = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            part = keys[i:i + 500]
            marks = ",".join("?" * len(part))
            for path, size, mtime, sha in self._db.execute(
                f"SELECT path, size, mtime_ns, sha256 FROM hashes WHERE path IN ({marks})", part
            ):
                out[path] = (size, mtime, sha)
        return out

    def hash_files(self, files: Sequence[Path], rehash: bool = False, label: str = "hashing",
                   progress: Callable[[int], object] | None = None) -> list[tuple[int, str]]:
        """(size, sha256) per file, in order. Raises FileNotFoundError for a missing file.

        `progress(n)` is told about every file read; without it, a bar shows for long jobs.
        """
        keys = [os.path.abspath(f) for f in files]
        stats = [os.stat(k) for k in keys]
        cached = {} if rehash else self._cached(keys)
        result: list[tuple[int, str] | None] = [None] * len(keys)
        todo: list[int] = []
        for i, (k, st) in enumerate(zip(keys, stats)):
            hit = cached.get(k)
            if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                result[i] = (st.st_size, hit[2])
            else:
                todo.append(i)
        if todo:
            digests = _hash_many([keys[i] for i in todo], label, progress)
            now_ns = time.time_ns()
            rows = []
            for i, sha in zip(todo, digests):
                st = stats[i]
                result[i] = (st.st_size, sha)
                if now_ns - st.st_mtime_ns > RACY_SECONDS * 1e9:
                    rows.append((keys[i], st.st_size, st.st_mtime_ns, sha))
            self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", rows)
            self._db.commit()
            self.files_read += len(todo)
        return [r for r in result if r is not None]


def _hash_many(paths: list[str], label: str,
               progress: Callable[[int], object] | None) -> list[str]:
    # hashlib releases the GIL on large updates and reads are I/O: threads overlap both.
    show = progress is None and len(paths) >= PROGRESS_MIN_FILES
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            progress_bar(label, total=len(paths), enabled=show) as advance:
        step = progress or advance
        out: list[str] = []
        for sha in pool.map(sha256_file, paths):
            out.append(sha)
            step(1)
        return out


@dataclass(frozen=True)
class ManifestResult:
    path: Path
    sha256: str  # sha256 of the manifest file's bytes: what results record
    created: bool  # written by this call (first load of this selection)
    files_read: int  # files (frames + index) read by this call; the rest came from the cache


def selection_key(dataset: str, split: str, selection: dict) -> str:
    """Short hash of what chooses the file list (not of the data: that is what gets verified)."""
    blob = json.dumps({"dataset": dataset, "split": split, "selection": selection},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def manifest_path(cache_dir: Path, dataset: str, split: str, selection: dict) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", dataset)
    key = selection_key(dataset, split, selection)
    return Path(cache_dir) / "manifests" / f"{safe}-{split}-{key}.json"


def _relative(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()


def _render(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f" (+{len(names) - EXAMPLES} more)" if len(names) > EXAMPLES else "")


def pin_or_verify(*, dataset: str, split: str, selection: dict, files: Sequence[Path],
                  base: Path, index_file: Path, cache_dir: Path, rehash: bool = False,
                  progress: Callable[[int], object] | None = None) -> ManifestResult:
    """Write the manifest of `files` if none exists for this selection, else verify against it.

    `files` lie under `base` (the frames root) and are recorded relative to it; `selection` is
    what chose them (index name, labels, compression, frames per video) and names the manifest.
    `rehash` ignores the hash cache (a full integrity check); `progress(n)` hears of each frame
    read.
    """
    path = manifest_path(cache_dir, dataset, split, selection)
    with HashCache(path.parent / "hashcache.sqlite") as cache:
        (_, index_sha), = cache.hash_files([index_file], rehash=rehash)
        hashed = cache.hash_files(files, rehash=rehash, label=f"hashing {dataset} {split}",
                                  progress=progress)
        read = cache.files_read
    rel = [_relative(Path(f), Path(base)) for f in files]
    doc = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "split": split,
        "selection": selection,
        "index": {"name": Path(index_file).name, "sha256": index_sha},
        "files": [[r, size, sha] for r, (size, sha) in zip(rel, hashed)],
    }
    if not path.exists():
        data = _render(doc)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a manifest
        return ManifestResult(path, hashlib.sha256(data).hexdigest(), True, read)

    data = path.read_bytes()
    try:
        old = json.loads(data)
        old_files = {r: sha for r, _size, sha in old["files"]}
        old_index = old["index"]["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestMismatchError(
            f"manifest {path} is unreadable ({e}); delete it to pin the data again",
            path=path, changed=[], missing=[], added=[], unselected=[], index_changed=False,
        ) from e
    _compare(path, dataset, split, old_files, old_index, doc, Path(base))
    return ManifestResult(path, hashlib.sha256(data).hexdigest(), False, read)


def _compare(path: Path, dataset: str, split: str, old_files: dict[str, str],
             old_index: str, doc: dict, base: Path) -> None:
    new_files = {r: sha for r, _size, sha in doc["files"]}
    changed = [r for r, sha in new_files.items() if r in old_files and old_files[r] != sha]
    added = [r for r in new_files if r not in old_files]
    gone = [r for r in old_files if r not in new_files]
    # A pinned file that is no longer selected is either missing on disk (skipped by
    # allow_missing) or dropped from the index; say which.
    missing = [r for r in gone if not (base / r).is_file()]
    unselected = [r for r in gone if (base / r).is_file()]
    index_changed = old_index != doc["index"]["sha256"]
    if not (changed or added or missing or unselected or index_changed):
        return
    parts = [f"{len(changed)} changed", f"{len(missing)} missing", f"{len(added)} added",
             f"{len(unselected)} no longer selected"]
    lines = [
        f"dataset {dataset!r} split {split!r}: the data under {base} differs from its manifest "
        f"{path} (written when it was first loaded; {len(old_files)} files): " + ", ".join(parts)
        + "."
    ]
    if index_changed:
        lines.append(f"index file {doc['index']['name']} changed (sha256 {old_index[:12]}... -> "
                     f"{doc['index']['sha256'][:12]}...).")
    for name, items in (("changed", changed), ("missing", missing), ("added", added),
                        ("no longer selected", unselected)):
        if items:
            lines.append(f"{name}: {_examples(items)}")
    lines.append(f"If the change is intended, delete {path} to pin the new data; results recorded "
                 f"with the old manifest sha256 will not be comparable to new ones.")
    raise ManifestMismatchError(
        "\n".join(lines), path=path, changed=changed, missing=missing, added=added,
        unselected=unselected, index_changed=index_changed,
    )
