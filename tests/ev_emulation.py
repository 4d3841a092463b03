"""Run a DeepRec-style SavedModel on stock TensorFlow by emulating its Kv ops (tests only).

Stock TensorFlow has no DeepRec ops, so the tests cannot serve an EV model. This
harness rewrites a copy of the graph so that it runs here, with each EV emulated by a
resource variable indexed by key (valid because the sample checkpoints use small
non-negative keys):

* ``KvVarHandleOp`` -> ``VarHandleOp`` (same dtype, unknown shape);
* ``KvResourceGather(ev, ids, default)`` -> ``ResourceGather(ev, ids)`` (every fed id exists);
* ``KvResourceImportV2/V3`` -> ``RestoreV2(<name>-keys, <name>-values)`` ->
  ``ScatterNd`` (row ``key`` = its values) -> ``AssignVariableOp`` (the restore reads the
  tensors by the name the saver gives it, so a wrong name or dtype fails here);
* ``InitializeKvVariableOp`` -> ``NoOp``, ``KvVarIsInitializedOp`` -> ``VarIsInitializedOp``;
* the save ops are dropped (they are never run).

Everything else (the lookups' casts and rescales, the ordinary tables, the dense layers,
the restore of ordinary variables and the main op) runs as written.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2, tensor_shape_pb2

from lpo.core.graph import const_value, dtype_attr, make_const, make_node, parse_input
from lpo.core.savedmodel import read_saved_model, select_meta_graph

_IMPORT_NAMES = {"KvResourceImportV2": 4, "KvResourceImportV3": 2}


def _type(node, name):
    return node.attr[name].type


def emulate_graph(mg) -> graph_pb2.GraphDef:
    """Return a GraphDef stock TensorFlow runs (see the module docstring)."""
    nodes = {n.name: n for n in mg.graph_def.node}
    save_ops = {n.name for n in mg.graph_def.node if n.op in ("SaveV2", "SaveV3")}
    dropped = set(save_ops)
    changed = True
    while changed:  # nodes that depend on a save op (save/control_dependency)
        changed = False
        for n in mg.graph_def.node:
            if n.name not in dropped and any(parse_input(i)[0] in dropped for i in n.input):
                dropped.add(n.name)
                changed = True
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(mg.graph_def.versions)
    out.library.CopyFrom(mg.graph_def.library)
    for n in mg.graph_def.node:
        if n.name in dropped:
            continue
        ctrl = [i for i in n.input if i.startswith("^")]
        if n.op == "KvVarHandleOp":
            out.node.append(make_node("VarHandleOp", n.name, dtype=n.attr["dtype"], container="",
                                      shared_name=n.name, shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)))
        elif n.op == "InitializeKvVariableOp":
            out.node.append(make_node("NoOp", n.name, ctrl))
        elif n.op == "KvVarIsInitializedOp":
            out.node.append(make_node("VarIsInitializedOp", n.name, [n.input[0]]))
        elif n.op == "KvResourceGather":
            out.node.append(make_node("ResourceGather", n.name, [n.input[0], n.input[1]] + ctrl,
                                      dtype=n.attr["dtype"], Tindices=n.attr["Tkeys"], batch_dims=0,
                                      validate_indices=True))
        elif n.op in _IMPORT_NAMES:
            name = np.asarray(const_value(nodes[parse_input(n.input[_IMPORT_NAMES[n.op]])[0]])).reshape(-1)[0]
            name = name.decode() if isinstance(name, bytes) else str(name)
            base, dt, kt = n.name + "/emu", n.attr["dtype"], n.attr["Tkeys"]
            out.node.append(make_const(f"{base}/names", np.array([f"{name}-keys".encode(),
                                                                   f"{name}-values".encode()], dtype=object)))
            out.node.append(make_const(f"{base}/slices", np.array([b"", b""], dtype=object)))
            r = make_node("RestoreV2", f"{base}/restore", [n.input[0], f"{base}/names", f"{base}/slices"])
            r.attr["dtypes"].list.type.extend([kt.type, dt.type])
            out.node.append(r)
            out.node.append(make_const(f"{base}/minus_one", np.array(-1, np.int32)))
            out.node.append(make_node("ExpandDims", f"{base}/indices", [f"{base}/restore", f"{base}/minus_one"],
                                      T=kt, Tdim=dtype_attr(tf.int32.as_datatype_enum)))
            out.node.append(make_const(f"{base}/axis0", np.array(0, np.int32)))
            out.node.append(make_node("Max", f"{base}/max", [f"{base}/restore", f"{base}/axis0"], T=kt,
                                      Tidx=dtype_attr(tf.int32.as_datatype_enum), keep_dims=False))
            one = np.array(1, np.int64 if kt.type == tf.int64.as_datatype_enum else np.int32)
            out.node.append(make_const(f"{base}/one", one))
            out.node.append(make_node("AddV2", f"{base}/rows", [f"{base}/max", f"{base}/one"], T=kt))
            dim = n.attr["shape"].shape.dim[0].size
            out.node.append(make_const(f"{base}/dim", np.array(dim, one.dtype)))
            out.node.append(make_node("Pack", f"{base}/shape", [f"{base}/rows", f"{base}/dim"], T=kt, N=2, axis=0))
            out.node.append(make_node("ScatterNd", f"{base}/table", [f"{base}/indices", f"{base}/restore:1",
                                                                    f"{base}/shape"], T=dt, Tindices=kt))
            out.node.append(make_node("AssignVariableOp", n.name, [n.input[1], f"{base}/table"] + ctrl, dtype=dt))
        else:
            c = node_def_pb2.NodeDef()
            c.CopyFrom(n)
            out.node.append(c)
    return out


class EmulatedModel:
    """A DeepRec-style SavedModel loaded with emulated Kv ops; ``run(feeds)`` returns its outputs."""

    def __init__(self, path: str, prefix: str | None = None, signature: str = "serving_default"):
        import os

        sm = read_saved_model(path)
        mg = select_meta_graph(sm)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(emulate_graph(mg), name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        prefix = prefix or os.path.join(path, "variables", "variables")
        self.session.run(mg.saver_def.restore_op_name, {mg.saver_def.filename_tensor_name: prefix})
        for key in ("saved_model_main_op", "legacy_init_op"):
            col = mg.collection_def.get(key)
            if col is not None and col.node_list.value:
                self.session.run(col.node_list.value[0])
        sig = mg.signature_def[signature]
        self.inputs = {k: v.name for k, v in sig.inputs.items()}
        self.outputs = {k: v.name for k, v in sig.outputs.items()}

    def run(self, feeds: dict) -> dict:
        names = sorted(self.outputs)
        vals = self.session.run([self.outputs[n] for n in names], {self.inputs[k]: v for k, v in feeds.items()})
        return dict(zip(names, vals))

    def close(self):
        self.session.close()


def run_emulated(path: str, feeds: dict, prefix: str | None = None) -> dict:
    """Load ``path`` with emulated Kv ops, run the serving signature once, close."""
    m = EmulatedModel(path, prefix)
    try:
        return m.run(feeds)
    finally:
        m.close()
