"""INT4 row-wise, symmetric: per row one float16 scale times a float32 power-of-two base (2 bytes a row).

Codes ``q + 8`` (``q`` in [-7, 7]) packed two a byte like the other INT4 forms; the graph unpacks
the looked-up rows and computes ``(Cast(codes) + -8) * (Cast(scale16) * base)``. Half the row header
of :mod:`lpo.formats.int4_per_row`, so row-wise INT4 fits the size rule from D = 10 instead of 20.
"""
from __future__ import annotations

import numpy as np

from lpo.formats import int4 as _int4
from lpo.formats.base import by_key, side_outputs
from lpo.formats.int4 import DTYPE, STORAGE, WHOLE_ROWS  # noqa: F401 - this form's API
from lpo.numerics import quant

NAME = "INT4:per_row_sym"
SCHEME = "per_row_sym"
#: no grouped layout yet (lpo/formats/grouped.py covers the offset/scale forms): tables stay ungrouped
GROUPABLE = False


def matches(vc) -> bool:
    """INT4 with one float16 scale per row (``[rows, 1]``) and no offset."""
    return vc.axis == 0 and not vc.offset_key and vc.scale_shape != []


def quantize(x, *, name="tensor", chunk_rows=None):
    """``(packed uint8 [N, ceil(D/2)], scale16 [N, 1], base float32)``: :func:`lpo.numerics.quant.quantize_int4_sym`."""
    return quant.quantize_int4_sym(x, name=name, chunk_rows=chunk_rows)


def dequantize(packed, d, scale16, base):
    """float32 rows as the graph computes them."""
    return quant.dequantize_int4_sym(packed, d, scale16, base)


def plan_var(vc, node, full_shape, row_offset) -> None:
    """Packed table, float16 ``[rows, 1]`` scale, float32 base (no offset)."""
    _int4.plan_var(vc, node, full_shape, row_offset, axis=0, scale_dtype="FP16", offset=False)


def encode(vc, x, name, chunk_rows=None):
    """Packed codes, scale and base."""
    packed, scale, base = quantize(x, name=name, chunk_rows=chunk_rows)
    return [(vc.key, vc.target_slice, packed)] + side_outputs(vc, scale, base=base)


def simulate(vc, outs):
    """``(float32(codes) - 8) * scale`` as the graph computes it."""
    got = by_key(outs)
    return dequantize(outs[0][2], vc.shape[-1], got[vc.scale_key], got[vc.base_key])


def nbytes(shape) -> int:
    """``n * ceil(d/2) + 2 n + 4``."""
    return _int4.nbytes(shape, 2, 0, 4)


def build_dequant(ctx) -> None:
    """Unpack, ``+ -8``, then ``* row_scale(ids)``."""
    values = _int4.unpack(ctx)
    centered = ctx.float_op("AddV2", ctx.unique("/lpo_centered"), [values, ctx.const_at(ctx.name + "/lpo_minus8",
                                                                                           np.array(-8, np.float32))])
    ctx.affine(centered, ctx.row_values("scale"))
