"""What every storage form shares: checkpoint-name helpers and the graph context of a dequantization.

A storage form is a module (or any object) with these names; :func:`lpo.formats.register`
checks them:

* ``NAME``: the opt_config spelling, ``DTYPE`` or ``DTYPE:SCHEME`` (``"INT8:per_row"``);
  ``DTYPE`` is the data type written in plans and opt_config (``Conversion.dtype``),
  ``SCHEME`` the plan's scheme (``"cast"`` for a plain cast), ``STORAGE`` the TensorFlow
  DataType of the stored table.
* ``quantize(x, *, name, chunk_rows)`` / ``dequantize(...)``: the numpy numerics.
* ``plan_var(vc, node, full_shape, row_offset)``: fill a table part's VarConversion with the
  names and shapes of what the form writes (scale, offset, base keys; packed shapes).
* ``encode(vc, x, name, chunk_rows)``: the checkpoint outputs ``[(key, slice, array)]``.
* ``simulate(vc, outs)``: the float32 values the rewritten graph computes from ``outs``
  (AUTO evaluates weight-only forms by assigning these to the FP32 model).
* ``nbytes(shape)``: the bytes an ``[n, d]`` table takes in the checkpoint.
* ``build_dequant(ctx)``: add the NodeDefs turning gathered rows into float32 (a
  :class:`Dequant` context).
* optional ``matches(vc)``: whether a VarConversion of ``DTYPE`` is stored in this form (when
  one data type has several forms), and ``select(n, d, options, table)``: the form name
  a ``[n, d]`` table asked to be ``DTYPE`` is stored as (one form of a data type defines it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.core.graph import dtype_attr, make_const, make_node

#: Checkpoint key suffixes of a table part's side tensors (``<part>/lpo_scale``, ...).
SCALE, OFFSET, BASE = "lpo_scale", "lpo_offset", "lpo_scale_base"
_SIDE_DT = {"FP32": types_pb2.DT_FLOAT, "FP16": types_pb2.DT_HALF}
#: Row chunk size of the checkpoint converter: cache-sized, no full-size temporaries.
CHUNK_BYTES = 4 << 20


def chunk_rows(x: np.ndarray) -> int | None:
    """Rows converted at a time for ``x`` (None for a scalar)."""
    return max(1, CHUNK_BYTES // max(1, x[:1].nbytes)) if np.ndim(x) else None


def chunks(x: np.ndarray):
    """Yield row ranges of ``x`` of about :data:`CHUNK_BYTES` each (one range for 0-d/empty)."""
    if x.ndim == 0 or x.shape[0] == 0:
        yield slice(None)
        return
    rows = max(1, CHUNK_BYTES // max(1, x[:1].nbytes))
    for a in range(0, x.shape[0], rows):
        yield slice(a, a + rows)


def chunk_check(check, x: np.ndarray, name: str) -> None:
    """Run a quant check chunk by chunk; on a failure rerun it on all of ``x`` for the message."""
    try:
        for c in chunks(x):
            check(x[c], name)
    except Exception:  # noqa: BLE001 - re-raised with whole-tensor counts below
        check(x, name)
        raise


def chunk_map(fn, x: np.ndarray, dtype) -> np.ndarray:
    """Apply the elementwise ``fn`` row chunk by row chunk into one output array."""
    if x.ndim == 0:
        return fn(x)
    out = np.empty(x.shape, dtype)
    for c in chunks(x):
        out[c] = fn(x[c])
    return out


def slice_spec(full: list[int], offset: list[int], shape: list[int]) -> str:
    """A checkpoint slice spec, as TF's SaveSliceInfo writes it: ``"N D o0,n0:o1,n1"``."""
    return " ".join(str(d) for d in full) + " " + ":".join(f"{o},{n}" for o, n in zip(offset, shape))


def scaled_var(vc, node: str, *, axis: int, scale_dtype: str, offset: bool = False) -> None:
    """Name the scale (and offset, and float16 scales' base) of table part ``node`` in ``vc``.

    ``axis`` 1: one value per column (shape ``[D]``); 0: one per row (``[rows, 1]``).
    """
    rows, d = vc.shape
    vc.scale_key = f"{node}/{SCALE}"
    vc.axis = axis
    vc.scale_shape = [d] if axis == 1 else [rows, 1]
    vc.scale_dtype = scale_dtype
    if scale_dtype == "FP16":
        vc.base_key = f"{node}/{BASE}"
    if offset:
        vc.offset_key = f"{node}/{OFFSET}"


def side_outputs(vc, scale, offset=None, base=None) -> list[tuple[str, str, np.ndarray]]:
    """The checkpoint outputs beside a table: scale (offset) in ``vc.scale_shape``, the scalar base."""
    out = [(vc.scale_key, "", np.asarray(scale).reshape(vc.scale_shape))]
    if vc.offset_key:
        out.append((vc.offset_key, "", np.asarray(offset).reshape(vc.scale_shape)))
    if vc.base_key:
        out.append((vc.base_key, "", np.asarray(base, np.float32)))
    return out


def by_key(outs) -> dict:
    """``{key: array}`` of converter outputs ``[(key, slice, array)]``."""
    return {k: a for k, _s, a in outs}


@dataclass
class SideVars:
    """The graph tensors of one table part's side variables (scale, offset, base)."""

    scale_var: str | None = None
    scale_read: str | None = None
    scale_dtype: int = types_pb2.DT_FLOAT
    offset_var: str | None = None
    offset_read: str | None = None
    base_read: str | None = None


def add_side_variables(s, vc, resource: bool, device: str) -> SideVars:
    """Add the scale (offset, base) variables ``vc`` names to surgery ``s``; return their reads."""
    pv = SideVars()
    if vc is None or not vc.scale_key:
        return pv
    pv.scale_dtype = _SIDE_DT[vc.scale_dtype or "FP32"]
    pv.scale_var = vc.scale_key
    pv.scale_read = s.add_variable(vc.scale_key, pv.scale_dtype, vc.scale_shape, resource=resource, device=device)
    if vc.offset_key:
        pv.offset_var = vc.offset_key
        pv.offset_read = s.add_variable(vc.offset_key, pv.scale_dtype, vc.scale_shape, resource=resource,
                                        device=device)
    if vc.base_key:
        pv.base_read = s.add_variable(vc.base_key, types_pb2.DT_FLOAT, [], resource=resource, device=device)
    return pv


@dataclass
class Dequant:
    """Where a form's ``build_dequant`` adds its nodes: the float32 result must be node ``name``.

    ``rows`` is the gathered low-precision tensor, ``ids`` (of DataType ``ids_t``) the looked-up
    row ids, ``side`` the part's scale/offset reads, ``dim`` the table's embedding dim, and
    ``gather(s, name, var, read, ids, ids_t, dtype, device)`` adds a row gather of a side variable.
    """

    s: object
    name: str
    rows: str
    ids: str
    ids_t: int
    device: str
    side: SideVars
    dim: int
    storage: int
    gather: object

    def unique(self, suffix: str) -> str:
        """A fresh node name under this lookup's name."""
        return self.s.index.unique_name(self.name + suffix)

    def float_op(self, op: str, name: str, inputs: list[str]) -> str:
        """Add a float32 binary op (``Mul``, ``AddV2``) ``name``; return its name."""
        self.s.index.add(make_node(op, name, inputs, device=self.device, T=dtype_attr(types_pb2.DT_FLOAT)))
        return name

    def cast(self, name: str, src: str, src_t: int | None = None) -> str:
        """Add ``Cast(src) -> float32`` under ``name`` (``src_t``: default the table's storage type)."""
        return self.s.cast_node(name, src, self.storage if src_t is None else src_t, types_pb2.DT_FLOAT,
                                self.device)

    def const_at(self, name: str, value: np.ndarray) -> str:
        """Add a constant named ``name`` (made unique); return its name."""
        return self.s.index.add(make_const(self.s.index.unique_name(name), value, self.device)).name

    def row_values(self, which: str) -> str:
        """The per-row ``scale`` or ``offset`` of the looked-up ids as float32 (float16 ones times base)."""
        pv = self.side
        var, read = (pv.scale_var, pv.scale_read) if which == "scale" else (pv.offset_var, pv.offset_read)
        name = f"{self.name}/lpo_{which}_rows"
        rows = self.gather(self.s, self.s.index.unique_name(name), var, read, self.ids, self.ids_t, pv.scale_dtype,
                           self.device)
        if pv.scale_dtype == types_pb2.DT_FLOAT:
            return rows
        cast = self.cast(self.s.index.unique_name(name + "/cast"), rows, pv.scale_dtype)
        return self.float_op("Mul", self.s.index.unique_name(name + "/base"), [cast, pv.base_read]) \
            if pv.base_read else cast

    def affine(self, values: str, scale: str, offset: str | None = None) -> None:
        """Finish as ``values * scale [+ offset]`` under ``name``."""
        if offset is None:
            self.float_op("Mul", self.name, [values, scale])
            return
        scaled = self.float_op("Mul", self.unique("/lpo_scaled"), [values, scale])
        self.float_op("AddV2", self.name, [scaled, offset])
