"""A DeepRec-style SavedModel with EmbeddingVariables, built from protobufs alone.

Stock TensorFlow cannot build (or run) DeepRec's ``Kv*`` ops, so this module writes the
MetaGraphDef by hand from DeepRec's real op definitions and the graph layout DeepRec's
Python layer emits, and writes the checkpoint with ``SaveV2`` under DeepRec's tensor
names. Used by the tests and as a reference of what lpo expects from a DeepRec model.

Sources (repository DeepRec-AI/DeepRec): op definitions from
``tensorflow/core/ops/kv_variable_ops.cc`` (commit 04e65dd0) and ``SaveV2`` with
``has_ev`` from ``tensorflow/core/ops/io_ops.cc`` (commit 20a3e06f); the EV's nodes
(``<ev>``, ``<ev>/Initializer/...``, ``<ev>/IsInitialized/KvVarIsInitializedOp``,
``<ev>/Assign``) from ``tensorflow/python/ops/kv_variable_ops.py``
(``EmbeddingVariable._init_from_args``); the saver (``SaveV2(has_ev=True)`` taking the
EV handle under its name, ``KvResourceImportV2`` restores) from
``tensorflow/python/training/saver.py`` and ``saving/saveable_object_util.py``; the
checkpoint tensors (``-keys``, ``-values``, ``-versions``, ``-freqs``, ``-keys_filtered``,
``-versions_filtered``, ``-freqs_filtered``, ``-partition_offset``,
``-partition_filter_offset``) from ``core/framework/embedding/embedding_var_ckpt_data.cc``.

The model (tag ``serve``, signature ``serving_default``): inputs ``user`` (int64 ids,
``[None]``), ``item`` (int64 ids), ``cat`` (int32 ids) and ``dense`` (float32
``[None, 4]``); output ``prob`` (float32 ``[None, 1]``).

* ``user_emb``: an EV (dim 8, int64 keys) read by one ``KvResourceGather`` without a
  default value tensor;
* ``item_emb``: an EV in 2 parts (``item_emb/part_0``, ``/part_1``, ids split by
  ``FloorMod`` -> ``DynamicPartition`` -> one ``KvResourceGather`` per part with a default
  value tensor -> ``ParallelDynamicStitch``);
* ``cat_emb``: an ordinary resource table ``[50, 4]`` (``ResourceGather``);
* ``concat -> dense_0 (MatMul 24x16, BiasAdd, Relu) -> dense_1 (16x1, BiasAdd) -> Sigmoid``;
* ``global_step`` (int64 ref variable), saved first as DeepRec's EV saver does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import text_format
from tensorflow.core.framework import (attr_value_pb2, graph_pb2, node_def_pb2, op_def_pb2, tensor_shape_pb2,
                                       types_pb2, variable_pb2)
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2, saver_pb2

from lpo.core.graph import attr_value, make_node

#: DeepRec's OpDefs of the ops this model uses, transcribed from the sources above.
DEEPREC_OPS = """
op {
  name: "KvVarHandleOp"
  output_arg { name: "resource" type: DT_RESOURCE }
  attr { name: "container" type: "string" default_value { s: "" } }
  attr { name: "shared_name" type: "string" default_value { s: "" } }
  attr { name: "dtype" type: "type" }
  attr { name: "shape" type: "shape" }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  is_stateful: true
}
op {
  name: "InitializeKvVariableOp"
  input_arg { name: "resource_self" type: DT_RESOURCE }
  input_arg { name: "resource_primary" type: DT_RESOURCE }
  input_arg { name: "value" type_attr: "dtype" }
  input_arg { name: "empty_key" type_attr: "Tkeys" }
  attr { name: "slot_num" type: "int" default_value { i: 0 } }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  attr { name: "dtype" type: "type" }
  attr { name: "shape" type: "shape" }
  attr { name: "initial_num_buckets" type: "int" default_value { i: 131072 } }
  attr { name: "max_load_factor" type: "float" default_value { f: 0.8 } }
  attr { name: "steps_to_live" type: "int" default_value { i: 0 } }
  attr { name: "ht_type" type: "string" default_value { s: "" } }
  attr { name: "emb_index" type: "int" default_value { i: 0 } }
  attr { name: "block_num" type: "int" default_value { i: 1 } }
  attr { name: "slot_index" type: "int" default_value { i: 0 } }
  attr { name: "ht_partition_num" type: "int" default_value { i: 1000 } }
  attr { name: "filter_freq" type: "int" default_value { i: 0 } }
  attr { name: "max_freq" type: "int" default_value { i: 999999 } }
  attr { name: "max_element_size" type: "int" default_value { i: 0 } }
  attr { name: "counter_type" type: "type" }
  attr { name: "false_positive_probability" type: "float" default_value { f: -1.0 } }
  attr { name: "l2_weight_threshold" type: "float" default_value { f: -1.0 } }
  attr { name: "layout" type: "string" default_value { s: "" } }
  attr { name: "storage_type" type: "int" default_value { i: 0 } }
  attr { name: "storage_path" type: "string" default_value { s: "." } }
  attr { name: "storage_size" type: "list(int)" default_value { list { } } }
  attr { name: "default_value_dim" type: "int" default_value { i: 4096 } }
  attr { name: "default_value_no_permission" type: "float" default_value { f: 0.0 } }
  attr { name: "record_freq" type: "bool" default_value { b: false } }
  attr { name: "record_version" type: "bool" default_value { b: false } }
}
op {
  name: "KvVarIsInitializedOp"
  input_arg { name: "resource" type: DT_RESOURCE }
  output_arg { name: "is_initialized" type: DT_BOOL }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  attr { name: "dtype" type: "type" default_value { type: DT_FLOAT } }
}
op {
  name: "KvResourceGather"
  input_arg { name: "resource" type: DT_RESOURCE }
  input_arg { name: "indices" type_attr: "Tkeys" }
  input_arg { name: "default_value" type_attr: "dtype" }
  output_arg { name: "output" type_attr: "dtype" }
  attr { name: "is_use_default_value_tensor" type: "bool" default_value { b: false } }
  attr { name: "validate_indices" type: "bool" default_value { b: true } }
  attr { name: "dtype" type: "type" }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  attr { name: "is_inference" type: "bool" default_value { b: false } }
}
op {
  name: "KvResourceImportV2"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "resource_self" type: DT_RESOURCE }
  input_arg { name: "resource_primary" type: DT_RESOURCE }
  input_arg { name: "value" type_attr: "dtype" }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "empty_key" type_attr: "Tkeys" }
  attr { name: "slot_num" type: "int" default_value { i: 0 } }
  attr { name: "shape" type: "shape" }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  attr { name: "dtype" type: "type" }
  attr { name: "emb_index" type: "int" default_value { i: 0 } }
  attr { name: "slot_index" type: "int" default_value { i: 0 } }
  attr { name: "block_num" type: "int" default_value { i: 1 } }
  attr { name: "steps_to_live" type: "int" default_value { i: 0 } }
  attr { name: "partition_id" type: "int" default_value { i: 0 } }
  attr { name: "partition_num" type: "int" default_value { i: 1 } }
  attr { name: "ht_type" type: "string" default_value { s: "" } }
  attr { name: "filter_freq" type: "int" default_value { i: 0 } }
  attr { name: "ht_partition_num" type: "int" default_value { i: 1000 } }
  attr { name: "max_element_size" type: "int" default_value { i: 0 } }
  attr { name: "counter_type" type: "type" }
  attr { name: "false_positive_probability" type: "float" default_value { f: -1.0 } }
  attr { name: "l2_weight_threshold" type: "float" default_value { f: -1.0 } }
  attr { name: "layout" type: "string" default_value { s: "normal" } }
  attr { name: "max_freq" type: "int" default_value { i: 999999 } }
  attr { name: "storage_type" type: "int" default_value { i: 1 } }
  attr { name: "storage_path" type: "string" default_value { s: "." } }
  attr { name: "storage_size" type: "list(int)" default_value { list { } } }
  attr { name: "default_value_dim" type: "int" default_value { i: 4096 } }
  attr { name: "default_value_no_permission" type: "float" default_value { f: 0.0 } }
  attr { name: "record_freq" type: "bool" default_value { b: false } }
  attr { name: "record_version" type: "bool" default_value { b: false } }
  attr { name: "reset_version" type: "bool" default_value { b: false } }
}
op {
  name: "SaveV2"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "shape_and_slices" type: DT_STRING }
  input_arg { name: "tensors" type_list_attr: "dtypes" }
  attr { name: "dtypes" type: "list(type)" has_minimum: true minimum: 1 }
  attr { name: "has_ev" type: "bool" default_value { b: false } }
  is_stateful: true
}
"""

#: Attrs DeepRec's Python layer sets on InitializeKvVariableOp / KvResourceImportV2 for a plain EV.
_EV_ATTRS = {"slot_num": 0, "steps_to_live": 0, "ht_type": "", "emb_index": 0, "block_num": 1, "slot_index": 0,
             "ht_partition_num": 1000, "filter_freq": 0, "max_freq": 99999, "max_element_size": 0,
             "false_positive_probability": -1.0, "l2_weight_threshold": -1.0, "layout": "", "storage_type": 1,
             "storage_path": ".", "default_value_dim": 4096, "default_value_no_permission": 0.0,
             "record_freq": False, "record_version": False}
SAVED_PARTITIONS = 1000  # kSavedPartitionNum: -partition_offset has 1001 entries


def deeprec_op_list() -> op_def_pb2.OpList:
    """DeepRec's OpDefs for the Kv ops and its SaveV2 (with ``has_ev``)."""
    return text_format.Parse(DEEPREC_OPS, op_def_pb2.OpList())


def _type(t: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=t)


def _shape(dims) -> attr_value_pb2.AttrValue:
    if dims is None:
        return attr_value_pb2.AttrValue(shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True))
    return attr_value_pb2.AttrValue(shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in dims]))


def _types(ts) -> attr_value_pb2.AttrValue:
    a = attr_value_pb2.AttrValue()
    a.list.type.extend(ts)
    return a


class _Graph:
    """A GraphDef under construction."""

    def __init__(self):
        self.gd = graph_pb2.GraphDef()
        self.gd.versions.producer = 134

    def node(self, op: str, name: str, inputs=(), device: str = "", **attrs) -> str:
        self.gd.node.append(make_node(op, name, inputs, device, **attrs))
        return name

    def const(self, name: str, value, dtype=None) -> str:
        import tensorflow as tf

        t = tf.make_tensor_proto(np.asarray(value, dtype=dtype))
        n = node_def_pb2.NodeDef(op="Const", name=name)
        n.attr["dtype"].type = t.dtype
        n.attr["value"].tensor.CopyFrom(t)
        self.gd.node.append(n)
        return name


@dataclass
class EvModel:
    """A DeepRec-style SavedModel written by :func:`build_ev_model`."""

    path: str
    dim: int
    evs: dict = field(default_factory=dict)   # EV name -> (rows, partitions)
    feeds: dict = field(default_factory=dict)

    @property
    def variables_prefix(self) -> str:
        return os.path.join(self.path, "variables", "variables")


def _ev_nodes(g: _Graph, name: str, dim: int, key_t: int, device: str = "") -> tuple[str, str, str]:
    """Add an EV's handle, initializer, is-initialized and empty-key nodes; return (handle, init value, key)."""
    f32 = types_pb2.DT_FLOAT
    g.node("KvVarHandleOp", name, device=device, container="", shared_name=name, dtype=_type(f32),
           shape=_shape([dim]), Tkeys=_type(key_t))
    shape = g.const(f"{name}/Initializer/truncated_normal/shape", [4096, dim], np.int32)
    mean = g.const(f"{name}/Initializer/truncated_normal/mean", 0.0, np.float32)
    std = g.const(f"{name}/Initializer/truncated_normal/stddev", 0.05, np.float32)
    tn = g.node("TruncatedNormal", f"{name}/Initializer/truncated_normal/TruncatedNormal", [shape],
                T=_type(types_pb2.DT_INT32), dtype=_type(f32), seed=0, seed2=0)
    mul = g.node("Mul", f"{name}/Initializer/truncated_normal/mul", [tn, std], T=_type(f32))
    init_value = g.node("Add", f"{name}/Initializer/truncated_normal", [mul, mean], T=_type(f32))
    key = g.const(f"{name}/Const", -1, np.int64 if key_t == types_pb2.DT_INT64 else np.int32)
    g.node("KvVarIsInitializedOp", f"{name}/IsInitialized/KvVarIsInitializedOp", [name], device=device,
           Tkeys=_type(key_t), dtype=_type(f32))
    attrs = {k: attr_value(v) for k, v in _EV_ATTRS.items()}
    attrs["storage_size"] = attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue())
    g.node("InitializeKvVariableOp", f"{name}/Assign", [name, name, init_value, key], device=device,
           Tkeys=_type(key_t), dtype=_type(f32), shape=_shape([dim]), counter_type=_type(types_pb2.DT_UINT64),
           **attrs)
    return name, init_value, key


def _resource_var(g: _Graph, name: str, shape, init) -> str:
    f32 = types_pb2.DT_FLOAT
    g.node("VarHandleOp", name, container="", shared_name=name, dtype=_type(f32), shape=_shape(shape),
           allowed_devices=attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue()))
    value = g.const(f"{name}/Initializer/Const", np.full(shape, init, np.float32))
    g.node("AssignVariableOp", f"{name}/Assign", [name, value], dtype=_type(f32), validate_shape=False)
    g.node("ReadVariableOp", f"{name}/Read/ReadVariableOp", [name], dtype=_type(f32))
    g.node("VarIsInitializedOp", f"{name}/IsInitialized/VarIsInitializedOp", [name])
    return name


def _vardef(name: str, initializer: str, snapshot: str, initial: str, *, resource: bool,
            slice_info=None) -> bytes:
    vd = variable_pb2.VariableDef(variable_name=f"{name}:0", initializer_name=initializer,
                                  snapshot_name=f"{snapshot}:0", initial_value_name=f"{initial}:0",
                                  is_resource=resource, trainable=True)
    if slice_info is not None:
        full, full_shape, offset, shape = slice_info
        vd.save_slice_info_def.full_name = full
        vd.save_slice_info_def.full_shape.extend(full_shape)
        vd.save_slice_info_def.var_offset.extend(offset)
        vd.save_slice_info_def.var_shape.extend(shape)
    return vd.SerializeToString(deterministic=True)


def build_ev_graph(dim: int = 8, sharded: bool = False) -> meta_graph_pb2.MetaGraphDef:
    """Return the MetaGraphDef of the sample DeepRec model (see the module docstring).

    ``sharded`` builds the saver of ``tf.train.Saver(sharded=True)``: the SaveV2 writes a
    ``ShardedFilename`` merged by ``MergeV2Checkpoints``; restores are grouped under
    ``save/restore_shard``.
    """
    f32, i64, i32 = types_pb2.DT_FLOAT, types_pb2.DT_INT64, types_pb2.DT_INT32
    g = _Graph()
    g.node("Placeholder", "user", dtype=_type(i64), shape=_shape([-1]))
    g.node("Placeholder", "item", dtype=_type(i64), shape=_shape([-1]))
    g.node("Placeholder", "cat", dtype=_type(i32), shape=_shape([-1]))
    g.node("Placeholder", "dense", dtype=_type(f32), shape=_shape([-1, 4]))
    g.node("VariableV2", "global_step", dtype=_type(i64), shape=_shape([]), container="", shared_name="")
    g.const("global_step/Initializer/zeros", 0, np.int64)
    g.node("Assign", "global_step/Assign", ["global_step", "global_step/Initializer/zeros"], T=_type(i64),
           use_locking=True, validate_shape=True)
    g.node("Identity", "global_step/read", ["global_step"], T=_type(i64))

    # user_emb: one EV, lookup without a default value tensor
    evs = {"user_emb": (None, 1)}
    _, user_init, user_key = _ev_nodes(g, "user_emb", dim, i64)
    g.const("input_layer/user_embedding/Const", 0.0, np.float32)
    user = g.node("KvResourceGather", "input_layer/user_embedding/embedding_lookup",
                  ["user_emb", "user", "input_layer/user_embedding/Const"], dtype=_type(f32), Tkeys=_type(i64),
                  is_use_default_value_tensor=False, validate_indices=True, is_inference=True)

    # item_emb: 2 parts; ids by FloorMod -> DynamicPartition, one lookup per part with a default value tensor
    parts = ["item_emb/part_0", "item_emb/part_1"]
    evs["item_emb"] = (None, 2)
    part_nodes = [_ev_nodes(g, p, dim, i64) for p in parts]
    s = "input_layer/item_embedding/embedding_lookup"
    n = g.const(f"{s}/num_parts", 2, np.int64)
    fm = g.node("FloorMod", f"{s}/FloorMod", ["item", n], T=_type(i64))
    pid = g.node("Cast", f"{s}/Cast", [fm], SrcT=_type(i64), DstT=_type(i32), Truncate=False)
    g.node("DynamicPartition", f"{s}/DynamicPartition", ["item", pid], T=_type(i64), num_partitions=2)
    size = g.node("Size", f"{s}/Size", ["item"], T=_type(i64), out_type=_type(i32))
    zero = g.const(f"{s}/range/start", 0, np.int32)
    one = g.const(f"{s}/range/delta", 1, np.int32)
    rng = g.node("Range", f"{s}/range", [zero, size, one], Tidx=_type(i32))
    g.node("DynamicPartition", f"{s}/DynamicPartition_1", [rng, pid], T=_type(i32), num_partitions=2)
    default = g.const(f"{s}/default_value", np.full([dim], 0.01, np.float32))
    gathers = []
    for i, p in enumerate(parts):
        gathers.append(g.node("KvResourceGather", f"{s}/KvResourceGather" + ("" if i == 0 else f"_{i}"),
                              [p, f"{s}/DynamicPartition:{i}", default], dtype=_type(f32), Tkeys=_type(i64),
                              is_use_default_value_tensor=True, validate_indices=True, is_inference=True))
    item = g.node("ParallelDynamicStitch", s, [f"{s}/DynamicPartition_1", f"{s}/DynamicPartition_1:1", *gathers],
                  T=_type(f32), N=2)

    # cat_emb: an ordinary resource table
    _resource_var(g, "cat_emb", [50, 4], 0.1)
    g.const("input_layer/cat_embedding/axis", 0, np.int32)
    cat = g.node("ResourceGather", "input_layer/cat_embedding/embedding_lookup", ["cat_emb", "cat"],
                 dtype=_type(f32), Tindices=_type(i32), batch_dims=0, validate_indices=True)

    axis = g.const("concat/axis", 1, np.int32)
    x = g.node("ConcatV2", "concat", [user, item, cat, "dense", axis], T=_type(f32), N=4, Tidx=_type(i32))
    sizes = [(2 * dim + 8, 16), (16, 1)]
    for li, (k, m) in enumerate(sizes):
        _resource_var(g, f"dense_{li}/kernel", [k, m], 0.05)
        _resource_var(g, f"dense_{li}/bias", [m], 0.01)
        w = g.node("ReadVariableOp", f"dense_{li}/MatMul/ReadVariableOp", [f"dense_{li}/kernel"], dtype=_type(f32))
        mm = g.node("MatMul", f"dense_{li}/MatMul", [x, w], T=_type(f32), transpose_a=False, transpose_b=False)
        b = g.node("ReadVariableOp", f"dense_{li}/BiasAdd/ReadVariableOp", [f"dense_{li}/bias"], dtype=_type(f32))
        x = g.node("BiasAdd", f"dense_{li}/BiasAdd", [mm, b], T=_type(f32), data_format="NHWC")
        if li == 0:
            x = g.node("Relu", f"dense_{li}/Relu", [x], T=_type(f32))
    g.node("Sigmoid", "prob", [x], T=_type(f32))

    ev_handles = [("user_emb", user_init, user_key, 0, 1)] + [
        (p, init, key, i, 2) for i, (p, init, key) in enumerate(part_nodes)]
    resource_vars = ["cat_emb", "dense_0/bias", "dense_0/kernel", "dense_1/bias", "dense_1/kernel"]
    g.node("NoOp", "init", ["^global_step/Assign"] + [f"^{v}/Assign" for v in resource_vars] +
           [f"^{h}/Assign" for h, *_ in ev_handles])
    save_tensor = _saver(g, resource_vars, ev_handles, dim, sharded)

    mg = meta_graph_pb2.MetaGraphDef()
    mg.graph_def.CopyFrom(g.gd)
    mg.meta_info_def.tags.append("serve")
    mg.meta_info_def.tensorflow_version = "1.15.5+deeprec2310"
    mg.meta_info_def.tensorflow_git_version = "unknown"
    from lpo.core.deeprec import merged_op_list

    mg.meta_info_def.stripped_op_list.CopyFrom(merged_op_list(g.gd, deeprec_op_list()))
    mg.saver_def.CopyFrom(saver_pb2.SaverDef(filename_tensor_name="save/Const:0",
                                             save_tensor_name=save_tensor + ":0",
                                             restore_op_name="save/restore_all", max_to_keep=5, sharded=sharded,
                                             keep_checkpoint_every_n_hours=10000.0,
                                             version=saver_pb2.SaverDef.V2))
    variables = [_vardef("global_step", "global_step/Assign", "global_step/read", "global_step/Initializer/zeros",
                         resource=False)]
    variables += [_vardef(v, f"{v}/Assign", f"{v}/Read/ReadVariableOp", f"{v}/Initializer/Const", resource=True)
                  for v in resource_vars]
    evdefs = [_vardef(h, f"{h}/Assign", h, init, resource=True,
                      slice_info=("item_emb", [2, dim], [i, 0], [1, dim]) if parts_n > 1 else None)
              for h, init, _key, i, parts_n in ev_handles]
    mg.collection_def["variables"].bytes_list.value.extend(variables + evdefs)
    mg.collection_def["trainable_variables"].bytes_list.value.extend(variables[1:] + evdefs)
    mg.collection_def["embedding_variables"].bytes_list.value.extend(evdefs)
    sig = mg.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    for name, dt, shape in (("user", i64, [-1]), ("item", i64, [-1]), ("cat", i32, [-1]), ("dense", f32, [-1, 4])):
        info = sig.inputs[name]
        info.name, info.dtype = f"{name}:0", dt
        info.tensor_shape.CopyFrom(_shape(shape).shape)
    sig.outputs["prob"].name, sig.outputs["prob"].dtype = "prob:0", f32
    sig.outputs["prob"].tensor_shape.CopyFrom(_shape([-1, 1]).shape)
    return mg


def _saver(g: _Graph, resource_vars: list[str], evs, dim: int, sharded: bool = False) -> str:
    """DeepRec's V2 saver: one SaveV2 (has_ev) with global_step first and EV handles by name;
    a bulk RestoreV2 for ordinary variables and one KvResourceImportV2 per EV. Returns the
    save tensor's node."""
    f32, i64, res = types_pb2.DT_FLOAT, types_pb2.DT_INT64, types_pb2.DT_RESOURCE
    fn = g.const("save/filename/input", b"model")
    g.node("PlaceholderWithDefault", "save/filename", [fn], dtype=_type(types_pb2.DT_STRING), shape=_shape([]))
    g.node("PlaceholderWithDefault", "save/Const", ["save/filename"], dtype=_type(types_pb2.DT_STRING),
           shape=_shape([]))
    names, tensors, dtypes = ["global_step"], ["global_step"], [i64]
    for k, v in enumerate(resource_vars):
        sfx = "" if k == 0 else f"_{k}"
        r = g.node("ReadVariableOp", f"save/Read{sfx}/ReadVariableOp", [v], dtype=_type(f32))
        tensors.append(g.node("Identity", f"save/Identity{sfx}", [r], device="/device:CPU:0", T=_type(f32)))
        names.append(v)
        dtypes.append(f32)
    for h, *_ in evs:
        names.append(h)
        tensors.append(h)
        dtypes.append(res)
    g.const("save/SaveV2/tensor_names", np.array([n.encode() for n in names], dtype=object))
    g.const("save/SaveV2/shape_and_slices", np.array([b""] * len(names), dtype=object))
    prefix, string = "save/Const", _type(types_pb2.DT_STRING)
    if sharded:
        suffix = g.const("save/StringJoin/inputs_1", b"_temp_0123/part")
        g.node("StringJoin", "save/StringJoin", ["save/Const", suffix], N=2, separator="")
        shards = g.const("save/num_shards", 1, np.int32)
        shard = g.const("save/ShardedFilename/shard", 0, np.int32)
        prefix = g.node("ShardedFilename", "save/ShardedFilename", ["save/StringJoin", shard, shards])
    g.node("SaveV2", "save/SaveV2", [prefix, "save/SaveV2/tensor_names", "save/SaveV2/shape_and_slices",
                                     *tensors], dtypes=_types(dtypes), has_ev=True)
    save_tensor = g.node("Identity", "save/control_dependency", [prefix, "^save/SaveV2"], T=string,
                         _class=attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(
                             s=[f"loc:@{prefix}".encode()])))
    if sharded:
        g.node("Pack", "save/MergeV2Checkpoints/checkpoint_prefixes", [prefix, "^save/control_dependency"],
               N=1, T=string, axis=0)
        g.node("MergeV2Checkpoints", "save/MergeV2Checkpoints", ["save/MergeV2Checkpoints/checkpoint_prefixes",
                                                                 "save/Const"], delete_old_dirs=True)
        save_tensor = g.node("Identity", "save/Identity_lpo_sample", ["save/Const", "^save/MergeV2Checkpoints"],
                             T=string)
    rnames = ["global_step"] + resource_vars
    g.const("save/RestoreV2/tensor_names", np.array([n.encode() for n in rnames], dtype=object))
    g.const("save/RestoreV2/shape_and_slices", np.array([b""] * len(rnames), dtype=object))
    g.node("RestoreV2", "save/RestoreV2", ["save/Const", "save/RestoreV2/tensor_names",
                                           "save/RestoreV2/shape_and_slices"],
           device="/device:CPU:0", dtypes=_types([i64] + [f32] * len(resource_vars)))
    restores = [g.node("Assign", "save/Assign", ["global_step", "save/RestoreV2"], T=_type(i64), use_locking=True,
                       validate_shape=True)]
    for k, v in enumerate(resource_vars):
        i = k + len(resource_vars)
        ident = g.node("Identity", f"save/Identity_{i}", [f"save/RestoreV2:{k + 1}"], T=_type(f32))
        restores.append(g.node("AssignVariableOp", "save/AssignVariableOp" + ("" if k == 0 else f"_{k}"),
                               [v, ident], dtype=_type(f32), validate_shape=False))
    attrs = {k: attr_value(v) for k, v in _EV_ATTRS.items() if k != "layout"}
    attrs["storage_size"] = attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue())
    for k, (h, init, key, part, parts) in enumerate(evs):
        name = g.const(f"save/Const_{k + 1}", h.encode())
        restores.append(g.node("KvResourceImportV2", "save/KvResourceImportV2" + ("" if k == 0 else f"_{k}"),
                               ["save/Const", h, h, init, name, key], Tkeys=_type(i64), dtype=_type(f32),
                               shape=_shape([dim]), counter_type=_type(types_pb2.DT_UINT64), partition_id=part,
                               partition_num=parts, layout="", reset_version=False, **attrs))
    if sharded:
        g.node("NoOp", "save/restore_shard", ["^" + r for r in restores])
        g.node("NoOp", "save/restore_all", ["^save/restore_shard"])
    else:
        g.node("NoOp", "save/restore_all", ["^" + r for r in restores])
    return save_tensor


def write_ev_checkpoint(prefix: str, dim: int = 8, rows: dict | None = None, seed: int = 0,
                        drop: tuple = (), mismatch: str | None = None) -> dict:
    """Write a checkpoint of the sample model with ``SaveV2`` under DeepRec's tensor names.

    ``rows`` maps each EV part to its number of keys (default: user_emb 40, each item part
    30). Part ``i`` of ``n`` holds the keys ``i + n * k`` for ``k < rows`` (the ids the sample
    feeds; DeepRec routes an id to part ``id % n``), in a random order. ``drop``
    leaves those tensor names out and ``mismatch`` (an EV name) writes one key too many, to
    make bad checkpoints. Returns ``{tensor name: array}`` as written.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    rows = rows or {"user_emb": 40, "item_emb/part_0": 30, "item_emb/part_1": 30}
    tensors = {"global_step": np.array(1234, np.int64),
               "cat_emb": rng.normal(0, 0.5, [50, 4]).astype(np.float32),
               "dense_0/kernel": rng.normal(0, 0.3, [2 * dim + 8, 16]).astype(np.float32),
               "dense_0/bias": rng.normal(0, 0.1, [16]).astype(np.float32),
               "dense_1/kernel": rng.normal(0, 0.3, [16, 1]).astype(np.float32),
               "dense_1/bias": rng.normal(0, 0.1, [1]).astype(np.float32)}
    parts = {}
    for name in rows:
        parts.setdefault(name.rsplit("/part_", 1)[0], []).append(name)
    for name, n in rows.items():
        full = name.rsplit("/part_", 1)[0]
        i, count = (int(name.rsplit("/part_", 1)[1]), len(parts[full])) if "/part_" in name else (0, 1)
        keys = (i + count * rng.permutation(n)).astype(np.int64)  # a part holds the ids id % count == i
        if name == mismatch:
            keys = np.append(keys, n).astype(np.int64)
        values = rng.normal(0, 0.2, [n, dim]).astype(np.float32)
        values[:, 0] *= 8  # dims of different ranges: per-dim scales differ
        tensors[name + "-keys"] = keys
        tensors[name + "-values"] = values
        tensors[name + "-versions"] = rng.integers(0, 1000, len(keys)).astype(np.int64)
        tensors[name + "-freqs"] = rng.integers(1, 50, len(keys)).astype(np.int64)
        tensors[name + "-keys_filtered"] = np.zeros([0], np.int64)
        tensors[name + "-versions_filtered"] = np.zeros([0], np.int64)
        tensors[name + "-freqs_filtered"] = np.zeros([0], np.int64)
        offsets = np.zeros(SAVED_PARTITIONS + 1, np.int32)
        offsets[1:] = np.cumsum(np.bincount(keys % SAVED_PARTITIONS, minlength=SAVED_PARTITIONS))
        tensors[name + "-partition_offset"] = offsets
        tensors[name + "-partition_filter_offset"] = np.zeros(SAVED_PARTITIONS + 1, np.int32)
    tensors = {k: v for k, v in tensors.items() if k not in drop}
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[k]) for k in names])
    return tensors


def build_ev_model(path: str, dim: int = 8, seed: int = 0, sharded: bool = False, **ckpt) -> EvModel:
    """Write the sample DeepRec SavedModel (graph + checkpoint) at ``path`` (must not exist).

    ``sharded`` gives it a sharded saver; ``ckpt`` goes to :func:`write_ev_checkpoint`.
    """
    os.makedirs(os.path.join(path, "variables"))
    sm = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    sm.meta_graphs.add().CopyFrom(build_ev_graph(dim, sharded))
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(sm.SerializeToString(deterministic=True))
    model = EvModel(path, dim, {"user_emb": 1, "item_emb": 2})
    write_ev_checkpoint(model.variables_prefix, dim, seed=seed, **ckpt)
    rng = np.random.default_rng(seed + 1)
    model.feeds = {"user": rng.integers(0, 40, 64).astype(np.int64),
                   "item": np.concatenate([2 * rng.integers(0, 30, 32), 2 * rng.integers(0, 30, 32) + 1]
                                          ).astype(np.int64),
                   "cat": rng.integers(0, 50, 64).astype(np.int32),
                   "dense": rng.normal(0, 1, [64, 4]).astype(np.float32)}
    return model


__all__ = ["DEEPREC_OPS", "deeprec_op_list", "build_ev_graph", "build_ev_model", "write_ev_checkpoint", "EvModel"]
