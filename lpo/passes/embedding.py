"""Embedding tables: find row lookups on float32 tables and rewrite them.

Patterns (each on one table variable, or on each part of a partitioned table):

* ``VarHandleOp -> ResourceGather``                         (resource variables)
* ``VariableV2 -> Identity -> GatherV2|Gather``             (ref variables)
* ``VariableV2 -> Identity -> SparseSegment{Sum,Mean,SqrtN}`` (ref fast path: reads the
  whole table; rewritten to gather the rows first)

A table is a candidate only when every reader is such a lookup. The rewrite
keeps each lookup's node name for its float32 result, so consumers
(``ParallelDynamicStitch``, segment reductions, ...) are untouched:

* BF16/FP16: ``gather(table16) -> Cast(float32)``
* INT8 per_dim: ``gather(table8) -> Cast -> Mul(scale[D])``
* INT8 per_row: ``gather(table8) -> Cast -> Mul(gather(scale[N,1]))``
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.core.graph import (
    ANY, DT, READ_OPS, VARIABLE_OPS, GraphMatcher, OpTypePattern, const_value, dtype_attr, make_const, make_node,
    parse_input,
)
from lpo.passes.surgery import Surgery
from lpo.passes.registry import register
from lpo.core.plan import Conversion, VarConversion
from lpo.core.savedmodel import VarSpec

GATHER_OPS = ("GatherV2", "Gather")
SEGMENT_OPS = ("SparseSegmentSum", "SparseSegmentMean", "SparseSegmentSqrtN",
               "SparseSegmentSumWithNumSegments", "SparseSegmentMeanWithNumSegments",
               "SparseSegmentSqrtNWithNumSegments")
SCHEMES = ("per_dim", "per_row")


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


def plan(cand: EmbeddingCandidate, dtype: str, options) -> Conversion:
    """Return the Conversion of table ``cand`` to ``dtype`` (INT8 scales by ``options.embedding_scheme``)."""
    scheme = options.embedding_scheme
    variables = []
    for p in cand.parts:
        v = VarConversion(key=p.key, slice=p.slice, shape=list(p.shape), role="table", dtype=dtype)
        if dtype == "INT8":
            v.scale_key = f"{p.node}/lpo_scale"
            v.axis = 1 if scheme == "per_dim" else 0
            v.scale_shape = [p.shape[1]] if scheme == "per_dim" else [p.shape[0], 1]
        variables.append(v)
    return Conversion(kind="embedding", node=cand.name, dtype=dtype,
                      scheme=scheme if dtype == "INT8" else "cast",
                      variables=variables,
                      targets={"parts": [p.node for p in cand.parts], "lookups": cand.lookups,
                               "resource": [p.resource for p in cand.parts]})


def _dequant(s: Surgery, name: str, rows: str, conv: Conversion, scale_read: str | None,
             scale_var: str | None, ids: str, ids_t: int, device: str) -> None:
    """Add nodes turning low-precision ``rows`` into float32 under node name ``name``."""
    dt = DT[conv.dtype]
    if conv.dtype != "INT8":
        s.cast_node(name, rows, dt, types_pb2.DT_FLOAT, device)
        return
    cast = s.cast_node(s.index.unique_name(name + "/lpo_cast"), rows, dt, types_pb2.DT_FLOAT, device)
    scale = scale_read
    if conv.scheme == "per_row":
        scale = _gather(s, s.index.unique_name(name + "/lpo_scale_rows"), scale_var, scale_read, ids, ids_t,
                        types_pb2.DT_FLOAT, device)
    s.index.add(make_node("Mul", name, [cast, scale], device=device, T=dtype_attr(types_pb2.DT_FLOAT)))


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
    dt = DT[conv.dtype]
    for part, resource in zip(conv.targets["parts"], conv.targets["resource"]):
        device = idx.node(part).device
        s.retype_variable(part, dt)
        scale_read = scale_var = None
        if conv.dtype == "INT8":
            vc = next(v for v in conv.variables if v.scale_key == f"{part}/lpo_scale")
            scale_var = vc.scale_key
            scale_read = s.add_variable(scale_var, types_pb2.DT_FLOAT, vc.scale_shape, resource=resource,
                                        device=device)
        for name in conv.targets["lookups"][part]:
            node = idx.remove(name)
            src = node.input[0]
            tmp = name + "/lpo_gather"
            if node.op == "ResourceGather":
                ids, ids_t = node.input[1], node.attr["Tindices"].type
                g = make_node("ResourceGather", tmp, [src, ids], device=node.device)
                g.attr.MergeFrom(node.attr)
                g.attr["dtype"].CopyFrom(dtype_attr(dt))
                idx.add(g)
                _dequant(s, name, tmp, conv, scale_read, scale_var, ids, ids_t, node.device)
            elif node.op in GATHER_OPS:
                ids, ids_t = node.input[1], node.attr["Tindices"].type
                g = make_node(node.op, tmp, list(node.input), device=node.device)
                g.attr.MergeFrom(node.attr)
                g.attr["Tparams"].CopyFrom(dtype_attr(dt))
                idx.add(g)
                _dequant(s, name, tmp, conv, scale_read, scale_var, ids, ids_t, node.device)
            else:  # SparseSegment*: gather the rows first, then reduce positions 0..n-1
                ids, ids_t = node.input[1], node.attr["Tidx"].type
                _gather(s, tmp, parse_input(src)[0], src, ids, ids_t, dt, node.device)
                rows = name + "/lpo_rows"
                _dequant(s, rows, tmp, conv, scale_read, scale_var, ids, ids_t, node.device)
                np_t = np.int64 if ids_t == types_pb2.DT_INT64 else np.int32
                zero = idx.add(make_const(name + "/lpo_range/start", np.array(0, np_t), node.device))
                one = idx.add(make_const(name + "/lpo_range/delta", np.array(1, np_t), node.device))
                size = idx.add(make_node("Size", name + "/lpo_range/size", [ids], device=node.device,
                                         T=dtype_attr(ids_t), out_type=dtype_attr(ids_t)))
                rng = idx.add(make_node("Range", name + "/lpo_range", [zero.name, size.name, one.name],
                                        device=node.device, Tidx=dtype_attr(ids_t)))
                seg = make_node(node.op, name, [rows, rng.name] + list(node.input[2:]), device=node.device)
                seg.attr.MergeFrom(node.attr)
                idx.add(seg)


register("embedding", find=find, describe=describe, plan=plan, rewrite=rewrite)
