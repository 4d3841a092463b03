"""Graph surgery shared by the pass families: retyping and adding variables.

Everything is a protobuf edit through :class:`lpo.core.graph.GraphIndex`; the
VariableDefs of the ``variables`` collection are kept in step so that the
rebuilt Saver saves and restores exactly the variables the graph uses.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import attr_value_pb2, types_pb2, variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from lpo.core.graph import (
    READ_OPS, GraphIndex, dtype_attr, make_const, make_node, parse_input, shape_proto, tensor_ref,
)
from lpo.core.savedmodel import VARIABLES_COLLECTION, saver_scopes, variable_defs

INIT_OPS = ("AssignVariableOp", "Assign")
MAIN_OP_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")
LOCAL_VARIABLES = "local_variables"
STATUS_OPS = ("VarIsInitializedOp", "IsVariableInitialized")
_NP_DTYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_HALF: np.float16, types_pb2.DT_UINT8: np.uint8}
_DTYPE_ATTR = {"ReadVariableOp": "dtype", "Identity": "T", "AssignVariableOp": "dtype", "Assign": "T",
               "IsVariableInitialized": "dtype", "VarHandleOp": "dtype", "VariableV2": "dtype"}


class VariableTable:
    """The VariableDefs of a MetaGraph, editable and written back in order."""

    def __init__(self, mg: meta_graph_pb2.MetaGraphDef):
        self.defs = variable_defs(mg)
        self._by_node: dict[str, variable_pb2.VariableDef] = {}
        for vd in self.defs:
            self._by_node.setdefault(vd.variable_name.split(":")[0], vd)

    def get(self, node: str) -> variable_pb2.VariableDef | None:
        """Return the (first) VariableDef of variable node ``node``."""
        return self._by_node.get(node)

    def add(self, vd: variable_pb2.VariableDef) -> None:
        """Append a VariableDef."""
        self.defs.append(vd)
        self._by_node.setdefault(vd.variable_name.split(":")[0], vd)

    def write(self, mg: meta_graph_pb2.MetaGraphDef) -> None:
        """Store the VariableDefs into ``mg``'s variables collection."""
        col = mg.collection_def[VARIABLES_COLLECTION].bytes_list
        del col.value[:]
        col.value.extend(vd.SerializeToString(deterministic=True) for vd in self.defs)


class Surgery:
    """A GraphIndex plus the variable table and the saver scope to ignore."""

    def __init__(self, mg: meta_graph_pb2.MetaGraphDef):
        self.mg = mg
        self.index = GraphIndex(mg.graph_def)
        self.vars = VariableTable(mg)
        self.saver_prefixes = tuple(s + "/" for s in saver_scopes(mg))

    def is_saver_node(self, name: str) -> bool:
        """True for ops of a saver (every saver is rebuilt after the rewrite)."""
        return bool(self.saver_prefixes) and name.startswith(self.saver_prefixes)

    def finish(self) -> meta_graph_pb2.MetaGraphDef:
        """Return a new MetaGraphDef with the edited graph and variables."""
        out = meta_graph_pb2.MetaGraphDef()
        out.CopyFrom(self.mg)
        out.graph_def.CopyFrom(self.index.to_graph_def())
        self.vars.write(out)
        return out

    # --- variables ---------------------------------------------------------
    def reads_of(self, var: str) -> list:
        """Return the snapshot reads (ReadVariableOp / Identity) of variable ``var``."""
        return [c for c in self.index.consumers(var) if c.op in READ_OPS and parse_input(c.input[0])[0] == var]

    def readers(self, var: str) -> list:
        """Return the nodes that use variable ``var``'s value, looking through its snapshot reads.

        Savers, the variable's initializer and initialization checks are left out: they
        follow the variable whatever its dtype.
        """
        out, seen = [], set()
        for c in self.index.consumers(var):
            if self.is_saver_node(c.name) or c.op in STATUS_OPS:
                continue
            on_var = parse_input(c.input[0])[0] == var
            if on_var and c.op in INIT_OPS:
                continue
            if on_var and c.op in READ_OPS:
                found = [cc for cc in self.index.consumers(c.name) if not self.is_saver_node(cc.name)]
            else:
                found = [c]
            for r in found:
                if r.name not in seen:
                    seen.add(r.name)
                    out.append(r)
        return out

    def cast_node(self, name: str, src: str, src_t: int, dst_t: int, device: str = ""):
        """Add a Cast node ``name`` reading tensor ``src`` and return its name."""
        self.index.add(make_node("Cast", name, [src], device=device, SrcT=dtype_attr(src_t),
                                 DstT=dtype_attr(dst_t), Truncate=False))
        return name

    def retype_variable(self, var: str, dtype: int, shape: list[int] | None = None,
                        full_shape: list[int] | None = None) -> None:
        """Change variable ``var`` (float32) to ``dtype`` in place, with its reads and initializer.

        With ``shape`` (a packed INT4 table) the variable also changes shape: its
        initializer becomes a zero ``Fill`` of the new shape, stale ``_output_shapes`` are
        dropped, and a partitioned part's slice info gets ``full_shape`` (new columns).
        """
        idx = self.index
        node = idx.node(var)
        node.attr["dtype"].CopyFrom(dtype_attr(dtype))
        if shape is not None:
            node.attr["shape"].CopyFrom(attr_value_pb2.AttrValue(shape=shape_proto(shape)))
            node.attr.pop("_output_shapes", None)
        vd = self.vars.get(var)
        for c in idx.consumers(var):
            if self.is_saver_node(c.name) or parse_input(c.input[0])[0] != var:
                continue
            attr = _DTYPE_ATTR.get(c.op)
            if c.op in INIT_OPS:
                if shape is None:
                    value = self.cast_node(idx.unique_name(c.name + "/lpo_cast"), c.input[1], types_pb2.DT_FLOAT,
                                           dtype, c.device)
                else:
                    value = self.fill_node(idx.unique_name(c.name + "/lpo_zeros"), shape, dtype, c.device)
                idx.set_input(c.name, 1, value)
                if vd is not None and vd.initial_value_name:
                    vd.initial_value_name = value + ":0"
            if attr and attr in c.attr:
                c.attr[attr].CopyFrom(dtype_attr(dtype))
            if shape is not None:
                c.attr.pop("_output_shapes", None)
        if shape is not None and vd is not None and vd.HasField("save_slice_info_def"):
            si = vd.save_slice_info_def
            del si.full_shape[:], si.var_shape[:]
            si.full_shape.extend(full_shape or shape)
            si.var_shape.extend(shape)

    def fill_node(self, name: str, shape: list[int], dtype: int, device: str = "") -> str:
        """Add ``Fill(shape, 0)`` of ``dtype`` (a zero initializer that stays small in the graph)."""
        idx = self.index
        dims = idx.add(make_const(name + "/shape", np.asarray(shape, np.int32), device=device))
        zero = idx.add(make_const(name + "/value", np.zeros((), _NP_DTYPES[dtype]), device=device))
        idx.add(make_node("Fill", name, [dims.name, zero.name], device=device, T=dtype_attr(dtype),
                          index_type=dtype_attr(types_pb2.DT_INT32)))
        return name

    def add_variable(self, name: str, dtype: int, shape: list[int], *, resource: bool, device: str = "") -> str:
        """Add a new (zero-initialized) float32 or float16 variable ``name``; return the tensor that reads it."""
        idx = self.index
        if dtype not in _NP_DTYPES or dtype == types_pb2.DT_UINT8:
            raise ValueError("lpo only adds float32/float16 (scale) variables")
        if len(shape) and int(np.prod(shape)) > 64:  # row scales: a Fill keeps the graph small
            init_name = self.fill_node(f"{name}/Initializer/zeros", list(shape), dtype, device)
        else:
            init_name = idx.add(make_const(f"{name}/Initializer/zeros", np.zeros(shape, dtype=_NP_DTYPES[dtype]),
                                           device=device)).name
        vd = variable_pb2.VariableDef(variable_name=f"{name}:0", initial_value_name=f"{init_name}:0",
                                      trainable=False)
        if resource:
            idx.add(make_node("VarHandleOp", name, device=device, dtype=dtype_attr(dtype), shape=shape_proto(shape),
                              shared_name=name, container=""))
            idx.add(make_node("AssignVariableOp", f"{name}/Assign", [name, init_name], device=device,
                              dtype=dtype_attr(dtype)))
            read = idx.add(make_node("ReadVariableOp", f"{name}/Read/ReadVariableOp", [name], device=device,
                                     dtype=dtype_attr(dtype)))
            idx.add(make_node("VarIsInitializedOp", f"{name}/IsInitialized/VarIsInitializedOp", [name],
                              device=device))
            vd.is_resource = True
        else:
            idx.add(make_node("VariableV2", name, device=device, dtype=dtype_attr(dtype), shape=shape_proto(shape),
                              shared_name="", container=""))
            idx.add(make_node("Assign", f"{name}/Assign", [name, init_name], device=device, T=dtype_attr(dtype),
                              validate_shape=True, use_locking=True))
            read = idx.add(make_node("Identity", f"{name}/read", [name], device=device, T=dtype_attr(dtype)))
        vd.initializer_name = f"{name}/Assign"
        vd.snapshot_name = tensor_ref(read.name) + ":0"
        self.vars.add(vd)
        return read.name

    def run_at_load(self, op: str) -> None:
        """Make ``op`` run once when the SavedModel is loaded (after the restore).

        Adds it as a control input of the MetaGraph's main op; creates a main op
        (``saved_model_main_op`` collection) when the model has none.
        """
        idx = self.index
        for key in MAIN_OP_COLLECTIONS:
            col = self.mg.collection_def.get(key)
            if col is not None and col.node_list.value:
                main = col.node_list.value[0].split(":")[0]
                node = idx.node(main)
                node.input.append("^" + op)
                idx.replace(node)
                return
        main = idx.unique_name("lpo_main_op")
        idx.add(make_node("NoOp", main, ["^" + op]))
        self.mg.collection_def["saved_model_main_op"].node_list.value.append(main)

    def add_load_time_cache(self, name: str, value: str, shape: list[int], device: str = "") -> str:
        """Add a float32 local variable ``name`` set to tensor ``value`` at load time; return its read.

        Local variables are not saved: the model on disk keeps only its low-precision
        weights, and serving reads the dequantized copy without recomputing it per call.
        """
        idx = self.index
        f32 = dtype_attr(types_pb2.DT_FLOAT)
        idx.add(make_node("VarHandleOp", name, device=device, dtype=f32, shape=shape_proto(shape),
                          shared_name=name, container=""))
        assign = idx.add(make_node("AssignVariableOp", f"{name}/Assign", [name, value], device=device, dtype=f32))
        read = idx.add(make_node("ReadVariableOp", f"{name}/Read/ReadVariableOp", [name], device=device, dtype=f32))
        vd = variable_pb2.VariableDef(variable_name=f"{name}:0", initializer_name=assign.name,
                                      snapshot_name=f"{read.name}:0", is_resource=True, trainable=False,
                                      initial_value_name=value if ":" in value else f"{value}:0")
        self.mg.collection_def[LOCAL_VARIABLES].bytes_list.value.append(vd.SerializeToString(deterministic=True))
        self.run_at_load(assign.name)
        return read.name
