"""DeepRec models: EmbeddingVariables (EVs) in the graph, the saver and the checkpoint.

Stock TensorFlow has none of DeepRec's ``Kv*`` ops and cannot even import a graph
that uses them. lpo never needs to: everything here reads and edits protobufs, and
the checkpoint tensors of an EV are ordinary tensor-bundle entries.

What lpo relies on, read from DeepRec's own sources (repository DeepRec-AI/DeepRec):

* ``tensorflow/core/ops/kv_variable_ops.cc`` (commit 04e65dd0): ``KvVarHandleOp`` (attrs
  container, shared_name, dtype, shape = [embedding dim], Tkeys);
  ``InitializeKvVariableOp(resource_self, resource_primary, value, empty_key)``;
  ``KvVarIsInitializedOp``; ``KvResourceGather(resource, indices, default_value)``
  (attrs is_use_default_value_tensor, validate_indices, dtype, Tkeys, is_inference);
  ``KvResourceImportV2(prefix, resource_self, resource_primary, value, tensor_names,
  empty_key)`` and ``KvResourceImportV3(prefix, resource_self, tensor_names, empty_key)``.
* ``tensorflow/python/training/saving/saveable_object_util.py`` (EmbeddingVariableSaveable,
  commit 02521de1) and ``tensorflow/python/training/saver.py`` (commit 0031ce92): an EV is
  saved under its name (the handle's node name) as ``<name>-keys``, ``-values``,
  ``-versions``, ``-freqs``, ``-partition_offset``, plus the ``_filtered`` variants
  (``tensorflow/core/framework/embedding/embedding_var_ckpt_data.cc``); the ``SaveV2`` op
  takes the EV handle itself as a tensor (``has_ev=True``) and the restore is a
  ``KvResourceImportV2``/``V3`` op reading those tensors by name. A partitioned EV is one
  EV per part (``<full name>/part_<i>``) whose save_slice_info gives the partition id
  (``var_offset[0]``) and count (``full_shape[0]``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import graph_pb2, op_def_pb2

from lpo.core.graph import GraphIndex, const_value, make_const, parse_input, shape_of

EV_HANDLE = "KvVarHandleOp"
EV_GATHER = "KvResourceGather"
EV_INIT = "InitializeKvVariableOp"
EV_IS_INIT = "KvVarIsInitializedOp"
EV_IMPORTS = ("KvResourceImportV2", "KvResourceImportV3")
EV_LOOKUP_RESOURCE = "KvResourceLookupResource"
#: ops that save or restore EVs (scopes that hold them are saver scopes)
EV_SAVER_OPS = EV_IMPORTS + ("SaveV3",)
#: the checkpoint tensors of one EV, ``<name><suffix>``, in DeepRec's write order
EV_SUFFIXES = ("-keys", "-values", "-versions", "-freqs", "-keys_filtered", "-versions_filtered",
               "-freqs_filtered", "-partition_offset", "-partition_filter_offset")
_TENSOR_NAMES_INPUT = {"KvResourceImportV2": 4, "KvResourceImportV3": 2}
_VALUE_INPUT = {"KvResourceImportV2": 3}
_SAVE_DATA_OFFSET = {"SaveV2": 3, "SaveV3": 5}


@dataclass
class EvSpec:
    """One EmbeddingVariable (one part of a partitioned EV) of a graph.

    ``name`` prefixes its checkpoint tensors (``name + '-values'``, ...); ``full_name``
    is the EV it is a part of (itself when not partitioned).
    """

    node: str
    name: str
    dim: int
    dtype: str
    key_dtype: str
    full_name: str
    partition: int = 0
    partitions: int = 1
    device: str = ""


def _dtype_name(enum: int) -> str:
    import tensorflow as tf

    return tf.dtypes.as_dtype(enum).name


def ev_specs(mg, index: GraphIndex | None = None) -> dict[str, EvSpec]:
    """Map each EV handle node of the MetaGraph's ``variables`` collection to its EvSpec."""
    from lpo.core.savedmodel import variable_defs

    index = index or GraphIndex(mg.graph_def)
    saved_as = {}  # handle -> the name its restore reads (DeepRec: the handle's node name)
    for imp in index.by_op(*EV_IMPORTS):
        names = const_value(index.input_node(imp, _TENSOR_NAMES_INPUT[imp.op]))
        if names is not None and np.asarray(names).size == 1:
            name = np.asarray(names).reshape(-1)[0]
            saved_as[parse_input(imp.input[1])[0]] = name.decode() if isinstance(name, bytes) else str(name)
    out: dict[str, EvSpec] = {}
    for vd in variable_defs(mg):
        node_name = vd.variable_name.split(":")[0]
        if node_name not in index or index.node(node_name).op != EV_HANDLE:
            continue
        node = index.node(node_name)
        shape = shape_of(node) or []
        full, part, parts = node_name, 0, 1
        if vd.HasField("save_slice_info_def"):
            si = vd.save_slice_info_def
            full = si.full_name or node_name
            part = int(si.var_offset[0]) if si.var_offset else 0
            parts = int(si.full_shape[0]) if si.full_shape else 1
        out[node_name] = EvSpec(node_name, saved_as.get(node_name, node_name),
                                int(shape[0]) if len(shape) == 1 else -1, _dtype_name(node.attr["dtype"].type),
                                _dtype_name(node.attr["Tkeys"].type), full, part, parts, node.device)
    return out


def ev_var_specs(mg, index: GraphIndex | None = None) -> list:
    """The EVs of ``mg`` as checkpoint targets: VarSpecs of kind ``"ev"`` keyed by EV name."""
    from lpo.core.savedmodel import VarSpec

    return [VarSpec(e.node, e.name, "", [-1, e.dim], e.dtype, True, [-1, e.dim], kind="ev")
            for e in ev_specs(mg, index).values()]


def ev_tensor_names(name: str) -> list[str]:
    """Return every checkpoint tensor name DeepRec may write for EV ``name``."""
    return [name + s for s in EV_SUFFIXES]


# --------------------------------------------------------------------------- op definitions
def ops_used(graph_def: graph_pb2.GraphDef) -> set[str]:
    """Return the op names a GraphDef (and its function library) uses."""
    used = {n.op for n in graph_def.node}
    for f in graph_def.library.function:
        used.update(n.op for n in f.node_def)
    return used - {f.signature.name for f in graph_def.library.function}


@functools.lru_cache(maxsize=64)
def _registered(names: frozenset) -> dict:
    import tensorflow as tf

    gd = graph_pb2.GraphDef()
    for i, op in enumerate(sorted(names)):
        gd.node.add(name=f"n{i}", op=op)
    # export_meta_graph lists the OpDef of every op this TensorFlow registers (public API)
    mg = tf.compat.v1.train.export_meta_graph(graph_def=gd, graph=tf.Graph())
    return {o.name: o.SerializeToString(deterministic=True) for o in mg.meta_info_def.stripped_op_list.op}


def registered_op_defs(names) -> dict[str, op_def_pb2.OpDef]:
    """Return the OpDefs this TensorFlow registers for ``names`` (unknown names are absent)."""
    out = {}
    for name, raw in _registered(frozenset(names)).items():
        op = op_def_pb2.OpDef()
        op.ParseFromString(raw)
        out[name] = op
    return out


def unknown_ops(graph_def: graph_pb2.GraphDef) -> list[str]:
    """Return the ops of ``graph_def`` this TensorFlow build cannot run, sorted."""
    used = ops_used(graph_def)
    return sorted(used - set(_registered(frozenset(used))))


def check_runnable(mg, model_path: str, why: str, hint: str = "") -> None:
    """Raise UnsupportedOpsError naming the ops of ``mg`` this TensorFlow lacks.

    ``why`` says what needs to run the model (``"lpo validate runs both models"``);
    ``hint`` what to do instead.
    """
    ops = unknown_ops(mg.graph_def)
    if not ops:
        return
    import tensorflow as tf

    from lpo.errors import UnsupportedOpsError

    deeprec = any(op.startswith("Kv") or op in EV_SAVER_OPS for op in ops)
    what = " (DeepRec EmbeddingVariable ops)" if deeprec else ""
    where = "DeepRec's TensorFlow" if deeprec else "a TensorFlow build that has them"
    hint = hint or ("lpo inspect, optimize, convert-ckpt and refresh do not run the model and work here"
                    if deeprec else "")
    raise UnsupportedOpsError(
        f"{model_path} uses ops this TensorFlow {tf.__version__} does not have: {', '.join(ops)}{what}. "
        f"{why}, so it needs {where}" + (f". {hint}" if hint else ""), ops)


def merged_op_list(graph_def: graph_pb2.GraphDef, source: op_def_pb2.OpList) -> op_def_pb2.OpList:
    """The stripped_op_list of ``graph_def``: the producer's own OpDef for every op the
    source list has (DeepRec's, for models DeepRec wrote), this TensorFlow's for new ops."""
    used = ops_used(graph_def)
    src = {o.name: o for o in source.op}
    stock = registered_op_defs(sorted(used - set(src)))
    out = op_def_pb2.OpList()
    for name in sorted(used):
        if name in src:
            out.op.add().CopyFrom(src[name])
        elif name in stock:
            out.op.add().CopyFrom(stock[name])
    return out


def check_nodes(graph_def: graph_pb2.GraphDef, op_list: op_def_pb2.OpList) -> list[str]:
    """Check every node against its OpDef: data input count, required and unknown attrs.

    Returns the problems found (empty when every node is well formed). Used on graphs
    stock TensorFlow cannot import, so that an edit lpo makes is still checked.
    """
    defs = {o.name: o for o in op_list.op}
    names = {n.name for n in graph_def.node}
    problems = []
    for n in graph_def.node:
        for inp in n.input:
            src = parse_input(inp)[0]
            if src not in names:
                problems.append(f"{n.name}: input {inp!r} is not a node")
        op = defs.get(n.op)
        if op is None:
            problems.append(f"{n.name}: no OpDef for op {n.op}")
            continue
        want = 0
        for arg in op.input_arg:
            if arg.number_attr:
                want += n.attr[arg.number_attr].i if arg.number_attr in n.attr else -10**6
            elif arg.type_list_attr:
                want += len(n.attr[arg.type_list_attr].list.type) if arg.type_list_attr in n.attr else -10**6
            else:
                want += 1
        got = sum(1 for i in n.input if not i.startswith("^"))
        if got != want:
            problems.append(f"{n.name} ({n.op}): {got} data inputs, its OpDef needs {want}")
        declared = {a.name for a in op.attr}
        for a in op.attr:
            if a.name not in n.attr and not a.HasField("default_value"):
                problems.append(f"{n.name} ({n.op}): attr {a.name!r} is missing")
            elif a.type == "type" and a.allowed_values.list.type and a.name in n.attr \
                    and n.attr[a.name].type not in a.allowed_values.list.type:
                problems.append(f"{n.name} ({n.op}): attr {a.name}={_dtype_name(n.attr[a.name].type)} "
                                "is not allowed")
        for key in n.attr:
            if key not in declared and not key.startswith("_"):
                problems.append(f"{n.name} ({n.op}): attr {key!r} is not in its OpDef")
    return problems


# --------------------------------------------------------------------------- the saver
def _rename_strings(idx: GraphIndex, node, index: int, renames: dict[str, str]) -> bool:
    """Rename entries of the string Const at data input ``index`` of ``node``; clone it if shared."""
    src = idx.input_node(node, index)
    value = const_value(src)
    if value is None or value.dtype.kind not in "OSU":
        return False
    flat = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).reshape(-1)]
    if not any(v in renames for v in flat):
        return False
    new = np.array([renames.get(v, v).encode() for v in flat], dtype=object).reshape(np.shape(value))
    if len(idx.consumers(src.name)) == 1:
        repl = make_const(src.name, new, device=src.device)
        for key, attr in src.attr.items():  # keep _class and friends
            if key not in repl.attr:
                repl.attr[key].CopyFrom(attr)
        idx.replace(repl)
    else:
        clone = idx.add(make_const(idx.unique_name(src.name + "/lpo_renamed"), new, device=src.device))
        idx.set_input(node.name, index, clone.name)
    return True


def saver_reads(idx: GraphIndex, in_saver, handle: str) -> list:
    """Return the saver nodes that read EV ``handle`` (directly or through a KvResourceLookupResource)."""
    return [c for c in idx.consumers(handle) if in_saver(c.name)]


def saver_form_problem(idx: GraphIndex, in_saver, handle: str) -> str | None:
    """Why the saver's handling of EV ``handle`` is not one lpo can rewrite (None when it is)."""
    for c in saver_reads(idx, in_saver, handle):
        if c.op not in EV_IMPORTS + ("SaveV2", "SaveV3", EV_LOOKUP_RESOURCE):
            return f"saver node {c.name} ({c.op}) reads it"
    return None


def rename_ev_in_saver(idx: GraphIndex, in_saver, old: str, new: str, dtype: int,
                       init_value: str | None) -> None:
    """Make the saver save and restore EV ``new`` (values ``dtype``) where it handled EV ``old``.

    Mirrors what DeepRec's Saver emits for the new EV: the save op takes the new handle
    under the new name, the ``KvResourceImport*`` restore reads ``<new>-*`` into the new
    handle with the new dtype (and, for V2, the new EV's initial value ``init_value``).
    """
    renames = {old: new, **{old + s: new + s for s in EV_SUFFIXES}}
    for c in saver_reads(idx, in_saver, old):
        for i, inp in enumerate(list(c.input)):
            src, port, ctrl = parse_input(inp)
            if src != old:
                continue
            c.input[i] = ("^" + new) if ctrl else (new if port == 0 else f"{new}:{port}")
            if c.op in _SAVE_DATA_OFFSET and not ctrl:
                k = i - _SAVE_DATA_OFFSET[c.op]
                _rename_entry(idx, c, 1, k, old, new)
        if c.op in EV_IMPORTS:
            c.attr["dtype"].type = dtype
            if c.op in _VALUE_INPUT:
                if init_value is None:
                    raise ValueError("KvResourceImportV2 needs the new EV's initial value")
                c.input[_VALUE_INPUT[c.op]] = init_value
            idx.replace(c)
            _rename_strings(idx, idx.node(c.name), _TENSOR_NAMES_INPUT[c.op], renames)
        else:
            if c.op == EV_LOOKUP_RESOURCE:
                c.attr["dtype"].type = dtype
            idx.replace(c)
    for save in idx.by_op("SaveV3"):  # EVs by name: ev_names (input 3)
        if in_saver(save.name):
            _rename_strings(idx, save, 3, {old: new})


def _rename_entry(idx: GraphIndex, node, names_input: int, k: int, old: str, new: str) -> None:
    """Rename entry ``k`` of the tensor_names Const of a save op when it is ``old``."""
    src = idx.input_node(node, names_input)
    value = const_value(src)
    if value is None:
        return
    flat = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).reshape(-1)]
    if 0 <= k < len(flat) and flat[k] == old:
        _rename_strings(idx, node, names_input, {old: new})


__all__ = ["EV_HANDLE", "EV_GATHER", "EV_INIT", "EV_IS_INIT", "EV_IMPORTS", "EV_SUFFIXES", "EvSpec", "ev_specs",
           "ev_var_specs", "ev_tensor_names", "unknown_ops", "check_runnable", "merged_op_list", "check_nodes",
           "registered_op_defs", "rename_ev_in_saver", "saver_form_problem"]
