"""The unquantized reference."""

from ..registry import MethodContext, register


@register("fp32", family="fp32", quantizes=False)
def fp32(ctx: MethodContext) -> None:
    """Full-precision reference (BN folded, nothing quantized)."""
    return None
