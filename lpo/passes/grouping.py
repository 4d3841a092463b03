"""Grouped tables: one gather and one dequantization for many single-value lookups (FBGEMM's
table-batched embeddings, with stock TensorFlow ops).

A group is two or more embedding tables of one dim and one storage form (FP32 included), read
through one kind of variable (resource or ref) with ids of one dtype and rank, whose every
lookup is a *single-value* lookup: ``ResourceGather``/``GatherV2(axis 0)`` whose ids are
``[batch]`` or ``[batch, 1]``, proved by static shapes back to a signature input of that shape
(through elementwise ops: casts, Keras's negative-id ``SelectV2``, hashing, vocabulary lookups).
The slots of a group come from inputs of one static batch dim (or all unknown), and serving
feeds every input of a signature the same batch, so their ids stack (a signature whose inputs
have different unknown first dims, e.g. a candidate list beside the user's row, would need
``group_tables=False``). A table with any other lookup (multi-valued: segment reductions,
``embedding_lookup_sparse``'s ``Unique``) is not grouped in this version: it keeps its own path.

The rewrite, for slots ``s`` (one per lookup) of member tables at row offsets ``o``::

    ids   = Pack(ids_s, axis=1) | ConcatV2(ids_s, axis=1)      # [B, S]
    rows  = gather(group, ids + Const(o_table(s)))             # [B, S, W]
    value = the form's dequantization of rows                  # [B, S, D], one op chain
    Unpack(value, axis=1) | Split(value, axis=1)               # each slot's [B, D] | [B, 1, D]

and each lookup's consumers read their slot's output. The group's tensors (values, side
tensors) are :mod:`lpo.formats.grouped`'s layout; the plan's member VarConversions let the
checkpoint converter write each member table into its rows. Ids outside a member's own rows
read a neighbour's rows instead of failing as the ungrouped gather does (only for invalid ids).
"""
from __future__ import annotations

import logging

import numpy as np
from tensorflow.core.framework import types_pb2, variable_pb2

from lpo import formats
from lpo.core.graph import dtype_attr, make_const, make_node, parse_input
from lpo.core.plan import Conversion, VarConversion
from lpo.errors import ConfigError
from lpo.formats import grouped as layout
from lpo.formats.base import Dequant, SideVars
from lpo.passes.embedding import GATHER_OPS, _gather, _is_zero
from lpo.passes.interaction import static_shape
from lpo.passes.registry import register
from lpo.passes.surgery import Surgery

log = logging.getLogger(__name__)

KIND = "group"
#: ops whose output has the shape of their non-scalar data inputs (a single-value id stays one per row)
ELEMENTWISE = ("Identity", "Cast", "Select", "SelectV2", "Add", "AddV2", "Sub", "Mul", "Maximum", "Minimum",
               "FloorMod", "Mod", "Less", "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual",
               "StringToHashBucketFast", "StringToHashBucketStrong", "StringToHashBucket", "AsString",
               "LookupTableFindV2", "Abs", "Neg")
#: ops that keep the element count: through them only input 0 is followed
RESHAPES = ("Reshape", "Squeeze", "ExpandDims")
#: what a member variable's initializer may be computed from (removed with it when nothing else reads it)
INIT_VALUE_OPS = ("Const", "Fill", "Cast", "Identity", "RandomUniform", "TruncatedNormal", "RandomStandardNormal",
                  "Mul", "Add", "AddV2", "Sub", "Shape", "StatelessRandomUniformV2", "StatelessTruncatedNormalV2",
                  "StatelessRandomNormalV2")
_NP_IDS = {types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64}
#: the rows a group may have: its ids (+ offsets) stay in the ids' dtype
_MAX_ROWS = {t: int(np.iinfo(d).max) for t, d in _NP_IDS.items()}


# --------------------------------------------------------------------------- proof
def signature_inputs(s: Surgery) -> dict[str, list[int] | None]:
    """The signature input nodes of the graph with their static shapes."""
    out = {}
    for sig in s.mg.signature_def.values():
        for info in sig.inputs.values():
            name = parse_input(info.name)[0]
            if name in s.index:
                out[name] = static_shape(s, info.name)
    return out


def _sources(s: Surgery, tensor: str, inputs: dict, depth: int = 0) -> set[str] | None:
    """The signature inputs ``tensor`` is computed from elementwise (scalars aside); None when it is not."""
    name = parse_input(tensor)[0]
    if name in inputs:
        return {name}
    node = s.index.node(name) if name in s.index else None
    if node is None or depth > 24 or node.op not in ELEMENTWISE + RESHAPES:
        return None
    data = [i for i in node.input if not i.startswith("^")]
    data = data[:1] if node.op in RESHAPES else data[1:2] if node.op == "LookupTableFindV2" else data
    found: set[str] = set()
    for inp in data:
        if static_shape(s, inp) == []:  # a scalar operand (Keras's table size, a hash bucket count)
            continue
        sub = _sources(s, inp, inputs, depth + 1)
        if sub is None:
            return None
        found |= sub
    return found or None


def _one_per_row(shape) -> bool:
    return shape is not None and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))


def single_value(s: Surgery, lookup: str, inputs: dict) -> dict | None:
    """``{"ids", "ids_t", "rank", "batch"}`` when ``lookup`` gathers one row per batch row, else None
    (``batch``: the static batch dim of the signature input, -1 when unknown)."""
    if lookup not in s.index:  # a dangling reference (a corrupt graph): not provably single-value
        return None
    node = s.index.node(lookup)
    if node.op == "ResourceGather":
        if node.attr["batch_dims"].i:
            return None
    elif node.op in GATHER_OPS:
        if node.op == "GatherV2" and (node.attr["batch_dims"].i or not _is_zero(s.index.input_node(node, 2))):
            return None
    else:
        return None
    ids = node.input[1]
    shape = static_shape(s, ids)
    src = _sources(s, ids, inputs) if _one_per_row(shape) else None
    if not src or len(src) != 1 or not _one_per_row(inputs[next(iter(src))]):
        return None
    return {"ids": ids, "ids_t": node.attr["Tindices"].type, "rank": len(shape), "batch": inputs[next(iter(src))][0]}


# --------------------------------------------------------------------------- plan
def plan_groups(s: Surgery, found: list, convs: list[Conversion], *, fp32: bool = False) -> list[Conversion]:
    """Replace the conversions of groupable tables in ``convs`` by one group conversion per group.

    ``found`` are the graph's candidates. With ``fp32`` (``data_type='FP32'``: the exact rewrites
    only) the tables without a conversion group as FP32; otherwise a table kept FP32 (by opt_config)
    is left as it is. Returns the new conversion list (groups where the first member was).
    """
    planned = {c.node: c for c in convs if c.kind == "embedding"}
    inputs = signature_inputs(s)
    buckets: dict[tuple, list] = {}
    for cand in found:
        if cand.kind != "embedding" or len(cand.parts) != 1 or cand.parts[0].slice:
            continue
        part = cand.parts[0]
        slots = [single_value(s, name, inputs) for name in cand.lookups[part.node]]
        if not slots or any(v is None for v in slots):
            log.debug("table %s: a lookup is not single-value; not grouped", cand.name)
            continue
        conv = planned.get(cand.name)
        if conv is None and not fp32:
            continue
        own = conv.variables[0] if conv is not None else VarConversion(
            key=part.key, slice="", shape=list(part.shape), role="table", dtype=layout.FP32)
        if conv is not None and not getattr(formats.for_var(own), "GROUPABLE", True):
            log.debug("table %s: its form %s:%s has no grouped layout; not grouped", cand.name, own.dtype, conv.scheme)
            continue
        form = (own.dtype, conv.scheme if conv else "", own.scale_dtype, own.axis)
        key = form + (int(cand.shape[1]), part.resource, slots[0]["ids_t"], slots[0]["rank"],
                      s.index.node(part.node).device, slots[0]["batch"])
        if any((v["ids_t"], v["rank"], v["batch"]) != (key[6], key[7], key[9]) for v in slots):
            continue
        buckets.setdefault(key, []).append((cand, conv, own, [v["ids"] for v in slots]))
    groups = {}
    for key, members in buckets.items():
        if len(members) > 1 and sum(int(m[0].shape[0]) for m in members) <= _MAX_ROWS.get(key[6], 0):
            name = s.index.unique_name(f"lpo_group_{len(groups)}")
            groups[members[0][0].name] = _group_conversion(name, key, members)
    grouped = {m for g in groups.values() for m in g.targets["tables"]}
    out = []
    for c in convs:
        if c.node in groups:
            out.append(groups.pop(c.node))
        elif not (c.kind == "embedding" and c.node in grouped):
            out.append(c)
    return out + list(groups.values())  # FP32 groups (no member conversion)


def _group_conversion(name: str, key: tuple, members: list) -> Conversion:
    dtype, scheme, _sd, _axis, dim, resource, ids_t, rank, _dev, _batch = key
    rows = sum(int(cand.shape[0]) for cand, *_ in members)
    cols = layout.width(members[0][2])
    variables, tables, offset = [], [], 0
    for i, (cand, _conv, own, _ids) in enumerate(members):
        variables.append(layout.member_var(own, group_key=name, index=i, size=len(members), offset=offset,
                                           rows=rows, cols=cols))
        part = cand.parts[0]
        tables.append({"table": cand.name, "key": part.key, "part": part.node, "offset": offset,
                       "rows": int(cand.shape[0]), "lookups": cand.lookups[part.node]})
        offset += int(cand.shape[0])
    return Conversion(kind=KIND, node=name, dtype=dtype, scheme=scheme or "cast", variables=variables,
                      targets={"tables": [t["table"] for t in tables], "members": tables, "dim": dim, "rows": rows,
                               "width": cols, "resource": resource, "ids_rank": rank, "ids_t": int(ids_t)})


def describe(conv: Conversion) -> str:
    """One line: the group's tables, form and rows."""
    t = conv.targets
    return (f"{len(t['tables'])} tables [{t['rows']}, {t['dim']}] {conv.dtype}"
            f"{'' if conv.scheme == 'cast' else ':' + conv.scheme}: " + ", ".join(
                f"{m['table']}@{m['offset']}" for m in t["members"]))


def _no_candidates(_s, _specs) -> list:
    return []


def _plan(cand, dtype, options):
    raise ConfigError("embedding groups are planned from their tables (lpo.passes.grouping.plan_groups)")


# --------------------------------------------------------------------------- rewrite
def rewrite(s: Surgery, conv: Conversion) -> None:
    """Replace the member tables' lookups by the group's one gather and one dequantization."""
    idx, t = s.index, conv.targets
    members = t["members"]
    if any(m["part"] not in idx for m in members) or any(l not in idx for m in members for l in m["lookups"]):
        log.warning("embedding group %s: its tables are not in this graph; left as they are", conv.node)
        return
    first = idx.node(members[0]["part"])
    device, ids_t = first.device, t["ids_t"]
    dt = formats.storage(conv.dtype)
    read = s.add_variable(conv.node, types_pb2.DT_FLOAT, [t["rows"], t["width"]], resource=t["resource"],
                          device=device)
    if dt != types_pb2.DT_FLOAT:
        s.retype_variable(conv.node, dt)
    slots = [(lookup, i, m["offset"]) for i, m in enumerate(members) for lookup in m["lookups"]]
    n = len(slots)
    base = conv.node
    ids = [idx.node(lookup).input[1] for lookup, _i, _o in slots]
    ids_attr = dtype_attr(ids_t)
    if t["ids_rank"] == 1:
        stacked = idx.add(make_node("Pack", f"{base}/lpo_ids", ids, device=device, N=n, T=ids_attr, axis=1))
    else:
        axis = idx.add(make_const(f"{base}/lpo_ids/axis", np.array(1, np.int32), device))
        stacked = idx.add(make_node("ConcatV2", f"{base}/lpo_ids", ids + [axis.name], device=device, N=n,
                                    T=ids_attr, Tidx=dtype_attr(types_pb2.DT_INT32)))
    offsets = idx.add(make_const(f"{base}/lpo_offsets", np.array([o for *_x, o in slots], _NP_IDS[ids_t]), device))
    gids = idx.add(make_node("AddV2", f"{base}/lpo_group_ids", [stacked.name, offsets.name], device=device,
                             T=ids_attr)).name
    rows = _gather(s, f"{base}/lpo_gather", conv.node, read, gids, ids_t, dt, device)
    values = rows
    if conv.dtype != layout.FP32:
        values = f"{base}/lpo_rows"
        form = formats.of(conv.dtype, conv.scheme)
        side = _side_variables(s, conv, [i for _l, i, _o in slots], device)
        form.build_dequant(Dequant(s, values, rows, gids, ids_t, device, side, t["dim"], form.STORAGE, _gather))
    f32 = dtype_attr(types_pb2.DT_FLOAT)
    if t["ids_rank"] == 1:
        split = idx.add(make_node("Unpack", f"{base}/lpo_split", [values], device=device, num=n, T=f32, axis=1))
    else:
        axis = idx.add(make_const(f"{base}/lpo_split/axis", np.array(1, np.int32), device))
        split = idx.add(make_node("Split", f"{base}/lpo_split", [axis.name, values], device=device, num_split=n,
                                  T=f32))
    for k, (lookup, _i, _o) in enumerate(slots):
        _redirect(s, lookup, split.name, k)
    for m in members:
        _remove_variable(s, m["part"])


def _side_variables(s: Surgery, conv: Conversion, slot_tables: list[int], device: str) -> SideVars:
    """The group's side variables (from its members' VarConversions); per-table ones read per slot."""
    vc = conv.variables[0]
    pv = SideVars()
    if not vc.scale_key:
        return pv
    size = vc.group[1]
    resource = conv.targets["resource"]
    pv.scale_dtype = types_pb2.DT_HALF if vc.scale_dtype == "FP16" else types_pb2.DT_FLOAT
    per_slot = slot_tables != list(range(size))

    def add(key, dtype, shape, per_table):
        read = s.add_variable(key, dtype, shape, resource=resource, device=device)
        if per_table and per_slot:  # a table looked up twice: its per-table row once per slot
            idx = s.index
            index = idx.add(make_const(f"{key}/lpo_slots", np.array(slot_tables, np.int32), device))
            read = _gather(s, f"{key}/lpo_per_slot", key, read, index.name, types_pb2.DT_INT32, dtype, device)
        return read

    pv.scale_var = vc.scale_key
    pv.scale_read = add(vc.scale_key, pv.scale_dtype, vc.scale_shape, vc.axis == 1)
    if vc.offset_key:
        pv.offset_var = vc.offset_key
        pv.offset_read = add(vc.offset_key, pv.scale_dtype, vc.scale_shape, vc.axis == 1)
    if vc.base_key:
        pv.base_read = add(vc.base_key, types_pb2.DT_FLOAT, layout.base_shape(size), True)
    return pv


def _kept(s: Surgery) -> set[str]:
    """Nodes a signature output names (they keep their name)."""
    return {parse_input(info.name)[0] for sig in s.mg.signature_def.values() for info in sig.outputs.values()}


def _redirect(s: Surgery, lookup: str, split: str, k: int) -> None:
    """Point the readers of ``lookup`` at output ``k`` of ``split`` (control readers at ``split``); remove it."""
    idx = s.index
    node = idx.remove(lookup)
    if lookup in _kept(s):
        idx.add(make_node("Identity", lookup, [f"{split}:{k}"], device=node.device,
                          T=dtype_attr(types_pb2.DT_FLOAT)))
        return
    _rewire(s, lookup, f"{split}:{k}", "^" + split)


def _rewire(s: Surgery, old: str, data: str | None, control: str | None) -> None:
    """Point data inputs from ``old`` at ``data`` and control inputs at ``control`` (None: drop them)."""
    idx = s.index
    users = {u.consumer for u in idx.uses[old]} if old in idx.uses else set()
    users |= set(idx.control_uses[old]) if old in idx.control_uses else set()
    for name in sorted(users):
        c = idx.node(name)
        inputs = []
        for inp in c.input:
            src, _port, ctrl = parse_input(inp)
            if src != old:
                inputs.append(inp)
            elif ctrl:
                if control is not None and control not in inputs:
                    inputs.append(control)
            elif data is not None:
                inputs.append(data)
        del c.input[:]
        c.input.extend(inputs)
        idx.replace(c)


def _remove_variable(s: Surgery, var: str) -> None:
    """Remove member table ``var``: its node, reads, initializer (and what only it read) and VariableDef.

    The saver's ops on it go when the saver is rebuilt; control inputs on the removed ops are dropped.
    """
    idx = s.index
    todo = []
    for c in list(idx.consumers(var)):
        if s.is_saver_node(c.name) or any(not s.is_saver_node(r.name) for r in idx.consumers(c.name)):
            continue
        _rewire(s, c.name, None, None)
        todo.extend(parse_input(i)[0] for i in idx.remove(c.name).input[1:])
    _rewire(s, var, None, None)
    idx.remove(var)
    while todo:
        name = todo.pop()
        if name in idx and idx.node(name).op in INIT_VALUE_OPS and not idx.consumers(name) \
                and not idx.control_uses[name] and not s.is_saver_node(name):
            todo.extend(parse_input(i)[0] for i in idx.remove(name).input)
    s.vars.defs[:] = [vd for vd in s.vars.defs if vd.variable_name.split(":")[0] != var]
    for col in s.mg.collection_def.values():
        if col.HasField("bytes_list"):
            keep = [b for b in col.bytes_list.value if _variable_name(b) != var]
            if len(keep) != len(col.bytes_list.value):
                del col.bytes_list.value[:]
                col.bytes_list.value.extend(keep)


def _variable_name(raw: bytes) -> str | None:
    try:
        return variable_pb2.VariableDef.FromString(raw).variable_name.split(":")[0]
    except Exception:  # noqa: BLE001 - another proto in a bytes collection
        return None


register(KIND, find=_no_candidates, describe=describe, plan=_plan, rewrite=rewrite, label="embedding group")
