"""A toy storage form, defined in this one module and registered by tests: ``TOY8:per_dim``.

8 bits per value, one float32 scale per column like INT8 per_dim, but a different rounding:
``scale = max|x| / 127.5`` and ``q = clip(round_half_away(x / scale), -127, 127)``. It reuses
only public helpers of lpo.formats.base; the graph dequantizes as ``Cast(q) * scale``.
"""
import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.formats.base import by_key, scaled_var, side_outputs

NAME = "TOY8:per_dim"
DTYPE = "TOY8"
SCHEME = "per_dim"
STORAGE = types_pb2.DT_INT8


def quantize(x, axis=1, *, name="tensor", chunk_rows=None):
    x = np.asarray(x, np.float32)
    red = tuple(i for i in range(x.ndim) if i != axis)
    scale = (np.max(np.abs(x), axis=red, keepdims=True) / np.float32(127.5)).astype(np.float32)
    r = x / np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.trunc(r + np.copysign(np.float32(0.5), r)), -127, 127).astype(np.int8)
    return q, scale.reshape(x.shape[axis])


def dequantize(q, scale):
    return np.asarray(q).astype(np.float32) * np.asarray(scale, np.float32)


def plan_var(vc, node, full_shape, row_offset):
    scaled_var(vc, node, axis=1, scale_dtype="FP32")


def encode(vc, x, name, chunk_rows=None):
    q, scale = quantize(x, vc.axis, name=name)
    return [(vc.key, vc.target_slice, q)] + side_outputs(vc, scale)


def simulate(vc, outs):
    return dequantize(outs[0][2], by_key(outs)[vc.scale_key])


def nbytes(shape):
    n, d = shape
    return n * d + 4 * d


def build_dequant(ctx):
    ctx.affine(ctx.cast(ctx.unique("/lpo_cast"), ctx.rows), ctx.side.scale_read)
