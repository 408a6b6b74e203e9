"""The calibration subset: frames from the train split only, balanced, spread over videos."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np

from harness.datasets.base import FrameSet
from harness.datasets.errors import DatasetError, DatasetWarning


def _spread(groups: list[np.ndarray], k: int, rng: np.random.Generator) -> list[int]:
    """`k` indices taken round-robin over the groups (videos), each shuffled, in shuffled order.

    Round-robin keeps as many videos as possible in a small calibration set: with 512 frames
    from videos of 32, a plain random draw would repeat videos; this takes one frame of every
    video before a second frame of any.
    """
    shuffled = [rng.permutation(groups[i]) for i in rng.permutation(len(groups))]
    out: list[int] = []
    depth = 0
    while len(out) < k:
        layer = [int(g[depth]) for g in shuffled if depth < len(g)]
        if not layer:
            break
        out += layer[: k - len(out)]
        depth += 1
    return out


def calibration_subset(frameset: FrameSet, n: int = 512, seed: int = 0,
                       balanced: bool = True) -> FrameSet:
    """A deterministic (per seed) subset of a train FrameSet, split 'calib'.

    balanced: n//2 real and n - n//2 fake frames; when a class has fewer frames, both classes
    shrink to the smaller count (with a warning) so the set stays balanced.
    Never contains a test frame: only split 'train' is accepted, and the real-dataset loaders
    drop train videos that also appear in test.
    """
    if frameset.split != "train":
        raise DatasetError(f"calibration frames come from the train split only; "
                           f"{frameset.dataset!r} split {frameset.split!r} was given")
    if frameset.meta.get("test_overlap_videos"):
        raise DatasetError(f"{frameset.dataset!r} train shares "
                           f"{frameset.meta['test_overlap_videos']} videos with test; "
                           f"calibrating on it would leak test frames")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DatasetError(f"calibration size n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(frameset.labels)

    def videos_of(mask: np.ndarray) -> list[np.ndarray]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i in np.flatnonzero(mask):
            groups[frameset.video_ids[i]].append(int(i))
        # sorted videos and frames: the draw must not depend on the order the index happened
        # to list them in (directory-scan order differs between machines)
        if frameset.paths is not None:
            paths = frameset.paths
            for members in groups.values():
                members.sort(key=lambda i: str(paths[i]))
        return [np.asarray(groups[v]) for v in sorted(groups)]

    if balanced:
        real, fake = videos_of(labels == 0), videos_of(labels != 0)
        n_real, n_fake = int(sum(map(len, real))), int(sum(map(len, fake)))
        if n_real == 0 or n_fake == 0:
            raise DatasetError(
                f"balanced calibration needs real and fake frames; {frameset.dataset!r} train "
                f"has {n_real} real and {n_fake} fake (use balanced=False or another dataset)")
        want_real, want_fake = n // 2, n - n // 2
        if n_real < want_real or n_fake < want_fake:
            k = min(n_real, n_fake)
            warnings.warn(f"calibration: {frameset.dataset!r} train has {n_real} real and "
                          f"{n_fake} fake frames; using {k} of each instead of {n} in all",
                          DatasetWarning, stacklevel=2)
            want_real = want_fake = k
        picks = _spread(real, want_real, rng) + _spread(fake, want_fake, rng)
    else:
        everything = videos_of(np.ones(len(labels), bool))
        if n > len(labels):
            warnings.warn(f"calibration: {frameset.dataset!r} train has only {len(labels)} "
                          f"frames; using all of them instead of {n}", DatasetWarning,
                          stacklevel=2)
        picks = _spread(everything, n, rng)
    out = frameset.subset(np.sort(np.asarray(picks, np.int64)), split="calib")
    out.meta.update(calibration={"n": len(picks), "seed": seed, "balanced": balanced,
                                 "source_split": "train"})
    return out
