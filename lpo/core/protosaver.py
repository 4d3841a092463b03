"""Edit a TF1 V2 Saver in place, protobuf only, for graphs TensorFlow cannot import.

lpo normally lets TensorFlow rebuild the Saver (``savedmodel.rebuild_saver``). A DeepRec
model uses ops stock TensorFlow lacks, so its saver is edited instead, keeping
everything DeepRec's Saver wrote (EV entries, global_step, sharding) as it was:

* a retyped variable gets the new dtype in its ``SaveV2``/``RestoreV2`` entry and in the
  saver's reads and assigns of it;
* a new variable (an INT8 scale) gets a ``SaveV2`` entry plus its own
  ``RestoreV2 -> Assign`` (or ``Identity -> AssignVariableOp``) under the restore op;
* savers other than the MetaGraph's ``saver_def`` are removed, as TensorFlow's
  ``export_meta_graph(clear_extraneous_savers=True)`` does.

The result is checked node by node against the op definitions (``deeprec.check_nodes``)
and the saver's dtypes against the variables it reads and assigns.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from lpo.core.deeprec import EV_IMPORTS, check_nodes, merged_op_list
from lpo.core.graph import GraphIndex, const_value, dtype_attr, make_const, make_node, parse_input
from lpo.core.savedmodel import VarSpec, saver_scopes, variable_specs
from lpo.errors import InternalError, ModelFormatError

_SAVE_OPS = {"SaveV2": 3, "SaveV3": 5}
_DT_ATTR = {"Identity": "T", "ReadVariableOp": "dtype", "Assign": "T", "AssignVariableOp": "dtype",
            "Reshape": "T", "VariableV2": "dtype", "VarHandleOp": "dtype"}


def _strings(node) -> list[str]:
    value = const_value(node)
    if value is None:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).reshape(-1)]


def _set_strings(idx: GraphIndex, node, input_index: int, values: list[str]) -> None:
    """Point data input ``input_index`` of ``node`` at a 1-D string Const holding ``values``."""
    src = idx.input_node(node, input_index)
    arr = np.array([v.encode() for v in values], dtype=object)
    if len(idx.consumers(src.name)) == 1:
        repl = make_const(src.name, arr, device=src.device)
        idx.replace(repl)
    else:
        clone = idx.add(make_const(idx.unique_name(src.name + "/lpo"), arr, device=src.device))
        idx.set_input(node.name, input_index, clone.name)


def _insert_data_input(node, tensor: str) -> None:
    """Append a data input before the control inputs."""
    inputs = list(node.input)
    pos = next((i for i, x in enumerate(inputs) if x.startswith("^")), len(inputs))
    inputs.insert(pos, tensor)
    del node.input[:]
    node.input.extend(inputs)


class _Saver:
    """The saver of a MetaGraph (the one its saver_def names), as entries by checkpoint key."""

    def __init__(self, mg: meta_graph_pb2.MetaGraphDef, idx: GraphIndex):
        if not mg.HasField("saver_def") or not mg.saver_def.restore_op_name:
            raise ModelFormatError("the model has no saver (saver_def); lpo can only edit the saver of a graph "
                                   "TensorFlow cannot import. Re-export it with a tf.train.Saver")
        self.mg, self.idx = mg, idx
        self.restore_op = mg.saver_def.restore_op_name.split(":")[0]
        self.scope = self.restore_op.rsplit("/", 1)[0] if "/" in self.restore_op else ""
        self.prefix = self.scope + "/" if self.scope else ""

    def in_scope(self, name: str) -> bool:
        return bool(self.prefix) and name.startswith(self.prefix)

    def ops(self, *types: str) -> list:
        return [n for n in self.idx.by_op(*types) if self.in_scope(n.name)]

    def save_entry(self, key: str, spec: str):
        for save in self.ops(*_SAVE_OPS):
            names = _strings(self.idx.input_node(save, 1))
            slices = _strings(self.idx.input_node(save, 2))
            for k, (n, s) in enumerate(zip(names, slices)):
                if n == key and s == spec:
                    return save, k
        return None, -1

    def restore_entry(self, key: str, spec: str):
        for r in self.ops("RestoreV2"):
            names = _strings(self.idx.input_node(r, 1))
            slices = _strings(self.idx.input_node(r, 2))
            for j, (n, s) in enumerate(zip(names, slices)):
                if n == key and s == spec:
                    return r, j
        return None, -1

    def filename(self) -> str:
        for r in self.ops("RestoreV2", *EV_IMPORTS):
            return r.input[0]
        return self.mg.saver_def.filename_tensor_name.split(":")[0]


def _retype_chain(idx: GraphIndex, saver: _Saver, tensor: str, dtype: int, forward: bool) -> None:
    """Set the dtype of the saver's Identity/Read/Reshape/Assign nodes along ``tensor``."""
    if forward:
        node_name, port = parse_input(tensor)[:2]
        for u in list(idx.uses.get(node_name, [])):
            if u.port != port or not saver.in_scope(u.consumer):
                continue
            c = idx.node(u.consumer)
            attr = _DT_ATTR.get(c.op)
            if attr and attr in c.attr:
                c.attr[attr].type = dtype
            if c.op in ("Identity", "Reshape"):
                _retype_chain(idx, saver, c.name, dtype, True)
        return
    node = idx.node(parse_input(tensor)[0])
    while saver.in_scope(node.name) and node.op in ("Identity", "ReadVariableOp"):
        node.attr[_DT_ATTR[node.op]].type = dtype
        node = idx.input_node(node, 0)


def _retype(idx: GraphIndex, saver: _Saver, spec: VarSpec, dtype: int) -> None:
    save, k = saver.save_entry(spec.key, spec.slice)
    if save is None:
        raise InternalError(f"the saver does not save variable {spec.key!r}; lpo cannot retype it")
    save.attr["dtypes"].list.type[k] = dtype
    _retype_chain(idx, saver, save.input[_SAVE_OPS[save.op] + k], dtype, False)
    r, j = saver.restore_entry(spec.key, spec.slice)
    if r is None:
        raise InternalError(f"the saver does not restore variable {spec.key!r}; lpo cannot retype it")
    r.attr["dtypes"].list.type[j] = dtype
    _retype_chain(idx, saver, f"{r.name}:{j}" if j else r.name, dtype, True)


def _add(idx: GraphIndex, saver: _Saver, spec: VarSpec, dtype: int) -> None:
    saves = sorted(saver.ops(*_SAVE_OPS), key=lambda n: n.name)
    if not saves:
        raise InternalError("the model's saver has no SaveV2 op; lpo cannot add variables to it")
    save = saves[0]
    var = idx.node(spec.node)
    dt = dtype_attr(dtype)
    tensor = spec.node
    if spec.resource:
        read = idx.add(make_node("ReadVariableOp", idx.unique_name(f"{saver.prefix}Read_lpo/ReadVariableOp"),
                                 [spec.node], device=var.device, dtype=dt))
        tensor = read.name
    _set_strings(idx, save, 1, _strings(idx.input_node(save, 1)) + [spec.key])
    _set_strings(idx, save, 2, _strings(idx.input_node(save, 2)) + [spec.slice])
    save = idx.node(save.name)
    _insert_data_input(save, tensor)
    save.attr["dtypes"].list.type.append(dtype)
    idx.replace(save)

    existing = saver.ops("RestoreV2")
    device = existing[0].device if existing else "/device:CPU:0"
    base = idx.unique_name(f"{saver.prefix}RestoreV2_lpo")
    names = idx.add(make_const(f"{base}/tensor_names", np.array([spec.key.encode()], dtype=object), device))
    slices = idx.add(make_const(f"{base}/shape_and_slices", np.array([spec.slice.encode()], dtype=object),
                                device))
    restore = make_node("RestoreV2", base, [saver.filename(), names.name, slices.name], device=device)
    restore.attr["dtypes"].list.type.append(dtype)
    idx.add(restore)
    if spec.resource:
        ident = idx.add(make_node("Identity", idx.unique_name(f"{saver.prefix}Identity_lpo"), [base],
                                  device=var.device, T=dt))
        assign = idx.add(make_node("AssignVariableOp", idx.unique_name(f"{saver.prefix}AssignVariableOp_lpo"),
                                   [spec.node, ident.name], device=var.device, dtype=dt))
    else:
        assign = idx.add(make_node("Assign", idx.unique_name(f"{saver.prefix}Assign_lpo"), [spec.node, base],
                                   device=var.device, T=dt, use_locking=True, validate_shape=True))
    group = idx.node(saver.restore_op)
    group.input.append("^" + assign.name)
    idx.replace(group)


def _drop_extraneous_savers(idx: GraphIndex, mg, saver: _Saver) -> None:
    others = tuple(s + "/" for s in saver_scopes(mg) if s != saver.scope)
    if not others:
        return
    doomed = {n for n in idx.nodes if n.startswith(others)}
    for name in sorted(idx.nodes):
        if name in doomed:
            continue
        for inp in idx.node(name).input:
            if parse_input(inp)[0] in doomed:
                raise ModelFormatError(f"node {name} reads {inp} of an extra saver; lpo cannot remove that saver")
    for name in sorted(doomed):
        idx.remove(name)


def _check_dtypes(idx: GraphIndex, saver: _Saver) -> list[str]:
    """The saver's save/restore dtypes against the variables and reads they touch."""
    problems = []
    for save in saver.ops(*_SAVE_OPS):
        off = _SAVE_OPS[save.op]
        types = list(save.attr["dtypes"].list.type)
        data = [i for i in save.input if not i.startswith("^")][off:]
        for k, t in enumerate(data):
            src = idx.node(parse_input(t)[0])
            attr = _DT_ATTR.get(src.op)
            if src.op == "VarHandleOp" or attr is None or attr not in src.attr:
                continue
            if k < len(types) and src.attr[attr].type != types[k]:
                problems.append(f"{save.name}: entry {k} is {types[k]} but {src.name} is {src.attr[attr].type}")
    for r in saver.ops("RestoreV2"):
        types = list(r.attr["dtypes"].list.type)
        for u in idx.uses.get(r.name, []):
            c = idx.node(u.consumer)
            attr = _DT_ATTR.get(c.op)
            if attr and attr in c.attr and u.port < len(types) and c.attr[attr].type != types[u.port]:
                problems.append(f"{c.name}: {attr} {c.attr[attr].type}, {r.name}:{u.port} is {types[u.port]}")
            if c.op == "Assign":
                var = idx.input_node(c, 0)
                if var.op == "VariableV2" and var.attr["dtype"].type != c.attr["T"].type:
                    problems.append(f"{c.name} assigns {c.attr['T'].type} to {var.name} ({var.attr['dtype'].type})")
    return problems


def patch_saver(mg: meta_graph_pb2.MetaGraphDef, source: meta_graph_pb2.MetaGraphDef | None) -> \
        meta_graph_pb2.MetaGraphDef:
    """Return ``mg`` with its saver edited for the variables that differ from ``source``'s."""
    idx = GraphIndex(mg.graph_def)
    saver = _Saver(mg, idx)
    _drop_extraneous_savers(idx, mg, saver)
    before = variable_specs(source) if source is not None else {}
    after = variable_specs(mg, idx)
    for node in before:
        if node not in after:
            raise InternalError(f"lpo removed variable {node}; it cannot edit the saver for that")
    import tensorflow as tf

    for node, spec in after.items():
        dtype = tf.dtypes.as_dtype(spec.dtype).as_datatype_enum
        old = before.get(node)
        if old is None:
            _add(idx, saver, spec, dtype)
        elif old.dtype != spec.dtype:
            _retype(idx, saver, spec, dtype)
    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(mg)
    out.graph_def.CopyFrom(idx.to_graph_def())
    out.collection_def.pop("savers", None)
    ops = merged_op_list(out.graph_def, (source or mg).meta_info_def.stripped_op_list)
    out.meta_info_def.stripped_op_list.CopyFrom(ops)
    check_idx = GraphIndex(out.graph_def)
    problems = check_nodes(out.graph_def, ops) + _check_dtypes(check_idx, _Saver(out, check_idx))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InternalError("lpo produced an invalid graph: " + "; ".join(problems[:5]) + more +
                            ". Please report this bug with the --debug traceback")
    return out


__all__ = ["patch_saver"]
