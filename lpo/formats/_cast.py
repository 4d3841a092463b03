"""The shared body of the 16-bit cast forms (BF16, FP16): no side tensors, dequantized by one Cast."""
from __future__ import annotations

import numpy as np


def plan_var(vc, node, full_shape, row_offset) -> None:
    """A cast form writes the table alone, under its own key and slice."""


def simulate(vc, outs) -> np.ndarray:
    """The graph's ``Cast(table16) -> float32``."""
    return np.asarray(outs[0][2]).astype(np.float32)


def nbytes(shape) -> int:
    """Two bytes a value."""
    return 2 * int(np.prod(shape))


def build_dequant(ctx) -> None:
    """``Cast(rows) -> float32`` under the lookup's name."""
    ctx.cast(ctx.name, ctx.rows)
