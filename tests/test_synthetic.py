"""The synthetic benchmark: deterministic, balanced, cached, and a real forgery signal."""

from __future__ import annotations

import numpy as np

from harness.datasets import DATASETS
from harness.datasets.synthetic import (
    SyntheticSpec,
    forge,
    generate_split,
    load_split,
    make_image,
    real_image,
)


def test_images_are_deterministic_and_seeded():
    spec = SyntheticSpec()
    a, la = make_image(spec, "train", 7)
    b, lb = make_image(spec, "train", 7)
    assert np.array_equal(a, b) and la == lb == 1
    c, _ = make_image(SyntheticSpec(seed=1), "train", 7)
    d, _ = make_image(spec, "test", 7)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)  # seeds and splits differ
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_split_is_balanced_and_parallel_generation_is_identical():
    spec = SyntheticSpec(n_test=200)
    x1, y1 = generate_split(spec, "test", workers=1)
    x2, y2 = generate_split(spec, "test", workers=2)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert y1.sum() == 100


def test_fakes_differ_locally_and_difficulty_shrinks_the_cue():
    diffs = {}
    for difficulty in (0.0, 1.0):
        per = []
        for i in range(20):
            r = np.random.default_rng([i, 1])
            src = real_image(r, 64, 0.5)
            fake = forge(np.random.default_rng([i, 2]), src, difficulty, 0.3)
            per.append(np.abs(fake.astype(float) - src).mean())
        diffs[difficulty] = np.mean(per)
    assert diffs[0.0] > 1.5 * diffs[1.0] > 0  # harder fakes are closer to their source


def test_cache_roundtrip(tmp_path):
    spec = SyntheticSpec(n_calib=16)
    a = load_split(spec, "calib", tmp_path)
    files = list((tmp_path / "synthetic").rglob("calib.npz"))
    assert len(files) == 1
    b = load_split(spec, "calib", tmp_path)
    assert np.array_equal(a.images, b.images) and a.manifest_sha256 == b.manifest_sha256
    assert len(a) == 16 and a.dataset == "synthetic"


def test_registry_rejects_unknown_options(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown option"):
        DATASETS["synthetic"].load("test", None, {"nope": 1}, cache_dir=tmp_path)


def test_a_linear_probe_finds_the_forgery_signal():
    """High-frequency energy separates real from fake (the resampling/blending cue)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    spec = SyntheticSpec(n_train=400, n_test=200, difficulty=0.0)

    def features(x):
        g = x.astype(np.float32).mean(axis=3)
        lap = np.abs(4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:])
        lap = lap[:, :60, :60]
        h, w = lap.shape[1:]
        blocks = lap.reshape(len(x), 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(len(x), -1)
        return np.log1p(np.concatenate([blocks, blocks.std(axis=1, keepdims=True)], axis=1))

    xtr, ytr = generate_split(spec, "train", workers=2)
    xte, yte = generate_split(spec, "test", workers=2)
    clf = LogisticRegression(max_iter=2000).fit(features(xtr), ytr)
    auc = roc_auc_score(yte, clf.predict_proba(features(xte))[:, 1])
    assert auc > 0.6, auc
