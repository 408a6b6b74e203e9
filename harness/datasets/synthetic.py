"""An offline synthetic deepfake benchmark (no real data can be downloaded everywhere).

'Real' frames are natural-image-like: dead-leaves images (occluding disks with power-law radii,
each with 1/f texture) and random crops of the photos bundled with scikit-image and
scikit-learn. 'Fake' frames are made Self-Blended-Images style: a transformed copy of a real
frame (colour jitter, small shift/scale, blur or sharpen, down-then-up resampling, optional
GAN-style checkerboard upsampling) blended back through a smooth random mask — the subtle,
local blending and resampling cues real detectors rely on.

`difficulty` in [0, 1] shrinks every forgery cue (0 = clearly visible, 1 = faint).
Generation is deterministic per (spec, split): each image has its own seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .base import DatasetInfo, FrameSet, register_dataset

GENERATOR_VERSION = 1
SPLIT_SEEDS = {"train": 1, "calib": 2, "val": 3, "test": 4}


@dataclass(frozen=True)
class SyntheticSpec:
    size: int = 64
    n_train: int = 6000
    n_calib: int = 512
    n_val: int = 512
    n_test: int = 1000
    difficulty: float = 0.0
    photo_fraction: float = 0.5  # share of real frames cropped from bundled photos
    checkerboard_p: float = 0.3  # share of fakes with GAN-style upsampling
    seed: int = 0

    def n(self, split: str) -> int:
        return {"train": self.n_train, "calib": self.n_calib, "val": self.n_val, "test": self.n_test}[split]

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- real content ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def bundled_photos() -> tuple[np.ndarray, ...]:
    """Colour photos shipped inside scikit-image and scikit-learn (no download)."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = [getattr(skd, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")]
    photos += list(load_sample_images().images)
    for n in ("camera", "grass", "gravel", "brick", "moon", "clock", "horse"):
        g = getattr(skd, n)()
        g = (g.astype(np.float32) * 255 if g.dtype == bool else g.astype(np.float32))
        photos.append(np.repeat(g[..., None], 3, axis=2).clip(0, 255).astype(np.uint8))  # tinted later
    return tuple(np.ascontiguousarray(p[..., :3]).astype(np.uint8) for p in photos)


def pink_noise(rng: np.random.Generator, size: int, alpha: float = 1.0) -> np.ndarray:
    """Gaussian noise with a 1/f^alpha amplitude spectrum, unit variance."""
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    spec = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / radius**alpha
    spec[0, 0] = 0
    img = np.real(np.fft.ifft2(spec))
    return (img / (img.std() + 1e-8)).astype(np.float32)


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """Occluding disks, radii ~ r^-3 (scale invariant), each filled with a textured colour."""
    img = np.zeros((size, size, 3), np.float32)
    filled = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = pink_noise(rng, size, alpha=rng.uniform(0.8, 1.4))
    rmin, rmax = 0.02 * size, 0.5 * size
    for _ in range(400):
        u = rng.uniform()
        r = (rmin**-2 + u * (rmax**-2 - rmin**-2)) ** -0.5  # inverse CDF of p(r) ~ r^-3
        cx, cy = rng.uniform(-0.1, 1.1, size=2) * size
        disk = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) & ~filled
        if not disk.any():
            continue
        colour = rng.uniform(0.05, 0.95, size=3).astype(np.float32)
        amp = rng.uniform(0.02, 0.12)
        img[disk] = colour + amp * texture[disk][:, None]
        filled |= disk
        if filled.all():
            break
    img[~filled] = rng.uniform(0.2, 0.8, size=3)
    img = ndimage.gaussian_filter(img, sigma=(0.6, 0.6, 0))  # camera-like optical blur
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = bundled_photos()
    p = photos[rng.integers(len(photos))]
    h, w = p.shape[:2]
    side = int(rng.uniform(0.25, 0.9) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = p[y : y + side, x : x + side].astype(np.float32)
    crop = ndimage.zoom(crop, (size / side, size / side, 1), order=1)[:size, :size]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    if np.allclose(crop[..., 0], crop[..., 1]):  # grey photo: give it a colour cast
        crop = crop * rng.uniform(0.6, 1.0, size=3)
    return np.clip(crop, 0, 255).astype(np.uint8)


def real_image(rng: np.random.Generator, size: int, photo_fraction: float) -> np.ndarray:
    img = photo_crop(rng, size) if rng.uniform() < photo_fraction else dead_leaves(rng, size)
    # Mild sensor noise so that 'real' is not perfectly clean either.
    img = img.astype(np.float32) + rng.normal(0, 1.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --- forgery ---------------------------------------------------------------------------------
def smooth_mask(rng: np.random.Generator, size: int, difficulty: float) -> np.ndarray:
    """A soft blob (ellipse deformed by low-frequency noise), feathered edges, peak <= 1."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    scale = (1.0 - 0.5 * difficulty) * rng.uniform(0.18, 0.32)
    ax, ay = scale * rng.uniform(0.7, 1.3, size=2)
    theta = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / ax
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ay
    field = u * u + v * v + 0.35 * pink_noise(rng, size, alpha=2.0)
    mask = (field < 1.0).astype(np.float32)
    mask = ndimage.gaussian_filter(mask, sigma=rng.uniform(1.0, 3.0) * size / 64)
    peak = 1.0 - 0.4 * difficulty * rng.uniform(0.5, 1.0)
    return np.clip(mask / max(mask.max(), 1e-6), 0, 1) * peak


def checkerboard_upsample(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Zero-insertion 2x upsampling + a fixed 3x3 kernel: the transposed-conv checkerboard."""
    h, w, _ = img.shape
    small = img[::2, ::2]
    up = np.zeros_like(img)
    up[::2, ::2] = small
    k = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], np.float32)
    k = k * (1 + strength * rng.uniform(-0.5, 0.5, size=(3, 3)).astype(np.float32))
    out = np.stack([ndimage.convolve(up[..., c], k, mode="reflect") for c in range(3)], axis=-1)
    return out[:h, :w]


def forge(rng: np.random.Generator, src: np.ndarray, difficulty: float, checkerboard_p: float) -> np.ndarray:
    size = src.shape[0]
    s = 1.0 - 0.75 * difficulty  # strength of every cue
    img = src.astype(np.float32)
    tgt = img.copy()
    # colour jitter: brightness, contrast, per-channel gain
    tgt = (tgt - tgt.mean()) * (1 + s * rng.uniform(-0.15, 0.15)) + tgt.mean()
    tgt = tgt * (1 + s * rng.uniform(-0.08, 0.08, size=3)) + s * rng.uniform(-10, 10)
    # small shift / scale
    zoom = 1 + s * rng.uniform(-0.04, 0.04)
    shift = s * rng.uniform(-1.5, 1.5, size=2)
    tgt = ndimage.affine_transform(tgt, np.diag([1 / zoom, 1 / zoom, 1]), offset=(shift[0], shift[1], 0), order=1, mode="reflect")
    # blur or sharpen
    sigma = s * rng.uniform(0.5, 1.2)
    blurred = ndimage.gaussian_filter(tgt, sigma=(sigma, sigma, 0))
    if rng.uniform() < 0.6:
        tgt = blurred
    else:
        tgt = tgt + s * rng.uniform(0.5, 1.2) * (tgt - blurred)
    # down-then-up resampling
    factor = rng.choice([2, 3, 4]) if difficulty < 0.5 else 2
    small = ndimage.zoom(tgt, (1 / factor, 1 / factor, 1), order=1)
    up = ndimage.zoom(small, (size / small.shape[0], size / small.shape[1], 1), order=int(rng.choice([0, 1, 3])))[:size, :size]
    tgt = (1 - s) * tgt + s * up if up.shape == tgt.shape else tgt
    if rng.uniform() < checkerboard_p:
        tgt = (1 - s) * tgt + s * checkerboard_upsample(rng, tgt, 1.0)
    mask = smooth_mask(rng, size, difficulty)[..., None]
    out = mask * tgt + (1 - mask) * img
    return np.clip(out + rng.normal(0, 1.5, out.shape), 0, 255).astype(np.uint8)


def make_image(spec: SyntheticSpec, split: str, index: int) -> tuple[np.ndarray, int]:
    """The index-th frame of a split: deterministic, independent of every other frame."""
    rng = np.random.default_rng([spec.seed, SPLIT_SEEDS[split], index, GENERATOR_VERSION])
    label = index % 2  # balanced, interleaved
    img = real_image(rng, spec.size, spec.photo_fraction)
    if label == 1:
        img = forge(rng, img, spec.difficulty, spec.checkerboard_p)
    return img, label


def _make_range(args: tuple[SyntheticSpec, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    spec, split, lo, hi = args
    pairs = [make_image(spec, split, i) for i in range(lo, hi)]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.int64)


def generate_split(spec: SyntheticSpec, split: str, workers: int | None = None, progress=None) -> tuple[np.ndarray, np.ndarray]:
    n = spec.n(split)
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = 128
    jobs = [(spec, split, lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    images, labels = [], []
    if workers <= 1 or len(jobs) <= 1:
        results = map(_make_range, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_make_range, jobs)
    for imgs, labs in results:
        images.append(imgs)
        labels.append(labs)
        if progress:
            progress(len(labs))
    if workers > 1 and len(jobs) > 1:
        pool.shutdown()
    return np.concatenate(images), np.concatenate(labels)


def load_split(spec: SyntheticSpec, split: str, cache_dir: str | Path, progress=None) -> FrameSet:
    """A split from the on-disk cache, generating it on first use."""
    cache = Path(cache_dir) / "synthetic" / spec.key()
    path = cache / f"{split}.npz"
    if path.is_file():
        z = np.load(path)
        images, labels = z["images"], z["labels"]
    else:
        images, labels = generate_split(spec, split, progress=progress)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{split}.{os.getpid()}.npz"
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)
        (cache / "spec.json").write_text(json.dumps({**asdict(spec), "generator_version": GENERATOR_VERSION}, indent=2))
    digest = hashlib.sha256(images.tobytes()).hexdigest()
    return FrameSet(
        dataset="synthetic",
        split=split,
        labels=labels,
        video_ids=[f"synthetic/{split}/{i}" for i in range(len(labels))],  # one frame per 'video'
        images=images,
        manifest_sha256=digest,
        meta={"spec": asdict(spec), "generator_version": GENERATOR_VERSION},
    )


def _load(split: str, root=None, options: dict | None = None, cache_dir: str | Path = "runs/cache", progress=None) -> FrameSet:
    opts = dict(options or {})
    allowed = set(SyntheticSpec.__dataclass_fields__)
    unknown = set(opts) - allowed
    if unknown:
        raise ValueError(f"synthetic dataset: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return load_split(SyntheticSpec(**opts), split, cache_dir, progress=progress)


register_dataset(
    DatasetInfo(
        name="synthetic",
        load=_load,
        description="Offline SBI-style synthetic benchmark (dead leaves + bundled photos; blended forgeries)",
        needs_root=False,
    )
)
