"""INT4 per column: one float32 scale and offset per embedding dim (4 bits a value, 8 bytes a column).

Codes packed two a byte as :mod:`lpo.formats.int4_per_row`'s; the graph unpacks the
looked-up rows and computes ``Cast(q) * scale[D] + offset[D]``.
"""
from __future__ import annotations

from lpo.formats import int4 as _int4
from lpo.formats.int4 import DTYPE, STORAGE, WHOLE_ROWS, simulate  # noqa: F401 - this form's API
from lpo.numerics import quant

NAME = "INT4:per_dim"
SCHEME = "per_dim"


def matches(vc) -> bool:
    """INT4 with one scale and offset per column (axis 1)."""
    return vc.axis != 0


def quantize(x, *, name="tensor", chunk_rows=None):
    """``(packed uint8 [N, ceil(D/2)], scale float32 [D], offset float32 [D], None)``."""
    return quant.quantize_int4(x, SCHEME, name=name, chunk_rows=chunk_rows)


def dequantize(packed, d, scale, offset):
    """float32 rows as the graph computes them."""
    return quant.dequantize_int4(packed, d, scale, offset)


def plan_var(vc, node, full_shape, row_offset) -> None:
    """Packed table, float32 ``[D]`` scale and offset."""
    _int4.plan_var(vc, node, full_shape, row_offset, axis=1, scale_dtype="FP32")


def encode(vc, x, name, chunk_rows=None):
    """Packed codes, scale and offset."""
    return _int4.encode(vc, x, name, chunk_rows, SCHEME)


def nbytes(shape) -> int:
    """``n * ceil(d/2) + 8 d``."""
    return _int4.nbytes(shape, 0, 8)


def build_dequant(ctx) -> None:
    """Unpack, then ``* scale + offset``."""
    ctx.affine(_int4.unpack(ctx), ctx.side.scale_read, ctx.side.offset_read)
