"""INT4 row-wise, symmetric, with a one-byte scale code at the end of each packed row (1 byte a row).

A row ``[codes packed as the other INT4 forms | k]``: ``k = e * 16 + m`` gives the scale
``(1 + m/16) * 2**(e - 15) * base`` (:data:`lpo.numerics.quant.E4M4_SCALES`), built in the graph from
float32 bits; the table's float32 power-of-two ``base`` is its only side tensor. The graph gathers
the rows once and computes ``(Cast(codes) + -8) * (Bitcast((e + 112) << 23 | m << 19) * base)``.
Row-wise INT4 within 0.7 of INT8's bytes from D = 7 (``per_row`` needs D = 20).
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.core.graph import dtype_attr, make_node
from lpo.formats import int4 as _int4
from lpo.formats.base import SCALE, side_outputs, slice_spec
from lpo.formats.int4 import DTYPE, STORAGE, WHOLE_ROWS  # noqa: F401 - this form's API
from lpo.numerics import quant

NAME = "INT4:per_row_sym8"
SCHEME = "per_row_sym8"
#: no grouped layout yet (lpo/formats/grouped.py covers the offset/scale forms): tables stay ungrouped
GROUPABLE = False


def matches(vc) -> bool:
    """INT4 whose only side tensor is a scalar base (``scale_shape == []``)."""
    return vc.axis == 0 and vc.scale_shape == []


def quantize(x, *, name="tensor", chunk_rows=None):
    """``(packed uint8 [N, ceil(D/2) + 1], base float32)``; see :func:`lpo.numerics.quant.quantize_int4_sym8`."""
    return quant.quantize_int4_sym8(x, name=name, chunk_rows=chunk_rows)


def dequantize(packed, d, base):
    """float32 rows as the graph computes them."""
    return quant.dequantize_int4_sym8(packed, d, base)


def plan_var(vc, node, full_shape, row_offset) -> None:
    """Packed rows ``[rows, ceil(D/2) + 1]`` and the float32 base ``<node>/lpo_scale_base`` (as ``scale_key``)."""
    n, d = full_shape
    cols = quant.int4_packed_cols(d) + 1
    vc.scale_key, vc.scale_shape, vc.scale_dtype, vc.axis = f"{node}/{SCALE}_base", [], "FP32", 0
    vc.out_shape = [vc.shape[0], cols]
    vc.out_slice = slice_spec([n, cols], [row_offset, 0], vc.out_shape) if vc.slice else ""


def encode(vc, x, name, chunk_rows=None):
    """Packed rows (codes and scale code), then the base."""
    packed, base = quantize(x, name=name, chunk_rows=chunk_rows)
    return [(vc.key, vc.target_slice, packed)] + side_outputs(vc, base)


def simulate(vc, outs):
    """The float32 rows the graph computes."""
    return dequantize(outs[0][2], vc.shape[-1], outs[1][2])


def nbytes(shape) -> int:
    """``n * (ceil(d/2) + 1) + 4``."""
    return _int4.nbytes(shape, 1, 0, 4)


def build_dequant(ctx) -> None:
    """Split codes and scale code, unpack and center the codes, rebuild the float32 scale from its bits."""
    idx, dev = ctx.s.index, ctx.device
    p = quant.int4_packed_cols(ctx.dim)
    i32 = dtype_attr(types_pb2.DT_INT32)
    codes = _int4.unpack(ctx, _int4.last_axis_slice(ctx, ctx.name + "/lpo_int4/codes_bytes", ctx.rows, 0, p))
    centered = ctx.float_op("AddV2", ctx.unique("/lpo_centered"),
                            [codes, ctx.const_at(ctx.name + "/lpo_minus8", np.array(-8, np.float32))])
    k = ctx.s.cast_node(ctx.unique("/lpo_scale_code"),
                        _int4.last_axis_slice(ctx, ctx.name + "/lpo_scale_code/byte", ctx.rows, p, p + 1),
                        types_pb2.DT_UINT8, types_pb2.DT_INT32, dev)

    def op(kind, suffix, inputs):
        return idx.add(make_node(kind, ctx.unique(suffix), inputs, device=dev, T=i32)).name

    def const(suffix, v):
        return ctx.const_at(ctx.name + suffix, np.array(v, np.int32))

    m = op("BitwiseAnd", "/lpo_scale_code/m", [k, const("/lpo_15", 15)])
    mant = op("LeftShift", "/lpo_scale_code/mant", [m, const("/lpo_19", 19)])
    e = op("AddV2", "/lpo_scale_code/e", [op("RightShift", "/lpo_scale_code/e4", [k, const("/lpo_4", 4)]),
                                          const("/lpo_112", 112)])
    expo = op("LeftShift", "/lpo_scale_code/expo", [e, const("/lpo_23", 23)])
    bits = op("BitwiseOr", "/lpo_scale_code/bits", [expo, mant])
    rel = idx.add(make_node("Bitcast", ctx.unique("/lpo_scale_code/rel"), [bits], device=dev, T=i32,
                            type=dtype_attr(types_pb2.DT_FLOAT))).name
    scale = ctx.float_op("Mul", ctx.unique("/lpo_scale"), [rel, ctx.side.scale_read])
    ctx.affine(centered, scale)
