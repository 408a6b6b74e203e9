"""Dataset manifests: written once, verified later, hashes cached by (path, size, mtime)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from harness.datasets.errors import ManifestMismatchError
from harness.datasets.manifest import HashCache, manifest_path, pin_or_verify, sha256_file

SELECTION = {"index": "Toy", "labels": ["real", "fake"], "compression": None,
             "frames_per_video": 32}


def old_file(path: Path, data: bytes, age_s: float = 3600) -> Path:
    """A file whose mtime lies `age_s` in the past (out of the racy window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    base = tmp_path / "rgb"
    files = [old_file(base / "Toy" / f"v{v}" / f"{f:03d}.png", f"frame {v} {f}".encode() * 50)
             for v in range(3) for f in range(4)]
    index = old_file(tmp_path / "dataset_json" / "Toy.json", b'{"Toy": {}}')
    return base, files, index


def pin(data: tuple[Path, list[Path], Path], cache: Path, files: list[Path] | None = None,
        rehash: bool = False, split: str = "test"):
    base, all_files, index = data
    return pin_or_verify(dataset="toy", split=split, selection=SELECTION,
                         files=all_files if files is None else files, base=base,
                         index_file=index, cache_dir=cache, rehash=rehash)


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    blob = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    p = tmp_path / "big.bin"
    p.write_bytes(blob)
    assert sha256_file(p) == hashlib.sha256(blob).hexdigest()


def test_hash_cache_reads_unchanged_files_once(tmp_path: Path) -> None:
    files = [old_file(tmp_path / f"f{i}", bytes([i]) * 1000) for i in range(5)]
    db = tmp_path / "cache.sqlite"
    with HashCache(db) as cache:
        first = cache.hash_files(files)
        assert cache.files_read == 5
    assert first == [(1000, hashlib.sha256(bytes([i]) * 1000).hexdigest()) for i in range(5)]
    with HashCache(db) as cache:
        assert cache.hash_files(files) == first and cache.files_read == 0
        # same size, new content, new mtime: read again
        old_file(files[2], b"x" * 1000, age_s=60)
        again = cache.hash_files(files)
        assert cache.files_read == 1
        assert again[2] == (1000, hashlib.sha256(b"x" * 1000).hexdigest())
        cache.hash_files(files, rehash=True)
        assert cache.files_read == 6
    with pytest.raises(FileNotFoundError):
        HashCache(db).hash_files([tmp_path / "absent"])


def test_recently_modified_files_are_not_trusted_from_the_cache(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.write_bytes(b"a" * 100)
    db = tmp_path / "cache.sqlite"
    with HashCache(db) as cache:
        cache.hash_files([fresh])
    # a rewrite within the same mtime tick and size would fool a (size, mtime) cache
    st = fresh.stat()
    fresh.write_bytes(b"b" * 100)
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    with HashCache(db) as cache:
        (_, sha), = cache.hash_files([fresh])
        assert cache.files_read == 1 and sha == hashlib.sha256(b"b" * 100).hexdigest()


def test_manifest_written_once_with_relative_paths_and_hashes(tmp_path: Path, data) -> None:
    base, files, index = data
    cache = tmp_path / "cache"
    first = pin(data, cache)
    assert first.created and first.files_read == 13  # frames + index
    assert first.path == manifest_path(cache, "toy", "test", SELECTION)
    assert first.path.parent == cache / "manifests"
    assert first.path.name.startswith("toy-test-") and first.path.suffix == ".json"
    raw = first.path.read_bytes()
    assert first.sha256 == hashlib.sha256(raw).hexdigest()
    doc = json.loads(raw)
    assert doc["dataset"] == "toy" and doc["split"] == "test" and doc["selection"] == SELECTION
    assert doc["index"] == {"name": "Toy.json", "sha256": sha256_file(index)}
    assert doc["files"][5] == ["Toy/v1/001.png", files[5].stat().st_size, sha256_file(files[5])]
    assert str(tmp_path) not in raw.decode()  # no absolute paths: same data, same sha anywhere

    second = pin(data, cache)
    assert not second.created and second.sha256 == first.sha256
    assert second.files_read == 0  # everything served by the hash cache
    assert first.path.read_bytes() == raw
    assert pin(data, cache, rehash=True).files_read == 13  # frames + index
    assert pin(data, cache, split="train").path != first.path


def test_manifest_sha_is_independent_of_location(tmp_path: Path, data) -> None:
    base, files, index = data
    elsewhere = tmp_path / "copy"
    copies = [old_file(elsewhere / "rgb" / f.relative_to(base), f.read_bytes()) for f in files]
    index2 = old_file(elsewhere / "Toy.json", index.read_bytes())
    a = pin(data, tmp_path / "c1")
    b = pin((elsewhere / "rgb", copies, index2), tmp_path / "c2")
    assert a.sha256 == b.sha256


def test_verification_names_changed_missing_added_and_unselected(tmp_path: Path, data) -> None:
    base, files, index = data
    cache = tmp_path / "cache"
    pinned = pin(data, cache, files=files[:10])
    old_file(files[1], b"tampered", age_s=10)
    old_file(files[4], files[4].read_bytes() + b"!", age_s=10)
    files[7].unlink()
    selection = [f for f in files if f != files[7] and f != files[8]]  # 8 exists, not selected
    with pytest.raises(ManifestMismatchError) as e:
        pin(data, cache, files=selection)
    err = e.value
    assert err.changed == ["Toy/v0/001.png", "Toy/v1/000.png"]
    assert err.missing == ["Toy/v1/003.png"] and err.unselected == ["Toy/v2/000.png"]
    assert err.added == ["Toy/v2/002.png", "Toy/v2/003.png"] and not err.index_changed
    msg = str(err)
    assert "2 changed, 1 missing, 2 added, 1 no longer selected" in msg
    assert "missing: Toy/v1/003.png" in msg and f"delete {pinned.path}" in msg
    assert "(written when it was first loaded; 10 files)" in msg


def test_index_change_alone_is_reported(tmp_path: Path, data) -> None:
    base, files, index = data
    pin(data, tmp_path / "cache")
    old_file(index, b'{"Toy": {"x": 1}}', age_s=10)
    with pytest.raises(ManifestMismatchError, match="index file Toy.json changed") as e:
        pin(data, tmp_path / "cache")
    assert e.value.index_changed and not (e.value.changed or e.value.missing or e.value.added)


def test_many_changes_are_summarised_with_examples(tmp_path: Path, data) -> None:
    base, files, index = data
    pin(data, tmp_path / "cache")
    for f in files:
        old_file(f, f.read_bytes() + b"?", age_s=10)
    with pytest.raises(ManifestMismatchError, match=r"(?s)12 changed.*\(\+7 more\)"):
        pin(data, tmp_path / "cache")


def test_unreadable_manifest_is_an_error_not_silently_replaced(tmp_path: Path, data) -> None:
    first = pin(data, tmp_path / "cache")
    first.path.write_text("{not json")
    with pytest.raises(ManifestMismatchError, match="unreadable"):
        pin(data, tmp_path / "cache")
    assert first.path.read_text() == "{not json"


def test_hashing_many_files_with_progress(tmp_path: Path) -> None:
    files = [old_file(tmp_path / "many" / f"{i:04d}.png", i.to_bytes(2, "little") * 64)
             for i in range(300)]
    with HashCache(tmp_path / "c.sqlite") as cache:
        out = cache.hash_files(files)
    assert [sha for _, sha in out] == [sha256_file(f) for f in files]
