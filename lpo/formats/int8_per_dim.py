"""INT8 with float32 scales along one axis: embedding tables per column (``[D]``), dense weights per
output channel. Symmetric: ``scale = max|x| / 127``, ``q = rint(x / scale)``; the graph computes
``Cast(q) * scale``. Also reads format-1 manifests' per-row tables (float32 ``[N, 1]`` scales)."""
from __future__ import annotations

from tensorflow.core.framework import types_pb2

from lpo.formats.base import by_key, scaled_var, side_outputs
from lpo.numerics import quant

NAME = "INT8:per_dim"
DTYPE = "INT8"
SCHEME = "per_dim"
STORAGE = types_pb2.DT_INT8


def matches(vc) -> bool:
    """Every INT8 VarConversion with float32 scales (float16 row scales are ``INT8:per_row``)."""
    return vc.scale_dtype != "FP16"


def select(n: int, d: int, options, table: str) -> str:
    """An INT8 table takes ``options.embedding_scheme``."""
    return f"{DTYPE}:{options.embedding_scheme}"


def quantize(x, axis: int | None = 1, *, name="tensor", chunk_rows=None):
    """``(q int8, scale float32)``; see :func:`lpo.numerics.quant.quantize_int8`."""
    return quant.quantize_int8(x, axis, name=name, chunk_rows=chunk_rows)


dequantize = quant.dequantize_int8


def plan_var(vc, node, full_shape, row_offset) -> None:
    """One float32 scale per column: ``<node>/lpo_scale`` ``[D]``."""
    scaled_var(vc, node, axis=1, scale_dtype="FP32")


def encode(vc, x, name, chunk_rows=None):
    """``q`` under the table's key and slice, its scale (shape ``vc.scale_shape``) beside it."""
    q, scale = quantize(x, vc.axis, name=name, chunk_rows=chunk_rows)
    return [(vc.key, vc.target_slice, q)] + side_outputs(vc, scale)


def simulate(vc, outs):
    """``float32(q) * scale``."""
    return dequantize(outs[0][2], by_key(outs)[vc.scale_key])


def nbytes(shape) -> int:
    """``n * d`` int8 plus ``4 d`` for the scales."""
    n, d = (int(v) for v in shape)
    return n * d + 4 * d


def build_dequant(ctx) -> None:
    """``Cast(rows) * scale``."""
    ctx.affine(ctx.cast(ctx.unique("/lpo_cast"), ctx.rows), ctx.side.scale_read)
