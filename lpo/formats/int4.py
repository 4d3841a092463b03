"""What the two INT4 forms share: the packed layout, its graph unpacking and the size rule."""
from __future__ import annotations

import logging

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.core.graph import dtype_attr, make_node
from lpo.errors import ConfigError
from lpo.formats.base import by_key, scaled_var, side_outputs, slice_spec
from lpo.numerics import quant

log = logging.getLogger("lpo.passes.embedding")

DTYPE = "INT4"
#: Bytes a row of INT4 row-wise scale and offset take (two float16).
ROW_HEADER_BYTES = 4
STORAGE = types_pb2.DT_UINT8  # stored packed, two 4-bit values a byte
#: INT4 tables are packed along rows: a table partitioned by column cannot be INT4.
WHOLE_ROWS = True


def plan_var(vc, node, full_shape, row_offset, *, axis: int, scale_dtype: str) -> None:
    """Scale and offset names, and the packed ``[rows, ceil(D/2)]`` shape (and slice of a part)."""
    scaled_var(vc, node, axis=axis, scale_dtype=scale_dtype, offset=True)
    n, d = full_shape
    cols = quant.int4_packed_cols(d)
    vc.out_shape = [vc.shape[0], cols]
    vc.out_slice = slice_spec([n, cols], [row_offset, 0], vc.out_shape) if vc.slice else ""


def encode(vc, x, name, chunk_rows, scheme):
    """Packed codes under the table's key and (packed) slice, then scale, offset (and base)."""
    packed, scale, offset, base = quant.quantize_int4(x, scheme, name=name, chunk_rows=chunk_rows)
    return [(vc.key, vc.target_slice, packed)] + side_outputs(vc, scale, offset, base)


def unpack(ctx) -> str:
    """Add ``Cast(concat([rows & 15, rows >> 4], -1)[..., :d])`` (float32) and return its name."""
    s, device, d = ctx.s, ctx.device, ctx.dim
    idx = s.index
    name = ctx.name + "/lpo_int4"
    u8 = dtype_attr(types_pb2.DT_UINT8)

    def const(suffix, value):
        return ctx.const_at(name + suffix, value)

    mask, four = const("/mask", np.array(15, np.uint8)), const("/four", np.array(4, np.uint8))
    lo = idx.add(make_node("BitwiseAnd", idx.unique_name(name + "/low"), [ctx.rows, mask], device=device, T=u8))
    hi = idx.add(make_node("RightShift", idx.unique_name(name + "/high"), [ctx.rows, four], device=device, T=u8))
    axis = const("/axis", np.array(-1, np.int32))
    codes = idx.add(make_node("ConcatV2", idx.unique_name(name + "/codes"), [lo.name, hi.name, axis],
                              device=device, N=2, T=u8, Tidx=dtype_attr(types_pb2.DT_INT32))).name
    if d % 2:  # drop the pad nibble: [..., :d] on any rank (the ellipsis covers the lookup dims)
        begin, end = const("/begin", np.array([0, 0], np.int32)), const("/end", np.array([0, d], np.int32))
        step = const("/strides", np.array([1, 1], np.int32))
        codes = idx.add(make_node("StridedSlice", idx.unique_name(name + "/trim"), [codes, begin, end, step],
                                  device=device, T=u8, Index=dtype_attr(types_pb2.DT_INT32), begin_mask=0,
                                  end_mask=0, ellipsis_mask=1, new_axis_mask=0, shrink_axis_mask=0)).name
    return ctx.cast(idx.unique_name(name + "/float"), codes, types_pb2.DT_UINT8)


def simulate(vc, outs):
    """``Cast(codes) * scale + offset`` as the graph computes it."""
    got = by_key(outs)
    base = got.get(vc.base_key) if vc.base_key else None
    return quant.dequantize_int4(outs[0][2], vc.shape[-1], got[vc.scale_key], got[vc.offset_key], base)


def nbytes(shape, header_per_row: int, header_per_col: int, extra: int = 0) -> int:
    """``n * ceil(d/2)`` packed bytes plus the scale/offset bytes of the scheme."""
    n, d = (int(v) for v in shape)
    return n * quant.int4_packed_cols(d) + header_per_row * n + header_per_col * d + extra


def layout(n: int, d: int, requested: str = "per_row") -> str:
    """The form name an ``[n, d]`` table asked to be INT4 ``requested`` is stored as (the size rule).

    An INT4 table never takes more bytes than the same table at INT8 per_dim: ``requested``
    where it fits, else the other INT4 scheme, else ``INT8:per_dim`` (a D=1 table: 5 bytes a row
    row-wise, 1 + 8/n per_dim INT4, 1 + 4/n at INT8 per_dim).
    """
    from lpo import formats

    limit = formats.table_bytes(n, d, "INT8", "per_dim")
    other = "per_dim" if requested == "per_row" else "per_row"
    for scheme in (requested, other):
        if formats.table_bytes(n, d, DTYPE, scheme) <= limit:
            return f"{DTYPE}:{scheme}"
    return "INT8:per_dim"


def select(n: int, d: int, options, table: str) -> str:
    """The form an ``[n, d]`` table asked to be INT4 is stored in: :func:`layout` of
    :data:`lpo.options.INT4_SCHEME`, or of the scheme one node named (``options.int4_scheme``),
    which is then a ConfigError where the rule rejects it (else the change is logged)."""
    from lpo import formats, options as opts

    named = getattr(options, "int4_scheme", None)
    requested = named or opts.INT4_SCHEME
    chosen = layout(n, d, requested)
    if chosen != f"{DTYPE}:{requested}":
        dtype, scheme = chosen.split(":")
        if named:
            raise ConfigError(
                f"table {table!r} [{n}, {d}]: INT4 {named} would take "
                f"{formats.table_bytes(n, d, DTYPE, named)} bytes, more than INT8 per_dim "
                f"({formats.table_bytes(n, d, 'INT8', 'per_dim')}); lpo never stores an INT4 table larger. "
                f"Write 'INT4' (lpo then stores it as {dtype} {scheme}) or '{dtype}:{scheme}'")
        log.info("table %s [%d, %d]: INT4 %s would take more bytes than INT8 per_dim; stored as %s %s",
                 table, n, d, requested, dtype, scheme)
    return chosen
