"""INT8 with one float16 scale per row times a float32 power-of-two base per table.

``q = rint(x / s)`` with ``s = max|row| / 127`` rounded up to a float16 multiple of ``base``;
the graph computes ``Cast(q) * (Cast(gather(scale16, ids)) * base)``.
"""
from __future__ import annotations

from tensorflow.core.framework import types_pb2

from lpo.formats.base import by_key, scaled_var, side_outputs
from lpo.numerics import quant

NAME = "INT8:per_row"
DTYPE = "INT8"
SCHEME = "per_row"
STORAGE = types_pb2.DT_INT8


def matches(vc) -> bool:
    """INT8 with float16 row scales."""
    return vc.scale_dtype == "FP16"


def quantize(x, *, name="tensor", chunk_rows=None):
    """``(q int8, scale16 float16 [N, 1], base float32)``; see :func:`lpo.numerics.quant.quantize_int8_rows`."""
    return quant.quantize_int8_rows(x, name=name, chunk_rows=chunk_rows)


dequantize = quant.dequantize_int8_rows


def plan_var(vc, node, full_shape, row_offset) -> None:
    """``<node>/lpo_scale`` float16 ``[rows, 1]`` and ``<node>/lpo_scale_base`` float32."""
    scaled_var(vc, node, axis=0, scale_dtype="FP16")


def encode(vc, x, name, chunk_rows=None):
    """``q``, the float16 row scales and the base."""
    q, scale, base = quantize(x, name=name, chunk_rows=chunk_rows)
    return [(vc.key, vc.target_slice, q)] + side_outputs(vc, scale, base=base)


def simulate(vc, outs):
    """``float32(q) * (float32(scale16) * base)``."""
    got = by_key(outs)
    return dequantize(outs[0][2], got[vc.scale_key], got[vc.base_key])


def nbytes(shape) -> int:
    """``n * d`` int8, ``2 n`` for the float16 scales and 4 for the base."""
    n, d = (int(v) for v in shape)
    return n * d + 2 * n + 4


def build_dequant(ctx) -> None:
    """``Cast(rows) * row_scale(ids)``."""
    values = ctx.cast(ctx.unique("/lpo_cast"), ctx.rows)
    ctx.affine(values, ctx.row_values("scale"))
