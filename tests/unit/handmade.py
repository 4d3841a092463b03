"""Tiny MetaGraphDefs built node by node (the graph_transforms way) and a TF1 session to run them.

Pass unit tests build the few nodes a pattern needs, run find -> plan -> rewrite on the
protos, and, where the rewrite is numerically checkable, run the rewritten graph with
hand-made variable values converted exactly as the checkpoint converter does.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2, variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from lpo.core.graph import dtype_attr, make_const, make_node, shape_proto
from lpo.core.savedmodel import VARIABLES_COLLECTION

F32 = types_pb2.DT_FLOAT
I32 = types_pb2.DT_INT32
I64 = types_pb2.DT_INT64
TYPE_ATTRS = {"T", "dtype", "Tindices", "Tparams", "Taxis", "Tshape", "Tidx", "SrcT", "DstT", "out_type",
              "Tsegmentids", "Tnumsegments", "out_idx"}


class HandGraph:
    """A MetaGraphDef with a ``variables`` collection, built one node at a time."""

    def __init__(self):
        self.mg = meta_graph_pb2.MetaGraphDef()
        self.values: dict[str, np.ndarray] = {}

    def add(self, node) -> str:
        """Append NodeDef ``node``; return its name."""
        self.mg.graph_def.node.add().CopyFrom(node)
        return node.name

    def op(self, op: str, name: str, inputs=(), **attrs) -> str:
        """Append a node built by :func:`lpo.core.graph.make_node`; return its name.

        Type attrs (``T``, ``dtype``, ``Tindices``...) may be given as DataType enums (ints).
        """
        for k, v in attrs.items():
            if k in TYPE_ATTRS and isinstance(v, int):
                attrs[k] = dtype_attr(v)
        return self.add(make_node(op, name, inputs, **attrs))

    def const(self, name: str, value) -> str:
        """Append a Const node; return its name."""
        return self.add(make_const(name, np.asarray(value)))

    def placeholder(self, name: str, shape=(-1, 4), dtype: int = F32) -> str:
        """Append a Placeholder (``-1`` = unknown dimension); return its name."""
        return self.op("Placeholder", name, dtype=dtype_attr(dtype), shape=shape_proto(shape))

    def variable(self, name: str, value, *, resource: bool = True, slice_of: tuple | None = None) -> str:
        """Append a float32 variable initialized to ``value`` with its initializer; return its read.

        ``slice_of=(full_name, full_shape, offset)`` makes it one part of a partitioned variable.
        """
        value = np.asarray(value, np.float32)
        self.values[name] = value
        f32, shape = dtype_attr(F32), shape_proto(value.shape)
        init = self.add(make_const(f"{name}/Initializer/value", value))
        vd = variable_pb2.VariableDef(variable_name=f"{name}:0", initial_value_name=f"{init}:0",
                                      initializer_name=f"{name}/Assign", trainable=True, is_resource=resource)
        if resource:
            self.op("VarHandleOp", name, dtype=f32, shape=shape, shared_name=name, container="")
            self.op("AssignVariableOp", f"{name}/Assign", [name, init], dtype=f32)
            self.op("VarIsInitializedOp", f"{name}/IsInitialized/VarIsInitializedOp", [name])
            read = self.op("ReadVariableOp", f"{name}/Read/ReadVariableOp", [name], dtype=f32)
        else:
            self.op("VariableV2", name, dtype=f32, shape=shape, shared_name="", container="")
            self.op("Assign", f"{name}/Assign", [name, init], T=f32, validate_shape=True, use_locking=True)
            read = self.op("Identity", f"{name}/read", [name], T=f32)
        vd.snapshot_name = f"{read}:0"
        if slice_of is not None:
            full_name, full_shape, offset = slice_of
            si = vd.save_slice_info_def
            si.full_name = full_name
            si.full_shape.extend(full_shape)
            si.var_offset.extend(offset)
            si.var_shape.extend(value.shape)
        self.mg.collection_def[VARIABLES_COLLECTION].bytes_list.value.append(vd.SerializeToString())
        return read


def run(mg: meta_graph_pb2.MetaGraphDef, fetches, feeds: dict, values: dict[str, np.ndarray]):
    """Run ``fetches`` (tensor or node names) of ``mg`` in a fresh TF1 session.

    Each variable is set by running its initializer with the value fed (``values``: variable
    node -> array in the variable's dtype), then the main op runs (load-time caches).
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(mg.graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        for node in mg.graph_def.node:
            if node.op in ("AssignVariableOp", "Assign") and node.input[0] in values:
                sess.run(graph.get_operation_by_name(node.name), {_tensor(node.input[1]): values[node.input[0]]})
        for key in ("saved_model_main_op", "legacy_init_op"):
            for main in mg.collection_def[key].node_list.value if key in mg.collection_def else ():
                sess.run(graph.get_operation_by_name(main.split(":")[0]))
        fetches = _tensor(fetches) if isinstance(fetches, str) else [_tensor(f) for f in fetches]
        return sess.run(fetches, {_tensor(k): v for k, v in feeds.items()})


def _tensor(name: str) -> str:
    return name if ":" in name else name + ":0"
