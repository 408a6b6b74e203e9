"""Video-level scores: the mean of each video's frame scores (for video AUC)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def video_scores(frame_scores: Sequence[float] | np.ndarray, video_ids: Sequence[str],
                 labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score per video, label per video), videos in order of first appearance.

    A video's score is the mean of its frame scores. Frames of one video must share a label.
    """
    scores = np.asarray(frame_scores, dtype=np.float64).reshape(-1)
    labs = np.asarray(labels).reshape(-1)
    ids = np.asarray(list(video_ids), dtype=object)
    if not (len(scores) == len(labs) == len(ids)):
        raise ValueError(f"video_scores: {len(scores)} scores, {len(labs)} labels and "
                         f"{len(ids)} video ids; they must be the same length")
    if len(scores) == 0:
        return np.zeros(0, np.float64), np.zeros(0, np.int64)
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"video_scores: frame {bad} (video {ids[bad]!r}) has score "
                         f"{scores[bad]}")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weights=scores)
    counts = np.bincount(inverse)
    video_label = labs[first]
    wrong = np.flatnonzero(labs != video_label[inverse])
    if len(wrong):
        v = ids[wrong[0]]
        raise ValueError(f"video_scores: video {v!r} has frames labelled "
                         f"{sorted(set(labs[ids == v].tolist()))}; a video has one label")
    order = np.argsort(first, kind="stable")
    return (sums / counts)[order], video_label[order].astype(np.int64)
