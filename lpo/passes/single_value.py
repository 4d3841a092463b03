"""Single-value feature columns: one id per row needs no SparseTensor plumbing.

``feature_column.input_layer`` turns each ``embedding_column(categorical_column_with_hash_bucket)``
into ``to_sparse_input`` (``NotEqual`` ignore value -> ``Where`` -> ``GatherNd``) ->
``StringToHashBucketFast`` -> ``safe_embedding_lookup_sparse`` (``SparseReshape``, prune ids < 0,
``SparseFillEmptyRows``, ``Unique`` -> gather -> ``SparseSegment{Mean,Sum,SqrtN}``, or the fast path
``SparseSegment*`` on the table read) -> ``Select(empty row, ZerosLike, .)`` -> two ``Reshape`` s to
``[B, D]``: about 60 nodes per column, a few dozen of them run per call.

Where the serving signature proves one value per row (a ``Placeholder`` of static shape
``[B]`` or ``[B, 1]`` that a signature feeds) and the chain is exactly that, the column becomes::

    ids  = StringToHashBucketFast(x)                 # x, or Squeeze(x, [1]) for [B, 1]; AsString first
                                                      # for an integer input (hash_bucket(dtype=int64))
    rows = ResourceGather(table, ids)                 # or GatherV2(read(table), ids, 0)
    out  = SelectV2(NotEqual(x2, ignore), rows, 0.0)  # x2: the [B, 1] input, the column's own NotEqual

under the name of the chain's last node, so its consumers are untouched. Exact: each row has
at most one id, so the segment mean/sum/sqrtn of a row is that id's row itself (divided by 1);
an ignored (empty) value gives the chain's empty-row result, zeros; ids are hashed into
``[0, buckets)`` as before, and the table has at least ``buckets`` rows, so an ignored value's
gathered row exists (and is discarded). The gather is the form the embedding pass matches, so
every data type then stores the table as usual. Weighted columns, ``max_norm``, partitioned
tables, ``default_id``, other inputs and any deviation from the chain are left alone; the
now-unread nodes of a fused chain are removed.

:func:`fuse_hashing` (exact, not registered: measured slower, see there) then hashes the fused
columns that one ``ConcatV2`` reads with one ``Fingerprint`` over the stacked values and a
per-column ``FloorMod``.
"""
from __future__ import annotations

import itertools

import numpy as np
from tensorflow.core.framework import attr_value_pb2, types_pb2

from lpo.core.graph import (
    READ_OPS, GraphMatcher, OpTypePattern, const_value, dtype_attr, make_const, make_node, parse_input, shape_of,
)
from lpo.passes.registry import register_structural
from lpo.passes.surgery import Surgery

NAME = "single_value"
COMBINERS = {"SparseSegmentMean": "mean", "SparseSegmentSum": "sum", "SparseSegmentSqrtN": "sqrtn"}
#: the pass's shared constant (float32 0.0: the empty-row result) lives under this name
ZERO = "lpo_single_value/zero"
#: ops kept however unread: inputs and variables
_KEEP_OPS = ("Placeholder", "PlaceholderWithDefault", "VarHandleOp", "VariableV2", "Variable")

#: integer inputs of a hashed column (``categorical_column_with_hash_bucket(dtype=int...)``: AsString first)
_INTEGERS = (types_pb2.DT_INT64, types_pb2.DT_INT32)

_labels = itertools.count()


def _same(label: str) -> str:
    """A fresh capture label for one more occurrence of ``label`` (``accept`` checks they are one node)."""
    return f"{label}#{next(_labels)}"


def _value(node, want) -> bool:
    value = const_value(node)
    return value is not None and value.shape == np.shape(want) and bool(np.all(value == want))


def _const(want=None, label: str = "", test=None) -> OpTypePattern:
    """A Const (holding ``want``, or passing ``test`` on its value)."""
    if test is not None:
        return OpTypePattern("Const", label, where=lambda n: const_value(n) is not None and test(const_value(n)))
    return OpTypePattern("Const", label, where=None if want is None else (lambda n: _value(n, want)))


def _attrs(**want):
    return lambda n: all(n.attr[k].i == v for k, v in want.items())


def _dense() -> OpTypePattern:
    """The column's ``[B, 1]`` input: ``ExpandDims(x, -1)`` of a ``[B]`` placeholder, or the placeholder."""
    return OpTypePattern("ExpandDims", _same("expand"), optional=True, inputs=(
        OpTypePattern("Placeholder", _same("input")),
        _const(test=lambda v: v.size == 1 and int(v.reshape(-1)[0]) in (-1, 1))))


def _present() -> OpTypePattern:
    """``Where(NotEqual(x2, ignore))``: the positions of the values kept."""
    return OpTypePattern("Where", _same("indices"), inputs=(
        OpTypePattern("NotEqual", _same("present"), inputs=(_dense(), OpTypePattern("Cast", optional=True, inputs=(
            _const(),)))),))


def _hashed_ids() -> OpTypePattern:
    """The hashed values, through the ``SparseReshape`` 's Identity."""
    gathered = OpTypePattern("GatherNd", _same("values"), inputs=(_dense(), _present()))
    strings = OpTypePattern("AsString", _same("as_string"), optional=True, inputs=(gathered,))  # integer values
    return OpTypePattern("Identity", _same("reshaped_values"), optional=True, inputs=(
        OpTypePattern("StringToHashBucketFast", _same("hash"), inputs=(strings,)),))


def _reshaped(port: int) -> OpTypePattern:
    """``SparseReshape(indices, Shape(x2), new shape)`` output ``port`` (to the same ``[B, 1]``)."""
    return OpTypePattern("SparseReshape", _same("sparse_reshape"), port=port, inputs=(
        _present(), OpTypePattern("Shape", _same("dense_shape"), inputs=(_dense(),))))


def _kept() -> OpTypePattern:
    """``_prune_invalid_ids``: the positions of ids >= 0 (every hashed id)."""
    return OpTypePattern("Reshape", _same("kept"), inputs=(
        OpTypePattern("Where", inputs=(OpTypePattern("GreaterEqual", inputs=(
            _hashed_ids(), _const(test=lambda v: v.size == 1 and v.reshape(-1)[0] <= 0))),)),
        _const([-1])))


def _axis0(*inputs) -> OpTypePattern:
    return OpTypePattern("GatherV2", inputs=inputs + (_const(0),), where=_attrs(batch_dims=0))


def _filled(port: int) -> OpTypePattern:
    """``SparseFillEmptyRows`` output ``port``: the ids with an entry (id default) in every empty row."""
    return OpTypePattern("SparseFillEmptyRows", _same("fill"), port=port, inputs=(
        _axis0(_reshaped(0), _kept()),
        _axis0(_hashed_ids(), _kept()),
        OpTypePattern("Identity", inputs=(_reshaped(1),)),
        _const(test=lambda v: v.size == 1)))


def _segment_ids() -> OpTypePattern:
    """``indices[:, 0]`` of the filled ids: the row of each id."""
    return OpTypePattern("StridedSlice", inputs=(
        _filled(0), _const([0, 0]), _const([0, 1]), _const([1, 1])),
        where=_attrs(begin_mask=1, end_mask=1, shrink_axis_mask=2, ellipsis_mask=0, new_axis_mask=0))


_VAR = OpTypePattern("VarHandleOp|VariableV2", "table")
_READ = OpTypePattern(READ_OPS, "read", inputs=(_VAR,))


def _segments() -> tuple[OpTypePattern, OpTypePattern, OpTypePattern]:
    """The three ways the rows are combined: ResourceGather, GatherV2 after ``Unique``, the fast path."""
    def unique(port):
        return OpTypePattern("Unique", _same("unique"), port=port, inputs=(_filled(1),))

    lookup_resource = OpTypePattern("ResourceGather", "lookup", inputs=(_VAR, unique(0)), where=_attrs(batch_dims=0))
    lookup_gather = _axis0(_READ, unique(0))
    lookup_gather = OpTypePattern("GatherV2", "lookup", inputs=lookup_gather.inputs, where=lookup_gather.where)
    forms = []
    for lookup in (lookup_resource, lookup_gather):
        rows = OpTypePattern("Identity", optional=True, inputs=(lookup,))
        forms.append(OpTypePattern(tuple(COMBINERS), _same("segment"), inputs=(rows, unique(1), _segment_ids())))
    forms.append(OpTypePattern(tuple(COMBINERS), _same("segment"), inputs=(_READ, _filled(1), _segment_ids())))
    return tuple(forms)


def _selected(segment: OpTypePattern) -> OpTypePattern:
    """``Select(is_row_empty tiled, ZerosLike(result), result)``: zeros for empty rows."""
    empty = OpTypePattern("Tile", inputs=(OpTypePattern("Reshape", inputs=(_filled(2), _const([-1, 1]))),))
    zeros = OpTypePattern("ZerosLike", inputs=(OpTypePattern(segment.op, _same("segment")),))
    return OpTypePattern("Select|SelectV2", "select", inputs=(empty, zeros, segment))


def _to_rows(inner: OpTypePattern) -> OpTypePattern:
    """``Reshape(select, concat(dense_shape[:1], shape(select)[1:]))``: to ``[B, D]``, as it already is."""
    batch = OpTypePattern("Slice", inputs=(
        OpTypePattern("Cast", inputs=(OpTypePattern("Shape", _same("dense_shape"), inputs=(_dense(),)),)),
        _const([0]), _const([1])))
    dim = OpTypePattern("Slice", inputs=(OpTypePattern("Shape", inputs=(OpTypePattern("*", _same("select")),)),
                                         _const([1]), _const([-1])))
    return OpTypePattern("Reshape", "to_rows", inputs=(inner, OpTypePattern("ConcatV2", inputs=(
        batch, dim, _const(0)), where=_attrs(N=2))))


def _to_batch(inner: OpTypePattern) -> OpTypePattern:
    """input_layer's ``Reshape(x, [shape(x)[0], D])``: again ``[B, D]``."""
    first = OpTypePattern("StridedSlice", inputs=(
        OpTypePattern("Shape", inputs=(OpTypePattern("Reshape", _same("to_rows")),)),
        _const([0]), _const([1]), _const([1])), where=_attrs(shrink_axis_mask=1, ellipsis_mask=0, new_axis_mask=0))
    return OpTypePattern("Reshape", "to_batch", inputs=(inner, OpTypePattern("Pack", inputs=(
        first, _const(label="dim")), where=_attrs(N=2, axis=0))))


def patterns() -> list[OpTypePattern]:
    """The column chain, longest first: with both reshapes, with the first, the ``Select`` alone."""
    out = []
    for wrap in (lambda p: _to_batch(_to_rows(p)), _to_rows, lambda p: p):
        for segment in _segments():
            out.append(wrap(_selected(segment)))
    return out


def _groups(m: dict) -> dict[str, set]:
    groups: dict[str, set] = {}
    for label, node in m.items():
        groups.setdefault(label.split("#")[0], set()).add(node.name)
    return groups


def _one(m: dict, base: str):
    """The node captured under ``base`` (or one of its ``base#k`` labels)."""
    return m[next(k for k in m if k.split("#")[0] == base)]


def _signature_inputs(mg) -> set[str]:
    return {parse_input(t.name)[0] for sig in mg.signature_def.values() for t in sig.inputs.values() if t.name}


def _accept(signature_inputs: set[str]):
    """``accept`` of the matcher: the structure the pattern cannot say."""

    def accept(m: dict) -> bool:
        if any(len(names) != 1 for names in _groups(m).values()):  # every repeated label is one node
            return False
        x, table = _one(m, "input"), m["table"]
        dims, shape = shape_of(x), shape_of(table)
        want = _INTEGERS if "as_string" in _groups(m) else (types_pb2.DT_STRING,)
        if x.name not in signature_inputs or x.attr["dtype"].type not in want or dims is None:
            return False  # one value per row: a fed [B] (expanded to [B, 1]) or [B, 1]
        if dims != ([dims[0]] if "expand" in _groups(m) else [dims[0], 1]):
            return False
        if table.attr["dtype"].type != types_pb2.DT_FLOAT or shape is None or len(shape) != 2 or \
                shape[0] < _one(m, "hash").attr["num_buckets"].i:  # an ignored value's bucket must be a row too
            return False
        return "dim" not in m or _value(m["dim"], shape[1])

    return accept


def _prune(s: Surgery, start: list[str], keep: set[str]) -> int:
    """Remove the nodes from ``start`` up their inputs that nothing reads any more; return how many."""
    idx, removed = s.index, 0
    todo = list(start)
    while todo:
        name = todo.pop()
        if name not in idx or name in keep or idx.consumers(name) or idx.control_uses[name]:
            continue
        node = idx.node(name)
        if node.op in _KEEP_OPS or s.is_saver_node(name):
            continue
        idx.remove(name)
        removed += 1
        todo.extend(parse_input(inp)[0] for inp in node.input)
    return removed


def _referenced(mg) -> set[str]:
    """Nodes a signature, a collection or a VariableDef names: never pruned."""
    from lpo.core.savedmodel import variable_defs

    names = {parse_input(t.name)[0] for sig in mg.signature_def.values()
             for t in list(sig.inputs.values()) + list(sig.outputs.values()) if t.name}
    for col in mg.collection_def.values():
        names.update(parse_input(v)[0] for v in col.node_list.value)
    for vd in variable_defs(mg):
        for t in (vd.variable_name, vd.initializer_name, vd.snapshot_name, vd.initial_value_name):
            if t:
                names.add(parse_input(t)[0])
    return names


def _rewrite(s: Surgery, m: dict, keep: set[str]) -> dict:
    """Replace the matched chain by hash -> gather -> SelectV2 under the name of its last node."""
    idx = s.index
    root = m.get("to_batch") or m.get("to_rows") or m["select"]
    x, present, hash_node = _one(m, "input"), _one(m, "present"), _one(m, "hash")
    segment, table = _one(m, "segment"), m["table"]
    device = root.device
    ids_src = x.name
    if "expand" not in _groups(m):  # [B, 1]: the ids of a [B] vector (Squeeze fails on more values)
        ids_src = idx.add(make_node("Squeeze", idx.unique_name(root.name + "/lpo_values"), [x.name], device=device,
                                    T=dtype_attr(x.attr["dtype"].type), squeeze_dims=_ints([1]))).name
    if "as_string" in _groups(m):  # integer values: formatted as the chain formats them, then hashed
        fmt = make_node("AsString", idx.unique_name(root.name + "/lpo_as_string"), [ids_src], device=device)
        fmt.attr.MergeFrom(_one(m, "as_string").attr)
        ids_src = idx.add(fmt).name
    ids = make_node("StringToHashBucketFast", idx.unique_name(root.name + "/lpo_hash"), [ids_src], device=device)
    ids.attr["num_buckets"].CopyFrom(hash_node.attr["num_buckets"])
    idx.add(ids)
    gather_name = idx.unique_name(root.name + "/lpo_lookup")
    if "read" not in m:  # the chain gathered from the resource handle: so does the fused lookup
        gather = make_node("ResourceGather", gather_name, [table.name, ids.name], device=device,
                           dtype=dtype_attr(types_pb2.DT_FLOAT), Tindices=dtype_attr(types_pb2.DT_INT64),
                           batch_dims=0, validate_indices=True)
    else:
        axis = idx.add(make_const(idx.unique_name(gather_name + "/axis"), np.array(0, np.int32), device=device))
        gather = make_node("GatherV2", gather_name, [m["read"].name, ids.name, axis.name], device=device,
                           Tparams=dtype_attr(types_pb2.DT_FLOAT), Tindices=dtype_attr(types_pb2.DT_INT64),
                           Taxis=dtype_attr(types_pb2.DT_INT32), batch_dims=0)
    idx.add(gather)
    if ZERO not in idx:
        idx.add(make_const(ZERO, np.array(0.0, np.float32)))
    old = idx.remove(root.name)
    controls = [i for i in old.input if i.startswith("^")]
    idx.add(make_node("SelectV2", root.name, [present.name, gather.name, ZERO] + controls, device=device,
                      T=dtype_attr(types_pb2.DT_FLOAT)))
    removed = _prune(s, [parse_input(i)[0] for i in old.input], keep)
    return {"node": root.name, "input": x.name, "table": table.name, "combiner": COMBINERS[segment.op],
            "buckets": int(hash_node.attr["num_buckets"].i), "lookup": gather.name, "removed_nodes": removed + 1}


def _ints(values) -> attr_value_pb2.AttrValue:
    a = attr_value_pb2.AttrValue()
    a.list.i.extend(values)
    return a


def fuse_single_value_lookups(s: Surgery, signature_inputs: set[str] | None = None) -> list[dict]:
    """Rewrite every provably single-value feature-column lookup of ``s`` (see the module doc).

    ``signature_inputs``: the placeholders a serving signature feeds (default: every signature's
    inputs of ``s.mg``). Returns one entry per fused column: its output ``node``, ``input``,
    ``table``, ``combiner``, ``buckets``, the new ``lookup`` node and the ``removed_nodes``.
    """
    if signature_inputs is None:
        signature_inputs = _signature_inputs(s.mg)
    matches = GraphMatcher(s.index, *patterns()).match_all("select", _accept(signature_inputs))
    keep = _referenced(s.mg)
    return [_rewrite(s, m, keep) for m in matches]


register_structural(NAME, fuse_single_value_lookups, title="Fuse single-value lookup")


# --- fused hashing across columns -------------------------------------------------------------
#: Not registered: exact, but measured slower than a hash per column (batch 512, 26 columns, AMD Zen 3,
#: one thread: 0.83x of FP32 against 0.74x): stacking the strings costs more (Pack, Reshape, Unpack)
#: than the 25 ops it saves. Register it (``register_structural(HASH_NAME, fuse_hashing, title=...)``) to use it.
HASH_NAME = "fused_hash"
_SV_HASH = OpTypePattern("StringToHashBucketFast", "hash", inputs=(
    OpTypePattern("Squeeze", "squeeze", optional=True, inputs=(OpTypePattern("Placeholder", "input"),),
                  where=lambda n: list(n.attr["squeeze_dims"].list.i) == [1]),))
#: a fused column, as :func:`fuse_single_value_lookups` writes it
FUSED_COLUMN = OpTypePattern("SelectV2", "column", inputs=(
    OpTypePattern("NotEqual", "present", inputs=(_dense(), _const(np.array(b""), "ignore"))),
    OpTypePattern("ResourceGather|GatherV2", "lookup", inputs=(OpTypePattern("*"), _SV_HASH)),
    OpTypePattern("Const", where=lambda n: n.name == ZERO)))


def _concat_groups(s: Surgery, columns: dict[str, dict]) -> list[list[dict]]:
    """The fused columns read together by one ``ConcatV2(..., axis 1)``, in its input order (2 or more)."""
    groups, seen = [], set()
    for m in columns.values():
        for c in s.index.consumers(m["column"].name):
            if c.op != "ConcatV2" or c.name in seen:
                continue
            axis = const_value(s.index.input_node(c, len(c.input) - 1))
            if axis is None or int(axis) not in (1, -1):
                continue
            seen.add(c.name)
            data = [i for i in c.input[:-1] if not i.startswith("^")]
            group = [columns[i] for i in data if i in columns]
            if len({m["column"].name for m in group}) >= 2:
                groups.append(list({m["column"].name: m for m in group}.values()))
    return groups


def fuse_hashing(s: Surgery) -> list[dict]:
    """Hash the fused string columns that one ``ConcatV2`` reads with one fingerprint over the stacked values.

    ``StringToHashBucketFast(v, n)`` is ``Fingerprint64(v) % n`` (uint64). So, for the values
    ``v_t`` (``[B]``) of T columns: ``Pack(v_t, axis 1)`` -> ``Fingerprint`` (farmhash64: per
    string, 8 little-endian bytes) -> ``Bitcast`` uint64 -> ``FloorMod`` by each column's own
    ``n_t`` -> ``Cast`` int64 -> ``Unpack`` gives each column its ids, bit for bit (exact on
    little-endian hosts, every lpo target). The ignore masks become one ``NotEqual`` over the
    stack. A batch-size mismatch between the columns fails here in ``Pack`` where the original
    fails in the ``ConcatV2`` that reads them. Returns one entry per group: its ``node`` (the
    ConcatV2), ``columns`` (the inputs) and ``buckets``.
    """
    idx = s.index
    one_input = lambda m: len(_groups(m)["input"]) == 1  # noqa: E731  (the mask's and the ids' input)
    columns = {m["column"].name: m for m in GraphMatcher(idx, FUSED_COLUMN).match_all("column", one_input)}
    keep = _referenced(s.mg)
    out = []
    for group in _concat_groups(s, columns):
        concat = next(c for c in idx.consumers(group[0]["column"].name) if c.op == "ConcatV2")
        out.append(_fuse_group(s, concat.name, group, keep))
    return out


def _fuse_group(s: Surgery, concat: str, group: list[dict], keep: set[str]) -> dict:
    idx = s.index
    base = idx.unique_name(concat + "/lpo_hash")
    t = len(group)
    str_t, u64, i32 = dtype_attr(types_pb2.DT_STRING), dtype_attr(types_pb2.DT_UINT64), dtype_attr(types_pb2.DT_INT32)

    def add(op, name, inputs, **attrs):
        return idx.add(make_node(op, f"{base}/{name}", inputs, **attrs)).name

    def const(name, value):
        return idx.add(make_const(f"{base}/{name}", value)).name

    values = [m["hash"].input[0] for m in group]
    stacked = add("Pack", "values", values, T=str_t, N=t, axis=1)
    flat = add("Reshape", "flat", [stacked, const("flat/shape", np.array([-1], np.int32))], T=str_t, Tshape=i32)
    fingerprint = add("Fingerprint", "fingerprint", [flat, const("method", np.array(b"farmhash64"))], T=str_t)
    as_u64 = add("Bitcast", "uint64", [fingerprint], T=dtype_attr(types_pb2.DT_UINT8), type=u64)
    table = add("Reshape", "by_column", [as_u64, const("by_column/shape", np.array([-1, t], np.int32))], T=u64,
                Tshape=i32)
    buckets = [int(m["hash"].attr["num_buckets"].i) for m in group]
    bucket = add("FloorMod", "bucket", [table, const("buckets", np.array(buckets, np.uint64))], T=u64)
    ids = add("Cast", "ids", [bucket], SrcT=u64, DstT=dtype_attr(types_pb2.DT_INT64), Truncate=False)
    split = add("Unpack", "split", [ids], T=dtype_attr(types_pb2.DT_INT64), num=t, axis=1)
    present = add("NotEqual", "present", [stacked, const("ignore", np.array(b""))], T=str_t,
                  incompatible_shape_error=True)
    present = add("ExpandDims", "present/expand", [present, const("present/axis", np.array(-1, np.int32))],
                  T=dtype_attr(types_pb2.DT_BOOL), Tdim=i32)
    masks = add("Unpack", "present/split", [present], T=dtype_attr(types_pb2.DT_BOOL), num=t, axis=1)
    old = []
    for i, m in enumerate(group):
        old += [m["hash"].name, m["present"].name]
        idx.set_input(m["lookup"].name, 1, f"{split}:{i}" if i else split)
        idx.set_input(m["column"].name, 0, f"{masks}:{i}" if i else masks)
    _prune(s, old, keep)
    return {"node": concat, "columns": [m["input"].name for m in group], "buckets": buckets}

