"""INT4 row-wise (FBGEMM's form): per row a float16 scale and offset, times a float32 power-of-two base.

Codes ``q = clip(rint((x - offset) / scale), 0, 15)`` packed two a byte
(:func:`lpo.numerics.quant.pack_int4`); the graph unpacks the looked-up rows and computes
``Cast(q) * (Cast(scale16) * base) + Cast(offset16) * base``.
"""
from __future__ import annotations

from lpo.formats import int4 as _int4
from lpo.formats.int4 import DTYPE, STORAGE, WHOLE_ROWS, select, simulate  # noqa: F401 - this form's API
from lpo.numerics import quant

NAME = "INT4:per_row"
SCHEME = "per_row"


def matches(vc) -> bool:
    """INT4 with one scale and offset per row (axis 0)."""
    return vc.axis == 0


def quantize(x, *, name="tensor", chunk_rows=None):
    """``(packed uint8 [N, ceil(D/2)], scale16 [N, 1], offset16 [N, 1], base float32)``."""
    return quant.quantize_int4(x, SCHEME, name=name, chunk_rows=chunk_rows)


def dequantize(packed, d, scale16, offset16, base):
    """float32 rows as the graph computes them."""
    return quant.dequantize_int4(packed, d, scale16, offset16, base)


def plan_var(vc, node, full_shape, row_offset) -> None:
    """Packed table, float16 ``[rows, 1]`` scale and offset, float32 base."""
    _int4.plan_var(vc, node, full_shape, row_offset, axis=0, scale_dtype="FP16")


def encode(vc, x, name, chunk_rows=None):
    """Packed codes, scale, offset and base."""
    return _int4.encode(vc, x, name, chunk_rows, SCHEME)


def nbytes(shape) -> int:
    """``n * ceil(d/2) + 4 n + 4``."""
    return _int4.nbytes(shape, _int4.ROW_HEADER_BYTES, 0, 4)


def build_dequant(ctx) -> None:
    """Unpack, then ``* row_scale(ids) + row_offset(ids)``."""
    values = _int4.unpack(ctx)
    scale = ctx.row_values("scale")
    ctx.affine(values, scale, ctx.row_values("offset"))
