"""DeepfakeBench-layout loaders on fabricated trees built from the fixture index files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.datasets import deepfakebench as dfb
from harness.datasets.base import DATASETS, FrameSet
from harness.datasets.calibration import calibration_subset
from harness.datasets.errors import DatasetError, DatasetWarning, ManifestMismatchError
from harness.datasets.video import video_scores

FIXTURES = Path(__file__).parent / "fixtures" / "deepfakebench_json"
SIZE = 8  # fabricated frames are SIZE x SIZE RGB


def frame_pixels(rel: str) -> np.ndarray:
    """Distinct, reproducible content per frame path."""
    seed = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def frame_lists(node: object) -> list[list[str]]:
    """Every `frames` list in an index document (wherever it sits)."""
    if isinstance(node, dict):
        out = [node["frames"]] if isinstance(node.get("frames"), list) else []
        for k, v in node.items():
            if k != "frames":
                out += frame_lists(v)
        return out
    return []


def build_tree(root: Path, index: str, sep: str = "\\", prefix: str = "",
               edit: Callable[[dict], None] | None = None, json_dir: str = "dataset_json",
               rgb_dir: str = "") -> Path:
    """Index file + PNG frames for every path it lists, like DeepfakeBench's layout.

    sep / prefix rewrite the index paths (e.g. '/' and 'dataset' for the v1.0.1 era); the
    frames always land at <root>/<rgb_dir>/<path from the dataset folder>.
    """
    doc = json.loads((FIXTURES / f"{index}.json").read_text())
    if edit is not None:
        edit(doc)
    for frames in frame_lists(doc):
        for i, raw in enumerate(frames):
            rel = raw.replace("\\", "/")
            target = root / rgb_dir / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame_pixels(rel)).save(target)
            written = f"{prefix}/{rel}" if prefix else rel
            frames[i] = written.replace("/", sep)
    out = root / json_dir / f"{index}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return root


def rel_paths(fs: FrameSet, base: Path) -> list[str]:
    return [p.relative_to(base).as_posix() for p in fs.paths]


def per_video(fs: FrameSet) -> dict[str, tuple[int, list[str]]]:
    """video id -> (label, frame stems in order)."""
    out: dict[str, tuple[int, list[str]]] = {}
    for vid, lab, p in zip(fs.video_ids, fs.labels, fs.paths):
        out.setdefault(vid, (int(lab), []))[1].append(p.stem)
    return out


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests go to the default cache_dir (runs/cache, relative): keep it in tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def opts() -> dict:
    return {}


@pytest.fixture
def ff_root(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "data", "FaceForensics++")


def test_every_dataset_is_registered_and_needs_data_root() -> None:
    names = {"ff++", "ff-df", "ff-f2f", "ff-fs", "ff-nt", "celeb-df-v2", "dfdc", "dfdcp", "dfd"}
    assert names <= set(DATASETS)
    for name in names:
        assert DATASETS[name].needs_root and DATASETS[name].config_key == "data_root"


def test_ffpp_c23_test_split_labels_video_ids_and_pixels(ff_root: Path, opts: dict) -> None:
    fs = DATASETS["ff++"].load("test", ff_root, opts)
    assert fs.dataset == "ff++" and fs.split == "test" and len(fs) == 15
    videos = per_video(fs)
    # the four methods' fakes share the folder name 920_921 but stay four videos
    assert videos == {
        "ff++/FF-real/920": (0, ["000", "113", "227"]),
        "ff++/FF-DF/920_921": (1, ["000", "113", "227"]),
        "ff++/FF-F2F/920_921": (1, ["000", "113", "227"]),
        "ff++/FF-FS/920_921": (1, ["000", "113", "227"]),
        "ff++/FF-NT/920_921": (1, ["000", "113", "227"]),
    }
    assert {p.parent.name for p in fs.paths if "manipulated" in str(p)} == {"920_921"}
    assert all("/c23/frames/" in p.as_posix() and p.is_file() for p in fs.paths)
    assert fs.labels.dtype == np.int64 and int(fs.labels.sum()) == 12
    rel = rel_paths(fs, ff_root)
    assert np.array_equal(fs.load(), np.stack([frame_pixels(r) for r in rel]))
    assert fs.load(np.array([0]), size=4).shape == (1, 4, 4, 3)
    assert len(fs.manifest_sha256) == 64 and fs.meta["videos"] == 5


def test_ffpp_c40_with_a_method_subset(ff_root: Path, opts: dict) -> None:
    fs = DATASETS["ff++"].load("val", ff_root,
                               {**opts, "compression": "c40", "methods": ["NT", "DF"]})
    assert set(per_video(fs)) == {"ff++/FF-real/910", "ff++/FF-DF/910_911",
                                  "ff++/FF-NT/910_911"}
    assert all("/c40/frames/" in p.as_posix() for p in fs.paths)
    assert fs.meta["labels"] == ["FF-real", "FF-DF", "FF-NT"]  # canonical order
    assert fs.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    # a comma string works too and picks the same frames
    again = DATASETS["ff++"].load("val", ff_root,
                                  {**opts, "compression": "c40", "methods": "DF,NT"})
    assert again.paths == fs.paths and again.manifest_sha256 == fs.manifest_sha256


def test_single_method_variant_reads_its_own_index(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "FF-DF")
    fs = DATASETS["ff-df"].load("train", root, opts)
    assert per_video(fs) == {"ff-df/FF-real/900": (0, ["000", "149", "299"]),
                             "ff-df/FF-DF/900_901": (1, ["000", "149", "299"])}
    assert fs.meta["index_file"].endswith("dataset_json/FF-DF.json")
    assert fs.meta["dropped_test_overlap_videos"] == 0
    with pytest.raises(DatasetError, match="unknown option") as e:
        DATASETS["ff-df"].load("train", root, {**opts, "methods": ["DF"]})
    assert e.value.config_key == "datasets[i].options.methods"


def test_celeb_df_v2_train_drops_videos_that_are_also_test(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "Celeb-DF-v2")
    test = DATASETS["celeb-df-v2"].load("test", root, opts)
    assert {v: lab for v, (lab, _) in per_video(test).items()} == {
        "celeb-df-v2/CelebDFv2_real/00900": 0, "celeb-df-v2/CelebDFv2_real/id90_0001": 0,
        "celeb-df-v2/CelebDFv2_fake/id90_id91_0001": 1,
        "celeb-df-v2/CelebDFv2_fake/id92_id93_0002": 1,
    }
    assert per_video(test)["celeb-df-v2/CelebDFv2_real/id90_0001"][1] == ["000", "197", "395"]
    # rearrange.py's train holds every video, test ones included: only id90_id91_0000 is left
    train = DATASETS["celeb-df-v2"].load("train", root, opts)
    assert set(per_video(train)) == {"celeb-df-v2/CelebDFv2_fake/id90_id91_0000"}
    assert train.meta["dropped_test_overlap_videos"] == 3
    assert not set(train.paths) & set(test.paths)
    val = DATASETS["celeb-df-v2"].load("val", root, opts)
    assert val.meta["test_overlap_videos"] == 4 and len(val) == len(test)
    with pytest.raises(DatasetError, match="unknown option"):
        DATASETS["celeb-df-v2"].load("test", root, {**opts, "compression": "c23"})


def test_dfdc_val_is_refused_and_test_train_read(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "DFDC")
    test = DATASETS["dfdc"].load("test", root, opts)
    assert {v: lab for v, (lab, _) in per_video(test).items()} == {
        "dfdc/DFDC_Real/fabtstaaaa": 0, "dfdc/DFDC_Real/fabtstcccc": 0,
        "dfdc/DFDC_Fake/fabtstbbbb": 1, "dfdc/DFDC_Fake/fabtstdddd": 1}
    train = DATASETS["dfdc"].load("train", root, opts)
    assert {v: lab for v, (lab, _) in per_video(train).items()} == {
        "dfdc/DFDC_Real/fabtrnaaaa": 0, "dfdc/DFDC_Fake/fabtrnbbbb": 1}
    assert all("dfdc_train_part_0" in p.as_posix() for p in train.paths)
    with pytest.raises(DatasetError, match="use split 'test'") as e:
        DATASETS["dfdc"].load("val", root, opts)
    assert "DFDC/DFDC_Real/val" in str(e.value)


def test_dfdcp_two_fake_methods(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "DFDCP")
    test = DATASETS["dfdcp"].load("test", root, opts)
    assert {v: lab for v, (lab, _) in per_video(test).items()} == {
        "dfdcp/DFDCP_Real/900001_A_001": 0, "dfdcp/DFDCP_Real/900002_A_002": 0,
        "dfdcp/DFDCP_FakeA/900001_900002_A_001": 1, "dfdcp/DFDCP_FakeA/900002_900003_A_002": 1,
        "dfdcp/DFDCP_FakeB/900001_900003_B_001": 1}
    train = DATASETS["dfdcp"].load("train", root, opts)
    assert train.labels.tolist() == [0] * 3 + [1] * 6
    assert DATASETS["dfdcp"].load("val", root, opts).meta["test_overlap_videos"] == 5


def test_dfd_is_test_only_and_has_c23_only(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "DeepFakeDetection")
    test = DATASETS["dfd"].load("test", root, opts)
    assert len(per_video(test)) == 5 and test.labels.tolist() == [0] * 6 + [1] * 9
    assert "dfd/DFD_real/90__talking_fabricated" in test.video_ids
    assert all("/c23/frames/" in p.as_posix() for p in test.paths)
    with pytest.raises(DatasetError, match=r"no compression 'c40' \(found c23\)") as e:
        DATASETS["dfd"].load("test", root, {**opts, "compression": "c40"})
    assert e.value.config_key == "datasets[i].options.compression"
    with pytest.raises(DatasetError, match="also a test video"):
        DATASETS["dfd"].load("train", root, opts)


@pytest.mark.parametrize("sep,prefix", [("/", ""), ("\\", "dataset"), ("/", "dataset"),
                                        ("/", "/srv/DeepfakeBench/datasets/rgb")])
def test_both_separators_and_path_eras(tmp_path: Path, opts: dict, sep: str,
                                       prefix: str) -> None:
    base = build_tree(tmp_path / "windows", "FaceForensics++")
    other = build_tree(tmp_path / "other", "FaceForensics++", sep=sep, prefix=prefix)
    ref = DATASETS["ff++"].load("test", base, opts)
    fs = DATASETS["ff++"].load("test", other, opts, cache_dir=tmp_path / "c2")
    assert rel_paths(fs, other) == rel_paths(ref, base)
    assert fs.video_ids == ref.video_ids and fs.labels.tolist() == ref.labels.tolist()


def test_json_dir_and_rgb_dir_options(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "DFDC", json_dir="meta/json", rgb_dir="rgb")
    fs = DATASETS["dfdc"].load("test", root, {**opts, "json_dir": "meta/json", "rgb_dir": "rgb"})
    assert all(p.is_relative_to(root / "rgb" / "DFDC") for p in fs.paths) and len(fs) == 12
    absolute = DATASETS["dfdc"].load("test", root, {**opts, "json_dir": str(root / "meta/json"),
                                                    "rgb_dir": str(root / "rgb")})
    assert absolute.paths == fs.paths


def test_frames_are_evenly_spaced_over_numbered_frames(tmp_path: Path, opts: dict) -> None:
    stems = [7 * i for i in range(30)]
    shuffled = [stems[i] for i in np.random.default_rng(1).permutation(30)]

    def thirty_frames(doc: dict) -> None:
        folder = "FaceForensics++\\manipulated_sequences\\Deepfakes\\c23\\frames\\900_901"
        entry = doc["FF-DF"]["FF-DF"]["train"]["c23"]["900_901"]
        entry["frames"] = [f"{folder}\\{s:03d}.png" for s in shuffled]

    root = build_tree(tmp_path / "data", "FF-DF", edit=thirty_frames)
    fs = DATASETS["ff-df"].load("train", root, {**opts, "frames_per_video": 4})
    chosen = [int(s) for s in per_video(fs)["ff-df/FF-DF/900_901"][1]]
    # sorted positions 0, 10, 19, 29 of 30: first and last kept, gaps 10/9/10
    assert chosen == [0, 70, 133, 203]
    assert chosen != sorted(stems)[:4]  # DeepfakeBench's "first N" would give 0, 7, 14, 21
    assert per_video(fs)["ff-df/FF-real/900"][1] == ["000", "149", "299"]  # 3 <= 4: all
    assert dfb.evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert dfb.evenly_spaced(32, 32).tolist() == list(range(32))
    assert dfb.evenly_spaced(3, 32).tolist() == [0, 1, 2]
    assert dfb.evenly_spaced(9, 1).tolist() == [4]
    gaps = np.diff(dfb.evenly_spaced(300, 32))
    assert gaps.min() >= 9 and gaps.max() - gaps.min() <= 1


def test_missing_root_index_and_frames_name_path_key_and_source(tmp_path: Path,
                                                                opts: dict) -> None:
    with pytest.raises(DatasetError, match="data_root is not set") as e:
        DATASETS["ff++"].load("test", None, opts)
    assert e.value.config_key == "data_root"
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(nowhere)) as e:
        DATASETS["ff++"].load("test", nowhere, opts)
    assert e.value.config_key == "data_root" and dfb.README in str(e.value)

    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError) as e:
        DATASETS["ff-f2f"].load("test", root, opts)
    msg = str(e.value)
    assert str(root / "dataset_json" / "FF-F2F.json") in msg and "data_root" in msg
    assert "rearrange.py" in msg and f"{dfb.README}#2-download-data" in msg
    with pytest.raises(DatasetError, match=r"datasets\[i\]\.options\.json_dir") as e:
        DATASETS["ff++"].load("test", root, {**opts, "json_dir": "jsons"})
    assert e.value.path == root / "jsons" / "FaceForensics++.json"

    # index present, frames never downloaded
    (root / "dataset_json").mkdir()
    (root / "dataset_json" / "DFDC.json").write_text((FIXTURES / "DFDC.json").read_text())
    with pytest.raises(DatasetError, match="no frames found") as e:
        DATASETS["dfdc"].load("test", root, opts)
    assert e.value.path == root / "DFDC" and e.value.config_key == "data_root"
    assert dfb.README in str(e.value)


def test_partial_data_is_an_error_unless_allowed(ff_root: Path, opts: dict) -> None:
    gone = [ff_root / "FaceForensics++/manipulated_sequences/FaceSwap/c23/frames/920_921/113.png",
            ff_root / "FaceForensics++/original_sequences/youtube/c23/frames/920/000.png"]
    for p in gone:
        p.unlink()
    with pytest.raises(DatasetError) as e:
        DATASETS["ff++"].load("test", ff_root, opts)
    msg = str(e.value)
    assert "2 of 15 selected frames are missing" in msg and "(2 of 5 videos affected)" in msg
    assert str(gone[1]) in msg and "allow_missing" in msg and dfb.README in msg
    with pytest.warns(DatasetWarning, match="2 of 15 selected frames are missing"):
        fs = DATASETS["ff++"].load("test", ff_root, {**opts, "allow_missing": True})
    assert len(fs) == 13 and not set(gone) & set(fs.paths)
    assert fs.meta["missing_frames_skipped"] == 2


def test_bad_options_and_splits_are_named(ff_root: Path, opts: dict) -> None:
    cases = [
        ({"compresion": "c23"}, "unknown option", "datasets[i].options.compresion"),
        ({"compression": "c99"}, "allowed: \\['c23', 'c40', 'raw'\\]",
         "datasets[i].options.compression"),
        ({"methods": ["DF", "XX"]}, "unknown method", "datasets[i].options.methods"),
        ({"methods": []}, "non-empty list", "datasets[i].options.methods"),
        ({"frames_per_video": 0}, "integer >= 1", "datasets[i].options.frames_per_video"),
        ({"allow_missing": "yes"}, "true or false", "datasets[i].options.allow_missing"),
    ]
    for extra, pattern, key in cases:
        with pytest.raises(DatasetError, match=pattern) as e:
            DATASETS["ff++"].load("test", ff_root, {**opts, **extra})
        assert e.value.config_key == key
    with pytest.raises(DatasetError, match="split 'calib' is not one of"):
        DATASETS["ff++"].load("calib", ff_root, opts)


def test_manifest_written_once_then_verified(ff_root: Path, opts: dict) -> None:
    fs = DATASETS["ff++"].load("test", ff_root, opts)
    manifest = Path(fs.meta["manifest_path"])
    assert manifest.parent.resolve() == (ff_root.parent / "runs/cache/manifests").resolve()
    assert manifest.name.startswith("ff++-test-") and fs.meta["manifest_created"]
    assert fs.manifest_sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()
    doc = json.loads(manifest.read_text())
    rel = rel_paths(fs, ff_root)
    assert [f[0] for f in doc["files"]] == rel
    assert doc["files"][0][2] == hashlib.sha256((ff_root / rel[0]).read_bytes()).hexdigest()
    index = ff_root / "dataset_json" / "FaceForensics++.json"
    assert doc["index"]["sha256"] == hashlib.sha256(index.read_bytes()).hexdigest()
    before = manifest.stat().st_mtime_ns

    again = DATASETS["ff++"].load("test", ff_root, opts)
    assert again.manifest_sha256 == fs.manifest_sha256 and not again.meta["manifest_created"]
    assert manifest.stat().st_mtime_ns == before
    # another split or selection is another manifest
    other = DATASETS["ff++"].load("test", ff_root, {**opts, "methods": ["DF"]})
    assert other.meta["manifest_path"] != str(manifest)

    target = fs.paths[4]
    Image.fromarray(255 - frame_pixels(rel[4])).save(target)
    os.utime(target, ns=(before + 10**9, before + 10**9))
    with pytest.raises(ManifestMismatchError) as e:
        DATASETS["ff++"].load("test", ff_root, opts)
    assert e.value.changed == [rel[4]] and not e.value.missing
    assert "1 changed, 0 missing" in str(e.value) and rel[4] in str(e.value)
    assert str(manifest) in str(e.value)
    # deleting the manifest re-pins the data as it is now
    manifest.unlink()
    repinned = DATASETS["ff++"].load("test", ff_root, opts)
    assert repinned.meta["manifest_created"]
    assert repinned.manifest_sha256 != fs.manifest_sha256


def test_frames_skipped_after_pinning_are_reported_missing(ff_root: Path, opts: dict) -> None:
    fs = DATASETS["ff++"].load("test", ff_root, opts)
    fs.paths[0].unlink()
    with pytest.warns(DatasetWarning), pytest.raises(ManifestMismatchError) as e:
        DATASETS["ff++"].load("test", ff_root, {**opts, "allow_missing": True})
    assert e.value.missing == [rel_paths(fs, ff_root)[0]] and not e.value.changed


def test_same_frames_give_the_same_manifest_sha_anywhere(tmp_path: Path) -> None:
    seen: list[int] = []
    a = build_tree(tmp_path / "a", "DFDCP")
    b = build_tree(tmp_path / "b", "DFDCP")
    fa = DATASETS["dfdcp"].load("test", a, {}, cache_dir=tmp_path / "ca")
    fb = DATASETS["dfdcp"].load("test", b, None, cache_dir=tmp_path / "cb",
                                progress=seen.append)
    assert fa.manifest_sha256 == fb.manifest_sha256
    assert Path(fb.meta["manifest_path"]).is_relative_to(tmp_path / "cb" / "manifests")
    assert sum(seen) == len(fb) == 15  # every frame hashed, reported to the suite's bar


def test_calibration_subset_from_loaded_train(ff_root: Path, opts: dict) -> None:
    train = DATASETS["ff++"].load("train", ff_root, opts)
    test = DATASETS["ff++"].load("test", ff_root, opts)
    calib = calibration_subset(train, n=4, seed=3)
    assert calib.split == "calib" and len(calib) == 4
    assert calib.labels.tolist().count(0) == 2
    fake_videos = {v for v, lab in zip(calib.video_ids, calib.labels) if lab == 1}
    assert len(fake_videos) == 2  # one frame per video before a second from any
    assert not set(calib.paths) & set(test.paths)
    assert calib.manifest_sha256 == train.manifest_sha256
    assert calib.meta["calibration"] == {"n": 4, "seed": 3, "balanced": True,
                                         "source_split": "train"}
    assert calibration_subset(train, n=4, seed=3).paths == calib.paths
    assert len({tuple(calibration_subset(train, n=4, seed=s).paths) for s in range(10)}) > 1
    with pytest.warns(DatasetWarning, match="using 3 of each"):
        small = calibration_subset(train, n=512, seed=0)
    assert sorted(small.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DatasetError, match="train split only"):
        calibration_subset(test, n=4)


def test_calibration_never_takes_celeb_df_test_frames(tmp_path: Path, opts: dict) -> None:
    root = build_tree(tmp_path / "data", "Celeb-DF-v2")
    train = DATASETS["celeb-df-v2"].load("train", root, opts)
    test = DATASETS["celeb-df-v2"].load("test", root, opts)
    with pytest.raises(DatasetError, match="0 real and 3 fake"):
        calibration_subset(train, n=2)
    calib = calibration_subset(train, n=2, balanced=False)
    assert len(calib) == 2 and not set(calib.paths) & set(test.paths)


def test_calibration_subset_is_balanced_and_spread_over_videos() -> None:
    n_videos, per = 40, 10
    video_ids = [f"toy/{'real' if v < 12 else 'fake'}/{v}" for v in range(n_videos)
                 for _ in range(per)]
    labels = np.array([0 if v < 12 else 1 for v in range(n_videos) for _ in range(per)])
    paths = [Path(f"/x/{v}/{f:03d}.png") for v in range(n_videos) for f in range(per)]
    train = FrameSet("toy", "train", labels, video_ids, paths=paths)
    calib = calibration_subset(train, n=30, seed=7)
    assert calib.labels.tolist().count(0) == 15 and calib.labels.tolist().count(1) == 15
    # 12 real videos for 15 real frames: every real video once, three of them twice
    real_counts = np.unique([v for v, lab in zip(calib.video_ids, calib.labels) if lab == 0],
                            return_counts=True)[1]
    assert len(real_counts) == 12 and sorted(real_counts.tolist())[-3:] == [2, 2, 2]
    assert len({v for v, lab in zip(calib.video_ids, calib.labels) if lab == 1}) == 15
    # the draw depends on the frames, not on the order the loader listed them in
    order = np.random.default_rng(0).permutation(len(train))
    shuffled = train.subset(order)
    assert sorted(calibration_subset(shuffled, n=30, seed=7).paths) == sorted(calib.paths)
    unbalanced = calibration_subset(train, n=40, seed=7, balanced=False)
    assert len(set(unbalanced.video_ids)) == 40
    with pytest.raises(DatasetError, match="n must be an integer"):
        calibration_subset(train, n=0)


def test_video_scores_mean_per_video_in_first_seen_order() -> None:
    scores, labels = video_scores([0.1, 0.9, 0.3, 0.5, 0.7, 0.2],
                                  ["b", "a", "b", "c", "c", "b"], [0, 1, 0, 1, 1, 0])
    assert np.allclose(scores, [0.2, 0.9, 0.6]) and labels.tolist() == [0, 1, 1]
    assert labels.dtype == np.int64
    with pytest.raises(ValueError, match="video 'a' has frames labelled \\[0, 1\\]"):
        video_scores([0.1, 0.2], ["a", "a"], [0, 1])
    with pytest.raises(ValueError, match="same length"):
        video_scores([0.1], ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="nan"):
        video_scores([float("nan")], ["a"], [0])
    empty_scores, empty_labels = video_scores([], [], [])
    assert empty_scores.shape == (0,) and empty_labels.shape == (0,)
