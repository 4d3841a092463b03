"""Embedding tables: find row lookups on float32 tables and rewrite them.

Patterns (each on one table variable, or on each part of a partitioned table):

* ``VarHandleOp -> ResourceGather``                         (resource variables)
* ``VariableV2 -> Identity -> GatherV2|Gather``             (ref variables)
* ``VariableV2 -> Identity -> SparseSegment{Sum,Mean,SqrtN}`` (ref fast path: reads the
  whole table; rewritten to gather the rows first)
* ``gather(table, Unique(ids).y) -> SparseSegment*(., Unique(ids).idx)``
  (``embedding_lookup_sparse``): rewritten to gather the rows of all ids without the Unique,
  which grappler removes on float32 tables but cannot on low-precision ones

A table is a candidate only when every reader is such a lookup. The rewrite
keeps each lookup's node name for its float32 result, so consumers
(``ParallelDynamicStitch``, segment reductions, ...) are untouched: the lookup gathers
the stored rows and the table's storage form (:mod:`lpo.formats`) adds the nodes that
dequantize them, before any segment reduction (only looked-up rows are dequantized):

* BF16/FP16: ``gather(table16) -> Cast(float32)``
* INT8 per_dim: ``gather(table8) -> Cast -> Mul(scale[D])``
* INT8 per_row: ``gather(table8) -> Cast -> Mul(Cast(gather(scale16[N,1])) * base)``
* INT4: ``gather(packed uint8 [N, ceil(D/2)]) -> ConcatV2(BitwiseAnd(., 15), RightShift(., 4))
  [-> StridedSlice(..., :D) for odd D] -> Cast -> Mul(scale) -> AddV2(offset)``

Which form a table asked to be a data type takes is the registry's choice
(:func:`lpo.formats.select`; INT4's size rule: :func:`lpo.formats._int4.select`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import logging

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo import formats
from lpo.core.graph import (
    ANY, READ_OPS, VARIABLE_OPS, GraphMatcher, OpTypePattern, const_value, dtype_attr, make_const, make_node,
    parse_input,
)
from lpo.errors import ConfigError
from lpo.formats.base import Dequant, SideVars, add_side_variables
from lpo.passes.surgery import Surgery
from lpo.passes.registry import register
from lpo.core.plan import Conversion, VarConversion
from lpo.core.savedmodel import VarSpec

GATHER_OPS = ("GatherV2", "Gather")
SEGMENT_OPS = ("SparseSegmentSum", "SparseSegmentMean", "SparseSegmentSqrtN",
               "SparseSegmentSumWithNumSegments", "SparseSegmentMeanWithNumSegments",
               "SparseSegmentSqrtNWithNumSegments")

log = logging.getLogger(__name__)


@dataclass
class EmbeddingCandidate:
    """A table (all its parts) whose every reader is a row lookup."""

    name: str
    shape: list[int]
    parts: list[VarSpec]
    lookups: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "embedding"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4


def _row_lookup(node) -> bool:
    return node.attr["batch_dims"].i == 0


def _is_zero(node) -> bool:
    value = const_value(node)
    return value is not None and value.size == 1 and int(value.reshape(-1)[0]) == 0


# a table variable, read directly or through one snapshot read, then looked up by rows
_TABLE = OpTypePattern(READ_OPS, optional=True, inputs=(OpTypePattern(VARIABLE_OPS, "table"),))
LOOKUPS = (
    OpTypePattern("ResourceGather", "lookup", (_TABLE,), where=_row_lookup),
    OpTypePattern("Gather", "lookup", (_TABLE,)),
    OpTypePattern("GatherV2", "lookup", (_TABLE, ANY, OpTypePattern("Const", where=_is_zero)), where=_row_lookup),
    OpTypePattern(SEGMENT_OPS, "lookup", (_TABLE,)),
)


def find(s: Surgery, specs: dict[str, VarSpec]) -> list[EmbeddingCandidate]:
    """Return the embedding tables of the graph, grouped by checkpoint variable.

    A table is a candidate when every reader of each of its parts is a row lookup.
    """
    lookups_of: dict[str, list[str]] = {}
    for m in GraphMatcher(s.index, *LOOKUPS).match_all("lookup"):
        lookups_of.setdefault(m["table"].name, []).append(m["lookup"].name)
    groups: dict[str, list[VarSpec]] = {}
    for spec in specs.values():
        groups.setdefault(spec.key, []).append(spec)
    out = []
    for key, parts in groups.items():
        if any(p.dtype != "float32" or len(p.shape) != 2 for p in parts):
            continue
        lookups = {}
        for p in parts:
            found = lookups_of.get(p.node, [])
            if not found or any(r.name not in found for r in s.readers(p.node)):
                break
            lookups[p.node] = found
        else:
            parts = sorted(parts, key=lambda p: p.slice)
            # one unpartitioned part: its node name (== key for TF1; readable for lowered TF2 models)
            name = parts[0].node if len(parts) == 1 and not parts[0].slice else key
            out.append(EmbeddingCandidate(name, list(parts[0].full_shape), parts, lookups))
    return out


def describe(cand: EmbeddingCandidate) -> str:
    """Return the ``lpo inspect`` detail of table ``cand`` (its part count when partitioned)."""
    return f"{len(cand.parts)} parts" if len(cand.parts) > 1 else ""


def _row_split(p: VarSpec) -> tuple[int, int] | None:
    """(row offset, rows) of part ``p`` when it holds whole rows; None when split by column."""
    if not p.slice:
        return 0, p.shape[0]
    extents = []
    for dim, ext in zip(p.full_shape, p.slice.split()[len(p.full_shape)].split(":")):
        extents.append((0, dim) if ext == "-" else tuple(int(v) for v in ext.split(",")))
    return extents[0] if extents[1] == (0, p.full_shape[1]) else None


def plan(cand: EmbeddingCandidate, dtype: str, options) -> Conversion:
    """Return the Conversion of table ``cand`` to ``dtype``.

    The storage form is the registry's (:func:`lpo.formats.select`): INT8 scales follow
    ``options.embedding_scheme``; INT4 takes :data:`lpo.options.INT4_SCHEME` where its size
    rule allows (else the smaller INT4 per_dim or INT8 per_dim form, logged), and a scheme one
    node named (``options.int4_scheme``, from ``"INT4:per_dim"``) is a ConfigError where that
    rule rejects it. Each part's checkpoint names come from its form's ``plan_var``.
    """
    n, d = cand.shape
    if any(getattr(f, "WHOLE_ROWS", False) for f in formats.of_dtype(dtype)) \
            and any(_row_split(p) is None for p in cand.parts):
        raise ConfigError(f"table {cand.name!r} is partitioned by column; {dtype} packs whole rows. "
                          "Use INT8 or a 16-bit type for it in opt_config")
    form = formats.select(dtype, n, d, options, cand.name)
    variables = []
    for p in cand.parts:
        v = VarConversion(key=p.key, slice=p.slice, shape=list(p.shape), role="table", dtype=form.DTYPE)
        split = _row_split(p)
        form.plan_var(v, p.node, [n, d], split[0] if split else 0)
        variables.append(v)
    return Conversion(kind="embedding", node=cand.name, dtype=form.DTYPE, scheme=form.SCHEME,
                      variables=variables,
                      targets={"parts": [p.node for p in cand.parts], "lookups": cand.lookups,
                               "resource": [p.resource for p in cand.parts], "dim": d})


def _dequant(s: Surgery, name: str, rows: str, conv: Conversion, pv: SideVars, ids: str, ids_t: int,
             device: str) -> None:
    """Add the nodes of ``conv``'s storage form turning low-precision ``rows`` into float32 under ``name``."""
    form = formats.of(conv.dtype, conv.scheme)
    form.build_dequant(Dequant(s, name, rows, ids, ids_t, device, pv, conv.targets["dim"], form.STORAGE, _gather))


def _gather(s: Surgery, name: str, var: str, read: str, ids: str, ids_t: int, dtype: int, device: str) -> str:
    """Add a row gather of ``var`` (resource) or of its ``read`` (ref) and return its name."""
    if s.index.node(var).op == "VarHandleOp":
        s.index.add(make_node("ResourceGather", name, [var, ids], device=device, dtype=dtype_attr(dtype),
                              Tindices=dtype_attr(ids_t), batch_dims=0, validate_indices=True))
    else:
        axis = s.index.add(make_const(name + "/axis", np.array(0, np.int32), device=device))
        s.index.add(make_node("GatherV2", name, [read, ids, axis.name], device=device, Tparams=dtype_attr(dtype),
                              Tindices=dtype_attr(ids_t), Taxis=dtype_attr(types_pb2.DT_INT32), batch_dims=0))
    return name


def rewrite(s: Surgery, conv: Conversion) -> None:
    """Rewrite every lookup of the table of ``conv`` to read its low-precision form."""
    idx = s.index
    dt = formats.storage(conv.dtype)
    by_part = {v.scale_key.rsplit("/lpo_scale", 1)[0]: v for v in conv.variables if v.scale_key}
    for part, resource in zip(conv.targets["parts"], conv.targets["resource"]):
        device = idx.node(part).device
        vc = by_part.get(part)
        if vc is not None and vc.out_shape is not None:  # INT4: packed rows
            full = [int(t) for t in vc.out_slice.split()[:2]] if vc.out_slice else vc.out_shape
            s.retype_variable(part, dt, shape=vc.out_shape, full_shape=full)
        else:
            s.retype_variable(part, dt)
        pv = add_side_variables(s, vc, resource, device)
        for name in conv.targets["lookups"][part]:
            if _rewrite_unique_lookup(s, name, conv, pv, dt):
                continue
            node = idx.remove(name)
            src = node.input[0]
            tmp = name + "/lpo_gather"
            if node.op == "ResourceGather":
                ids, ids_t = node.input[1], node.attr["Tindices"].type
                g = make_node("ResourceGather", tmp, [src, ids], device=node.device)
                g.attr.MergeFrom(node.attr)
                g.attr["dtype"].CopyFrom(dtype_attr(dt))
                g.attr.pop("_output_shapes", None)
                idx.add(g)
                _dequant(s, name, tmp, conv, pv, ids, ids_t, node.device)
            elif node.op in GATHER_OPS:
                ids, ids_t = node.input[1], node.attr["Tindices"].type
                g = make_node(node.op, tmp, list(node.input), device=node.device)
                g.attr.MergeFrom(node.attr)
                g.attr["Tparams"].CopyFrom(dtype_attr(dt))
                g.attr.pop("_output_shapes", None)
                idx.add(g)
                _dequant(s, name, tmp, conv, pv, ids, ids_t, node.device)
            else:  # SparseSegment*: gather the rows first, then reduce positions 0..n-1
                ids, ids_t = node.input[1], node.attr["Tidx"].type
                _gather(s, tmp, parse_input(src)[0], src, ids, ids_t, dt, node.device)
                rows = name + "/lpo_rows"
                _dequant(s, rows, tmp, conv, pv, ids, ids_t, node.device)
                _reduce_positions(s, name, node, rows, ids, ids_t)


def _reduce_positions(s: Surgery, name: str, seg_node, rows: str, ids: str, ids_t: int) -> None:
    """Add ``seg_node`` (a SparseSegment* op) under ``name`` reducing ``rows`` at positions 0..size(ids)-1."""
    idx = s.index
    device = seg_node.device
    np_t = np.int64 if ids_t == types_pb2.DT_INT64 else np.int32
    zero = idx.add(make_const(name + "/lpo_range/start", np.array(0, np_t), device))
    one = idx.add(make_const(name + "/lpo_range/delta", np.array(1, np_t), device))
    size = idx.add(make_node("Size", name + "/lpo_range/size", [ids], device=device,
                             T=dtype_attr(ids_t), out_type=dtype_attr(ids_t)))
    rng = idx.add(make_node("Range", name + "/lpo_range", [zero.name, size.name, one.name],
                            device=device, Tidx=dtype_attr(ids_t)))
    seg = make_node(seg_node.op, name, [rows, rng.name] + list(seg_node.input[2:]), device=device)
    seg.attr.MergeFrom(seg_node.attr)
    seg.attr["Tidx"].CopyFrom(dtype_attr(ids_t))
    idx.add(seg)


def _unique_lookup(s: Surgery, name: str):
    """``(unique, segments)`` when lookup ``name`` is ``gather(table, Unique(ids).y)`` read only by
    ``SparseSegment*(., Unique(ids).idx, ...)`` (``embedding_lookup_sparse``), else None."""
    idx = s.index
    node = idx.node(name)
    if node.op not in ("ResourceGather",) + tuple(GATHER_OPS) or node.input[1].startswith("^"):
        return None
    u_name, u_out, _ = parse_input(node.input[1])
    if u_name not in idx:  # a dangling input: the plain lookup path reports the broken graph
        return None
    uniq = idx.node(u_name)
    if uniq.op != "Unique" or u_out != 0 or node.attr["batch_dims"].i:
        return None
    if node.op != "ResourceGather" and len(node.input) > 2 and not _is_zero(idx.input_node(node, 2)):
        return None
    want, segs, todo = f"{u_name}:1", [], [name]
    while todo:  # through Identity nodes (tf.compat.v1 embedding_lookup adds one) to the reductions
        src = todo.pop()
        readers = idx.consumers(src)
        if not readers:
            return None
        for c in readers:
            if c.op == "Identity":
                todo.append(c.name)
            elif c.op in SEGMENT_OPS and c.input[0] == src and c.input[1] == want and src not in c.input[2:]:
                segs.append(c)
            else:
                return None
    return uniq, segs


def _rewrite_unique_lookup(s: Surgery, name: str, conv: Conversion, pv: SideVars, dt: int) -> bool:
    """Rewrite ``embedding_lookup_sparse``'s ``Unique -> gather -> SparseSegment*`` on a low-precision table.

    On float32 tables TensorFlow's grappler drops the Unique and the gather (its arithmetic
    optimizer's SimplifyEmbeddingLookup reduces the table itself); a low-precision table has to
    be gathered and dequantized, and a Unique over the ids costs more than the gather it saves
    (8-bit and 16-bit rows are cheap to gather). So the rows of all ids are gathered, without
    the Unique, dequantized, and reduced at positions 0..n-1: the same rows in the same order,
    so the sums are bit for bit those of the Unique form. Returns False where the pattern
    does not hold (the caller rewrites the plain lookup).
    """
    found = _unique_lookup(s, name)
    if found is None:
        return False
    uniq, segs = found
    idx = s.index
    node = idx.remove(name)
    ids, ids_t = uniq.input[0], uniq.attr["T"].type
    tmp = name + "/lpo_gather"
    _gather(s, tmp, parse_input(node.input[0])[0], node.input[0], ids, ids_t, dt, node.device)
    _dequant(s, name, tmp, conv, pv, ids, ids_t, node.device)
    for seg in segs:
        idx.remove(seg.name)
        _reduce_positions(s, seg.name, seg, seg.input[0], ids, ids_t)
    return True  # the Unique, now read by nobody, is never run (and is kept for a control input's sake)


register("embedding", find=find, describe=describe, plan=plan, rewrite=rewrite)
