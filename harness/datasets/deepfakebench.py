"""Real datasets in DeepfakeBench's preprocessed layout, read through its JSON index files.

Layout under the suite's `data_root` (both paths can be moved with options):
  <data_root>/dataset_json/<Index>.json             option json_dir
  <data_root>/<Dataset folder>/.../frames/<video>/000.png ...   option rgb_dir
Index: {Index: {label name: {train|val|test: [{c23|c40|raw}:] {video: {label, frames}}}}}.
Frame paths in the index may use `\\` or `/` and may carry a prefix before the dataset folder
(`dataset/` in v1.0.1-era files, an absolute root when rearrange.py was given one); both are
reduced to the path from the dataset folder on, resolved against rgb_dir.

What we do differently from DeepfakeBench, on purpose:
- frames per video are evenly spaced over the frames sorted by number (its loader keeps the
  first N);
- video ids are `<dataset>/<label>/<video>`, so fakes of two FF++ methods made from the same
  source pair (same folder name) stay two videos;
- the train split drops every video that also appears in test (Celeb-DF's train lists all its
  videos; DFD puts every video in every split), so calibration never sees a test frame;
- DFDC's `val` is not a split in the index rearrange.py writes; asking for it is an error.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np

from harness.datasets.base import DatasetInfo, FrameSet, register_dataset
from harness.datasets.errors import DatasetError, DatasetWarning
from harness.datasets.manifest import pin_or_verify

README = "https://github.com/SCLBD/DeepfakeBench"
HOW_TO_GET = (
    f"Get DeepfakeBench's preprocessed frames and its dataset_json index files "
    f"({README}#2-download-data), or make them from the original videos with its "
    f"preprocessing/preprocess.py then preprocessing/rearrange.py "
    f"({README}#3-preprocessing-optional)."
)
SPLITS = ("train", "val", "test")
COMPRESSIONS = ("c23", "c40", "raw")
DEFAULT_FRAMES_PER_VIDEO = 32
DEFAULT_CACHE_DIR = Path("runs/cache")
EXAMPLES = 5

# Class 0 label names of DeepfakeBench's label_dict (training/config/test_config.yaml);
# every other label name is a fake (class 1).
REAL_LABELS = frozenset({
    "FF-real", "DFD_real", "CelebDFv1_real", "CelebDFv2_real", "DFDCP_Real", "DFDC_Real",
    "DF_real", "UADFV_Real", "roop_Real",
})
FF_METHODS = {"DF": "FF-DF", "F2F": "FF-F2F", "FS": "FF-FS", "NT": "FF-NT"}


def label_class(label: str) -> int:
    """0 for DeepfakeBench's real label names, 1 for everything else."""
    return 0 if label in REAL_LABELS else 1


@dataclass(frozen=True)
class IndexSpec:
    name: str  # registered dataset name
    index: str  # <index>.json, and the top key inside it
    folder: str  # first folder of every frame path under rgb_dir
    labels: tuple[str, ...]  # label names read (ff++: FF-real + the chosen methods)
    compressed: bool  # split -> compression -> video (FF++ family, DFD)
    description: str = ""


SPECS: tuple[IndexSpec, ...] = (
    IndexSpec("ff++", "FaceForensics++", "FaceForensics++",
              ("FF-real", "FF-DF", "FF-F2F", "FF-FS", "FF-NT"), True,
              "FaceForensics++ (real + DF, F2F, FS, NT; option methods)"),
    *(IndexSpec(f"ff-{m.lower()}", label, "FaceForensics++", ("FF-real", label), True,
                f"FaceForensics++ real + {label} only ({label}.json)")
      for m, label in FF_METHODS.items()),
    IndexSpec("celeb-df-v2", "Celeb-DF-v2", "Celeb-DF-v2", ("CelebDFv2_real", "CelebDFv2_fake"),
              False, "Celeb-DF v2"),
    IndexSpec("dfdc", "DFDC", "DFDC", ("DFDC_Real", "DFDC_Fake"), False,
              "Deepfake Detection Challenge (train, test; no val)"),
    IndexSpec("dfdcp", "DFDCP", "DFDCP", ("DFDCP_Real", "DFDCP_FakeA", "DFDCP_FakeB"), False,
              "Deepfake Detection Challenge preview (val = test)"),
    IndexSpec("dfd", "DeepFakeDetection", "FaceForensics++", ("DFD_real", "DFD_fake"), True,
              "Google/Jigsaw DeepFakeDetection (test only: its videos are in every split)"),
)


@dataclass(frozen=True)
class Options:
    json_dir: Path
    rgb_dir: Path
    json_dir_key: str  # suite.yaml key that decides json_dir, for error messages
    rgb_dir_key: str
    labels: tuple[str, ...]
    compression: str | None
    frames_per_video: int
    allow_missing: bool
    rehash: bool

    def selection(self, spec: IndexSpec) -> dict:
        """What chooses the frames; names the manifest."""
        return {"index": spec.index, "labels": list(self.labels),
                "compression": self.compression, "frames_per_video": self.frames_per_video}


@dataclass(frozen=True)
class Video:
    label: str
    name: str
    frames: tuple[str, ...]  # paths relative to rgb_dir, '/'-separated, in index order


def _key(name: str) -> str:
    return f"datasets[i].options.{name}"


def parse_options(spec: IndexSpec, root: str | Path | None,
                  options: Mapping | None) -> Options:
    opts = dict(options or {})
    allowed = {"json_dir", "rgb_dir", "frames_per_video", "allow_missing", "rehash"}
    if spec.compressed:
        allowed.add("compression")
    if spec.name == "ff++":
        allowed.add("methods")
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise DatasetError(f"dataset {spec.name!r}: unknown option(s) {unknown} "
                           f"({_key(unknown[0])}); allowed: {sorted(allowed)}",
                           config_key=_key(unknown[0]))
    if root is None or str(root) == "":
        raise DatasetError(
            f"dataset {spec.name!r} needs data_root (the folder holding DeepfakeBench's "
            f"dataset_json/ and {spec.folder}/), but data_root is not set. {HOW_TO_GET}",
            config_key="data_root")
    root = Path(root).expanduser().absolute()  # frame paths must not depend on a later chdir
    if not root.is_dir():
        raise DatasetError(
            f"dataset {spec.name!r}: data_root {root} does not exist or is not a folder. "
            f"{HOW_TO_GET}", path=root, config_key="data_root")

    def folder(name: str, default: Path) -> tuple[Path, str]:
        if name not in opts:
            return default, "data_root"
        return root / Path(opts[name]).expanduser(), _key(name)  # an absolute one replaces root

    json_dir, json_key = folder("json_dir", root / "dataset_json")
    rgb_dir, rgb_key = folder("rgb_dir", root)

    compression = None
    if spec.compressed:
        compression = str(opts.get("compression", "c23"))
        if compression not in COMPRESSIONS:
            raise DatasetError(f"dataset {spec.name!r}: {_key('compression')} is "
                               f"{compression!r}; allowed: {list(COMPRESSIONS)}",
                               config_key=_key("compression"))
    labels = spec.labels
    if "methods" in opts:
        labels = ("FF-real", *_methods(opts["methods"]))

    fpv = opts.get("frames_per_video", DEFAULT_FRAMES_PER_VIDEO)
    if isinstance(fpv, bool) or not isinstance(fpv, int) or fpv < 1:
        raise DatasetError(f"dataset {spec.name!r}: {_key('frames_per_video')} must be an "
                           f"integer >= 1, got {fpv!r}", config_key=_key("frames_per_video"))
    for flag in ("allow_missing", "rehash"):
        if not isinstance(opts.get(flag, False), bool):
            raise DatasetError(f"dataset {spec.name!r}: {_key(flag)} must be true or false, "
                               f"got {opts[flag]!r}", config_key=_key(flag))
    return Options(
        json_dir=json_dir, rgb_dir=rgb_dir, json_dir_key=json_key, rgb_dir_key=rgb_key,
        labels=labels, compression=compression, frames_per_video=fpv,
        allow_missing=opts.get("allow_missing", False),
        rehash=opts.get("rehash", False),
    )


def _methods(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise DatasetError(f"dataset 'ff++': {_key('methods')} must be a non-empty list of "
                           f"{list(FF_METHODS)}, got {value!r}", config_key=_key("methods"))
    chosen = {str(m).strip() for m in items}
    bad = sorted(chosen - set(FF_METHODS))
    if bad:
        raise DatasetError(f"dataset 'ff++': unknown method(s) {bad} in {_key('methods')}; "
                           f"allowed: {list(FF_METHODS)}", config_key=_key("methods"))
    return tuple(label for m, label in FF_METHODS.items() if m in chosen)  # canonical order


# --- the index ---------------------------------------------------------------------------------

_parsed: dict[tuple[str, int, int], dict] = {}  # one entry: the index parsed last


def read_index(path: Path, spec: IndexSpec, config_key: str) -> dict:
    """The `{label: {split: ...}}` part of the index file (parsed once per file version)."""
    try:
        st = path.stat()
    except OSError:
        raise DatasetError(
            f"dataset {spec.name!r}: index file {path} not found (set by {config_key}; "
            f"default <data_root>/dataset_json). {HOW_TO_GET}",
            path=path, config_key=config_key) from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _parsed:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetError(f"dataset {spec.name!r}: index file {path} is not valid JSON "
                               f"({e}). {HOW_TO_GET}", path=path, config_key=config_key) from e
        _parsed.clear()
        _parsed[key] = doc
    doc = _parsed[key]
    if not isinstance(doc, dict) or not isinstance(doc.get(spec.index), dict):
        top = list(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DatasetError(f"dataset {spec.name!r}: index file {path} has no top-level key "
                           f"{spec.index!r} (found {top}); is it the right file?",
                           path=path, config_key=config_key)
    return doc[spec.index]


def relative_frame_path(raw: str, folder: str) -> str:
    """Index path -> path from the dataset folder on, '/'-separated.

    Accepts `\\` and `/`, and drops whatever precedes the dataset folder (v1.0.1's `dataset/`,
    an absolute root). Paths without the folder are kept as written.
    """
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    dirs = parts[:-1]
    if folder in dirs:
        start = len(dirs) - 1 - dirs[::-1].index(folder)  # last: a parent may share the name
        return "/".join(parts[start:])
    return ("/" if raw[:1] in "/\\" else "") + "/".join(parts)


def collect_videos(index: dict, spec: IndexSpec, opts: Options, split: str,
                   index_path: Path) -> list[Video]:
    videos: list[Video] = []
    for label in opts.labels:
        where = f"{index_path.name}: {spec.index}/{label}"
        splits = index.get(label)
        if not isinstance(splits, dict):
            raise DatasetError(f"dataset {spec.name!r}: label {label!r} is not in {index_path} "
                               f"(labels there: {_examples(list(index))})", path=index_path,
                               config_key=opts.json_dir_key)
        entries = splits.get(split)
        if not isinstance(entries, dict):
            raise DatasetError(f"dataset {spec.name!r}: {where} has no split {split!r} "
                               f"(splits there: {_examples(list(splits))})", path=index_path,
                               config_key=opts.json_dir_key)
        where += f"/{split}"
        if spec.compressed:
            if opts.compression not in entries:
                raise DatasetError(
                    f"dataset {spec.name!r}: {where} has no compression {opts.compression!r} "
                    f"(found {_examples(list(entries))}); set {_key('compression')} to one of "
                    f"those or "
                    f"preprocess that compression", path=index_path,
                    config_key=_key("compression"))
            entries = entries[opts.compression]
            where += f"/{opts.compression}"
        if "frames" in entries or "label" in entries:
            # rearrange.py wrote one video's {label, frames} over DFDC's val dict.
            raise DatasetError(
                f"dataset {spec.name!r}: {where} is not a list of videos (it mixes 'label' / "
                f"'frames' keys with video ids, a known defect of DeepfakeBench's rearrange.py "
                f"for this dataset's {split!r} split); use split 'test' instead",
                path=index_path)
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list):
                raise DatasetError(f"dataset {spec.name!r}: {where}/{name} has no 'frames' list",
                                   path=index_path)
            if entry.get("label", label) != label:
                raise DatasetError(f"dataset {spec.name!r}: {where}/{name} is labelled "
                                   f"{entry.get('label')!r} inside a {label!r} block",
                                   path=index_path)
            frames = tuple(relative_frame_path(str(f), spec.folder) for f in entry["frames"])
            if frames:
                videos.append(Video(label, str(name), frames))
    return videos


# --- frame choice ------------------------------------------------------------------------------

def _frame_order(path: str) -> tuple[int, int, str]:
    stem = PurePosixPath(path).stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """`n` indices spread evenly over `range(n_total)`, first and last included (all if fewer)."""
    if n_total <= n:
        return np.arange(n_total)
    if n == 1:
        return np.array([(n_total - 1) // 2])
    # step (n_total-1)/(n-1) > 1, so rounding never repeats an index
    return np.floor(np.linspace(0, n_total - 1, n) + 0.5).astype(np.int64)


def sample_frames(frames: tuple[str, ...], n: int) -> list[str]:
    ordered = sorted(frames, key=_frame_order)
    return [ordered[i] for i in evenly_spaced(len(ordered), n)]


# --- loading -----------------------------------------------------------------------------------

def _video_dirs(videos: list[Video]) -> set[str]:
    return {str(PurePosixPath(f).parent) for v in videos for f in v.frames}


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else "")


def load_split(spec: IndexSpec, split: str, root: str | Path | None,
               options: Mapping | None = None, cache_dir: str | Path = DEFAULT_CACHE_DIR,
               progress: Callable[[int], object] | None = None) -> FrameSet:
    """One split as a paths-backed FrameSet; its manifest lives under `cache_dir`.

    `progress(n)` hears of every frame hashed (first load, or changed files).
    """
    if split not in SPLITS:
        raise DatasetError(f"dataset {spec.name!r}: split {split!r} is not one of {list(SPLITS)}")
    opts = parse_options(spec, root, options)
    index_path = opts.json_dir / f"{spec.index}.json"
    index = read_index(index_path, spec, opts.json_dir_key)
    videos = collect_videos(index, spec, opts, split, index_path)
    meta: dict = {"index_file": str(index_path), "rgb_dir": str(opts.rgb_dir),
                  "labels": list(opts.labels), "compression": opts.compression,
                  "frames_per_video": opts.frames_per_video}

    if split != "test":
        test_dirs = _video_dirs(collect_videos(index, spec, opts, "test", index_path))
        in_test = [any(str(PurePosixPath(f).parent) in test_dirs for f in v.frames)
                   for v in videos]
        if split == "train":
            videos = [v for v, shared in zip(videos, in_test) if not shared]
            meta["dropped_test_overlap_videos"] = sum(in_test)
        else:
            meta["test_overlap_videos"] = sum(in_test)
        if not videos:
            raise DatasetError(
                f"dataset {spec.name!r}: every {split} video of {index_path.name} is also a test "
                f"video ({sum(in_test)} videos), so there is no {split} data disjoint from test; "
                f"use this dataset for testing only (e.g. calibrate on ff++ train)",
                path=index_path)
    if not videos:
        raise DatasetError(f"dataset {spec.name!r}: {index_path} lists no {split} frames for "
                           f"{list(opts.labels)}", path=index_path, config_key=opts.json_dir_key)

    rel, labels, video_ids = [], [], []
    for v in videos:
        chosen = sample_frames(v.frames, opts.frames_per_video)
        rel += chosen
        labels += [label_class(v.label)] * len(chosen)
        video_ids += [f"{spec.name}/{v.label}/{v.name}"] * len(chosen)
    paths = [opts.rgb_dir / r for r in rel]
    keep = _check_frames(spec, split, opts, paths, video_ids)
    if keep is not None:
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
        video_ids = [video_ids[i] for i in keep]
        meta["missing_frames_skipped"] = len(rel) - len(keep)

    pinned = pin_or_verify(dataset=spec.name, split=split, selection=opts.selection(spec),
                           files=paths, base=opts.rgb_dir, index_file=index_path,
                           cache_dir=Path(cache_dir), rehash=opts.rehash, progress=progress)
    meta.update(manifest_path=str(pinned.path), manifest_created=pinned.created,
                files_hashed=pinned.files_read, videos=len(set(video_ids)))
    return FrameSet(dataset=spec.name, split=split, labels=np.asarray(labels, np.int64),
                    video_ids=video_ids, paths=paths, manifest_sha256=pinned.sha256, meta=meta)


def _check_frames(spec: IndexSpec, split: str, opts: Options, paths: list[Path],
                  video_ids: list[str]) -> list[int] | None:
    """Indices of frames present on disk, or None when all are; raises on missing data."""
    present = [os.path.isfile(p) for p in paths]
    if all(present):
        return None
    missing = [i for i, ok in enumerate(present) if not ok]
    dataset_dir = opts.rgb_dir / spec.folder
    if not dataset_dir.is_dir() or len(missing) == len(paths):
        where = dataset_dir if not dataset_dir.is_dir() else opts.rgb_dir
        raise DatasetError(
            f"dataset {spec.name!r}: no frames found: {where} is missing or holds none of the "
            f"{len(paths)} {split} frames the index lists (e.g. {paths[missing[0]]}). The frames "
            f"folder is set by {opts.rgb_dir_key}. {HOW_TO_GET}",
            path=where, config_key=opts.rgb_dir_key)
    n_videos = len({video_ids[i] for i in missing})
    summary = (f"dataset {spec.name!r} split {split!r}: {len(missing)} of {len(paths)} selected "
               f"frames are missing under {opts.rgb_dir} ({n_videos} of {len(set(video_ids))} "
               f"videos affected), e.g. {_examples([str(paths[i]) for i in missing])}")
    if not opts.allow_missing:
        raise DatasetError(
            f"{summary}. The data is partial: re-run or finish the download / preprocessing, or "
            f"set {_key('allow_missing')}: true to skip the missing frames. {HOW_TO_GET}",
            path=paths[missing[0]], config_key=opts.rgb_dir_key)
    warnings.warn(f"{summary}; skipped ({_key('allow_missing')} is true)", DatasetWarning,
                  stacklevel=3)
    return [i for i, ok in enumerate(present) if ok]


def _register() -> None:
    for spec in SPECS:
        register_dataset(DatasetInfo(name=spec.name, load=partial(load_split, spec),
                                     description=spec.description, needs_root=True,
                                     config_key="data_root"))


_register()
