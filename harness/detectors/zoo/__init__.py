"""DeepfakeBench's detectors re-implemented in pure PyTorch; importing registers them all.

Each family module registers its detectors with `build(variant="full"|"small")`:
"full" reproduces the DeepfakeBench v1.0.1 state_dict (keys, shapes, dtypes, order) so its
`*_best.pth` loads strictly; "small" keeps the family's structure at a width/resolution that
trains on 64x64 frames on a laptop CPU.
"""

from . import efficientnet, f3net, meso, recce, resnet, srm, ucf, vit, xception  # noqa: F401

__all__ = ["efficientnet", "f3net", "meso", "recce", "resnet", "srm", "ucf", "vit", "xception"]
