"""quant/: quantization algorithms (pure PyTorch, no I/O, imports nothing of the project).

    from quant import quantize, METHODS
    result = quantize(model, "minmax", "W8A8", calib_x, calib_y, seed=0)
    result.sim      # the PyTorch simulation of the quantized model
    result.params   # QuantParams: integer codes, scales, activation grids (what exporters read)
"""

from .api import QuantResult, quantize
from .graph import Placement, fold_bn, place
from .methods import METHODS, MethodContext, register
from .qparams import ActQuant, BitSpec, QuantParams, WeightQuant
from .sim import build_sim, float_activations, with_dequantized_weights

__all__ = [
    "METHODS",
    "ActQuant",
    "BitSpec",
    "MethodContext",
    "Placement",
    "QuantParams",
    "QuantResult",
    "WeightQuant",
    "build_sim",
    "float_activations",
    "fold_bn",
    "place",
    "quantize",
    "register",
    "with_dequantized_weights",
]
