"""The grouped layout of any storage form: tables of one form concatenated row-wise (FBGEMM's
table-batched embeddings), so that one gather and one dequantization serve every member.

A group of ``T`` tables ``[n_t, D]`` at row offsets ``o_t`` (``N = sum n_t``) is stored as:

* the values: ``<group>`` ``[N, W]`` (``W`` = D, or the form's packed width), member ``t`` in rows
  ``o_t .. o_t + n_t``;
* per-row side tensors (``axis`` 0: INT8 per_row's float16 scales, INT4 per_row's scale and
  offset): ``<group>/lpo_scale`` ``[N, 1]``, concatenated like the values;
* per-table side tensors (``axis`` 1: per_dim scales ``[D]``; the float32 base of float16 scales):
  stacked ``[T, D]`` / ``[T, 1]``, row ``t`` for member ``t``. The graph gathers ``[B, T, D]``
  rows for stacked ids ``[B, T]``, so a ``[T, D]`` scale broadcasts onto them with the same
  float multiplies as each table's own ``[B, D] * [D]``: bit for bit the ungrouped numbers.

Each member is encoded by its own form (:mod:`lpo.formats`) and written into its slices of the
group's tensors (TensorFlow checkpoint slices), one member table in memory at a time. FP32
members (``dtype`` FP32) are copied into their rows.
"""
from __future__ import annotations

import numpy as np

from lpo import formats
from lpo.core.plan import VarConversion
from lpo.formats.base import BASE, OFFSET, SCALE, slice_spec

FP32 = "FP32"


def table_var(vc: VarConversion) -> VarConversion:
    """The member's own (ungrouped) VarConversion: what its form writes for the table alone."""
    own = VarConversion(key=vc.key, slice="", shape=list(vc.shape), role="table", dtype=vc.dtype)
    if vc.dtype != FP32:
        own.scale_dtype, own.axis = vc.scale_dtype, vc.axis
        form = formats.for_var(own)
        form.plan_var(own, vc.key, list(vc.shape), 0)
    return own


def width(vc: VarConversion) -> int:
    """Columns a member's values take in the group (its form's packed width, else D)."""
    own = table_var(vc)
    return int(own.out_shape[1]) if own.out_shape else int(vc.shape[1])


def member_var(own: VarConversion, *, group_key: str, index: int, size: int, offset: int, rows: int,
               cols: int) -> VarConversion:
    """Member ``index`` of ``size`` of group ``group_key`` ``[rows, cols]`` at row ``offset``, from its own conversion."""
    n = int(own.shape[0])
    vc = VarConversion(key=own.key, slice="", shape=list(own.shape), role="table", dtype=own.dtype,
                       dst_key=group_key, out_shape=[n, cols], out_slice=slice_spec([rows, cols], [offset, 0], [n, cols]),
                       group=[index, size])
    if own.scale_key:
        vc.axis, vc.scale_dtype = own.axis, own.scale_dtype
        vc.scale_key = f"{group_key}/{SCALE}"
        vc.scale_shape = side_shape(own.scale_shape, own.axis, size, rows)
        vc.offset_key = f"{group_key}/{OFFSET}" if own.offset_key else None
        vc.base_key = f"{group_key}/{BASE}" if own.base_key else None
    return vc


def side_shape(shape, axis: int, size: int, rows: int) -> list[int]:
    """The group shape of a member's side tensor of ``shape``: per table ``[size, ...]``, per row ``[rows, ...]``."""
    return [size] + list(shape) if axis == 1 else [rows] + list(shape[1:])


def base_shape(size: int) -> list[int]:
    """The group's float32 bases: one per member, ``[size, 1]`` (broadcast onto ``[B, size, 1]`` row scales)."""
    return [size, 1]


def encode(vc: VarConversion, x: np.ndarray, name: str, chunk_rows=None) -> list[tuple[str, str, np.ndarray]]:
    """Member ``vc``'s table ``x`` encoded by its form, as slices of the group's tensors."""
    index, size = vc.group
    offset = int(vc.out_slice.split()[2].split(",")[0])
    if vc.dtype == FP32:
        return [(vc.dst_key, vc.out_slice, x)]
    own = table_var(vc)
    outs = formats.for_var(own).encode(own, x, name, chunk_rows)
    out = [(vc.dst_key, vc.out_slice, outs[0][2])]
    for key, _slice, arr in outs[1:]:
        arr = np.asarray(arr)
        if key == own.base_key:
            out.append((vc.base_key, slice_spec([size, 1], [index, 0], [1, 1]), arr.reshape(1, 1)))
            continue
        group_key = vc.offset_key if key == own.offset_key else vc.scale_key
        if own.axis == 1:  # one per column: row ``index`` of [size, D]
            arr, start = arr.reshape([1] + list(arr.shape)), index
        else:  # one per row: rows offset .. offset + n of [rows, 1]
            start = offset
        out.append((group_key, slice_spec(vc.scale_shape, [start] + [0] * (arr.ndim - 1), list(arr.shape)), arr))
    return out


def _parse_spec(spec: str) -> tuple[list[int], tuple]:
    """``(full shape, numpy index)`` of a checkpoint slice spec ``"N D o0,n0:o1,n1"``."""
    parts = spec.split()
    full = [int(d) for d in parts[:-1]]
    index = tuple(slice(int(o), int(o) + int(n)) for o, n in (e.split(",") for e in parts[-1].split(":")))
    return full, index


class Float16Slices:
    """Assembles a group's float16 slices into whole tensors: TensorFlow cannot restore a float16
    tensor from slices ("Dtype half not supported"). Float16 side tensors take 2 bytes a row or a
    column; an FP16 group's values are held whole (2 bytes a value) until the group is written."""

    def __init__(self):
        self.whole: dict[str, np.ndarray] = {}

    def take(self, outs: list) -> list:
        """Keep the float16 slices of ``outs``; return the others (written as slices)."""
        rest = []
        for key, spec, arr in outs:
            if spec and np.asarray(arr).dtype == np.float16:
                full, index = _parse_spec(spec)
                self.whole.setdefault(key, np.zeros(full, np.float16))[index] = arr
            else:
                rest.append((key, spec, arr))
        return rest

    def finish(self) -> list:
        """The assembled tensors, whole."""
        out, self.whole = [(k, "", v) for k, v in self.whole.items()], {}
        return out
