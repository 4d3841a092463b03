"""Lower a TF2 (object-graph) SavedModel to a flat TF1-style graph that lpo's passes read.

Design decision: **lower, don't rewrite functions.** A TF2 SavedModel (Keras 3
``model.export()``, ``tf.saved_model.save`` of a ``tf.Module``) keeps its variables as
``VarHandleOp`` nodes in the outer graph and its computation in library functions
called by ``StatefulPartitionedCall`` nodes; the serving signatures point at the call
outputs, and the saver is itself a pair of functions (``SaveV2``/``RestoreV2`` inside)
with object-based checkpoint keys (``variables/3/.ATTRIBUTES/VARIABLE_VALUE``).

:func:`lower_tf2` turns the serving MetaGraph into an equivalent TF1-style MetaGraph,
with pure protobuf edits:

1. **Inline** every (nested) ``StatefulPartitionedCall``/``PartitionedCall`` into the outer
   GraphDef: a FunctionDef body becomes nodes named ``<call node>/<body node>``; its
   ``node:out_arg:idx`` inputs become ``node:flat_port`` using each op's ``OpDef`` (or the
   called function's signature); the call node itself becomes an ``IdentityN`` of the
   function's results under the same name (with control edges on the function's
   ``control_ret``), so every signature keeps its input/output tensor names.
   Control-flow ops that take functions (``While``, ``If``, ...) are left as they are
   (their functions stay in the library).
2. **Map variables to checkpoint keys**: the old saver function's ``SaveV2`` inputs are
   traced back to its resource arguments, i.e. to the outer ``VarHandleOp`` nodes, giving
   each one its object-based key.
3. **Prune** everything the signatures and the init op do not reach (the old saver, the
   duplicate variables Keras tracks for its own checkpointing, ...), so only the variables
   that serving reads remain (and are saved).
4. **Rename** each remaining variable to a readable name: the ``SavedVariable.name`` of the
   object graph (``emb_C1/embeddings``), or its object path when the name is generic
   (``Variable``) or taken. These names are the ``opt_config`` keys.
5. Write a ``variables`` collection of VariableDefs (a ``Fill`` zeros initializer each,
   never run when restoring) and an ``lpo_checkpoint_keys`` collection (``node\\tkey``
   lines) that :func:`lpo.core.savedmodel.variable_specs` and
   :func:`lpo.core.savedmodel.rebuild_saver` use, so the rebuilt Saver restores the tables
   from the object-based keys of the original checkpoint: ``convert_checkpoint`` reads
   the original ``variables/`` unchanged, and the output stays loadable by
   ``tf.saved_model.load`` (TF1 path) and ``saved_model_cli``.
6. Drop ``object_graph_def`` and the old saver_def, build a fresh V2 Saver over the
   collection (:func:`lpo.core.savedmodel.rebuild_saver`); the usual TF1 passes then run.

Tables stay variables (nothing is frozen). What is not supported raises
ModelFormatError (with "TF2" in the message): savers other than one ``SaveV2`` in the
save function, function-valued attrs with placeholders, and graphs TF cannot import.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

import numpy as np

from tensorflow.core.framework import attr_value_pb2, node_def_pb2, types_pb2, variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from lpo.errors import ModelFormatError
from lpo.core.graph import make_const, make_node, parse_input, shape_of
from lpo.core.savedmodel import KEYS_COLLECTION, checkpoint_keys, rebuild_saver, select_meta_graph

log = logging.getLogger(__name__)

CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
_KEY_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_PASS_THROUGH = ("Identity", "ReadVariableOp", "DisableCopyOnRead")
_MAX_INLINE = 100_000


def _err(msg: str) -> ModelFormatError:
    return ModelFormatError(f"TF2 SavedModel: {msg}")


def _op_def(op: str):
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op)


def _arg_count(arg, attrs) -> int:
    if arg.number_attr:
        return attrs[arg.number_attr].i
    if arg.type_list_attr:
        return len(attrs[arg.type_list_attr].list.type)
    return 1


class _Inliner:
    """Inline function calls of a GraphDef (in place, on a node list)."""

    def __init__(self, graph_def):
        self.lib = {f.signature.name: f for f in graph_def.library.function}

    def out_ports(self, node: node_def_pb2.NodeDef) -> dict[str, int]:
        """Map each output arg name of ``node`` to its first flat output port."""
        if node.op in self.lib:
            return {a.name: i for i, a in enumerate(self.lib[node.op].signature.output_arg)}
        op_def = _op_def(node.op)
        if op_def is None:
            raise _err(f"op {node.op!r} (node {node.name}) is not registered in this TensorFlow")
        ports, i = {}, 0
        for arg in op_def.output_arg:
            ports[arg.name] = i
            i += _arg_count(arg, node.attr)
        return ports

    def inline(self, call: node_def_pb2.NodeDef) -> list[node_def_pb2.NodeDef]:
        """Return the nodes replacing ``call``: its function body plus an IdentityN named like it."""
        fname = call.attr["f"].func.name
        fdef = self.lib.get(fname)
        if fdef is None:
            raise _err(f"node {call.name} calls function {fname!r}, which is not in the library")
        prefix = call.name + "/"
        data_in = [i for i in call.input if not i.startswith("^")]
        ctrl_in = [i for i in call.input if i.startswith("^")]
        args = {a.name: data_in[k] for k, a in enumerate(fdef.signature.input_arg)}
        body = {n.name: n for n in fdef.node_def}
        ports = {n.name: self.out_ports(n) for n in fdef.node_def}

        def tensor(ref: str) -> str:
            if ref.startswith("^"):
                name = ref[1:]
                if name in args:
                    return "^" + parse_input(args[name])[0]
                return "^" + prefix + name
            parts = ref.split(":")
            if len(parts) == 1:
                if parts[0] in args:
                    return args[parts[0]]
                return prefix + parts[0]
            if len(parts) == 2:  # not FunctionDef syntax; read it as GraphDef "node:port"
                return f"{prefix}{parts[0]}:{parts[1]}" if parts[1] != "0" else prefix + parts[0]
            node, out_arg, idx = parts[0], parts[1], int(parts[2])
            if node not in body:
                raise _err(f"function {fname} refers to unknown node {node!r}")
            if out_arg not in ports[node]:
                raise _err(f"function {fname}: node {node} ({body[node].op}) has no output {out_arg!r}")
            port = ports[node][out_arg] + idx
            return prefix + node if port == 0 else f"{prefix}{node}:{port}"

        out = []
        for n in fdef.node_def:
            new = node_def_pb2.NodeDef()
            new.CopyFrom(n)
            new.name = prefix + n.name
            del new.input[:]
            new.input.extend(tensor(i) for i in n.input)
            if not any(not i.startswith("^") for i in n.input):
                new.input.extend(ctrl_in)
            if not new.device:
                new.device = call.device
            for a in ("_class",):
                new.attr.pop(a, None)
            out.append(new)
        rets = [tensor(fdef.ret[a.name]) for a in fdef.signature.output_arg]
        ident = make_node("IdentityN", call.name, rets + ["^" + prefix + fdef.control_ret[k]
                                                            for k in sorted(fdef.control_ret)] + ctrl_in,
                          device=call.device)
        types = attr_value_pb2.AttrValue()
        types.list.type.extend(call.attr["Tout"].list.type)
        ident.attr["T"].CopyFrom(types)
        if not rets:
            ident = make_node("NoOp", call.name, ["^" + prefix + fdef.control_ret[k]
                                                  for k in sorted(fdef.control_ret)] + ctrl_in, device=call.device)
        out.append(ident)
        return out


def _save_keys(mg: meta_graph_pb2.MetaGraphDef, nodes: dict[str, node_def_pb2.NodeDef], lib) -> dict[str, str]:
    """Return {outer VarHandleOp name: checkpoint key} from the TF2 saver function."""
    import tensorflow as tf

    save_node = nodes.get(parse_input(mg.saver_def.save_tensor_name)[0])
    if save_node is None or save_node.op not in CALL_OPS or save_node.attr["f"].func.name not in lib:
        raise _err("its saver is not a saver function (saver_def.save_tensor_name); cannot map variables to "
                   "checkpoint keys")
    fdef = lib[save_node.attr["f"].func.name]
    body = {n.name: n for n in fdef.node_def}
    args = {a.name: k for k, a in enumerate(fdef.signature.input_arg)}
    data_in = [i for i in save_node.input if not i.startswith("^")]
    saves = [n for n in fdef.node_def if n.op == "SaveV2"]
    if len(saves) != 1:
        raise _err(f"its save function {fdef.signature.name} has {len(saves)} SaveV2 ops (lpo reads exactly one)")
    save = saves[0]
    names_node = body.get(save.input[1].split(":")[0])
    if names_node is None or names_node.op != "Const":
        raise _err("its SaveV2 tensor_names is not a constant")
    keys = [k.decode() for k in tf.make_ndarray(names_node.attr["value"].tensor).reshape(-1)]
    out: dict[str, str] = {}
    for key, ref in zip(keys, [i for i in save.input[3:] if not i.startswith("^")]):
        name = ref.split(":")[0]
        seen = 0
        while name in body and body[name].op in _PASS_THROUGH and seen < 100:
            name = body[name].input[0].split(":")[0]
            seen += 1
        if name in args:
            var = parse_input(data_in[args[name]])[0]
            if var in nodes and nodes[var].op == "VarHandleOp":
                out.setdefault(var, key)
    return out


def _object_names(mg: meta_graph_pb2.MetaGraphDef, keys: dict[str, str]) -> dict[str, str]:
    """Return {var node: readable name} from the object graph (SavedVariable.name or object path)."""
    og = mg.object_graph_def
    children: dict[int, dict[str, int]] = {}  # node id -> {local name: first child id}, built on demand

    def child_of(node_id: int, part: str) -> int | None:
        table = children.get(node_id)
        if table is None:
            table = children[node_id] = {}
            for c in og.nodes[node_id].children:
                table.setdefault(c.local_name, c.node_id)
        return table.get(part)

    out = {}
    for var, key in keys.items():
        path = key[:-len(_KEY_SUFFIX)] if key.endswith(_KEY_SUFFIX) else key
        node_id, ok = 0, bool(og.nodes)
        for part in path.split("/"):
            if not ok:
                break
            child = child_of(node_id, part)
            ok = child is not None
            node_id = child if ok else node_id
        name = ""
        if ok and og.nodes[node_id].HasField("variable"):
            name = og.nodes[node_id].variable.name.split(":")[0]
        generic = not name or name.split("/")[-1].split("_")[0] == "Variable"
        out[var] = path if generic else name
    return out


def _fn_body(fdef) -> bytes:
    from tensorflow.core.framework import function_pb2

    f = function_pb2.FunctionDef()
    f.CopyFrom(fdef)
    f.signature.name = ""
    f.ClearField("arg_attr")  # _user_specified_name differs between otherwise equal traces
    return f.SerializeToString(deterministic=True)


def _merge_duplicate_calls(mg: meta_graph_pb2.MetaGraphDef, nodes: dict[str, node_def_pb2.NodeDef], lib) -> None:
    """Point signatures that call the same function on the same variables at one call (in place).

    Keras ``export()`` serves ``serve`` and ``serving_default`` from two identical wrapper
    functions over the same variables; inlined twice, every weight would have two readers.
    A signature whose call matches an earlier one (same function body, same captured
    inputs, matching placeholders) is repointed at the earlier call's tensors.
    """
    def placeholder(ref):
        n = nodes.get(parse_input(ref)[0])
        return n if n is not None and n.op == "Placeholder" else None

    def same_placeholder(a, b) -> bool:
        shape = [n.attr["shape"].SerializeToString(deterministic=True) for n in (a, b)]
        return a.attr["dtype"].type == b.attr["dtype"].type and shape[0] == shape[1]

    seen: dict[tuple, node_def_pb2.NodeDef] = {}
    alias: dict[str, str] = {}  # tensor/node name of a duplicate -> the kept one's
    for name in sorted(nodes, key=lambda n: (not n.startswith("StatefulPartitionedCall"), n)):
        call = nodes[name]
        if call.op not in CALL_OPS or call.attr["f"].func.name not in lib:
            continue
        ins = [i for i in call.input if not i.startswith("^")]
        captured = tuple(i if placeholder(i) is None else "" for i in ins)
        key = (_fn_body(lib[call.attr["f"].func.name]), captured, len(call.input))
        first = seen.get(key)
        if first is None:
            seen[key] = call
            continue
        f_ins = [i for i in first.input if not i.startswith("^")]
        if not all((placeholder(a) is None) or same_placeholder(placeholder(a), placeholder(b))
                   for a, b in zip(ins, f_ins)):
            continue
        alias[name] = first.name
        for a, b in zip(ins, f_ins):
            if placeholder(a) is not None:
                alias[parse_input(a)[0]] = parse_input(b)[0]
    if not alias:
        return
    for sig in mg.signature_def.values():
        for info in list(sig.inputs.values()) + list(sig.outputs.values()):
            src, port, _ = parse_input(info.name)
            if src in alias:
                info.name = f"{alias[src]}:{port}"


def _reachable(nodes: dict[str, node_def_pb2.NodeDef], roots: list[str]) -> set[str]:
    seen, stack = set(), [r for r in roots if r in nodes]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for i in nodes[n].input:
            src = parse_input(i)[0]
            if src in nodes and src not in seen:
                stack.append(src)
    return seen


def _used_functions(graph_def) -> set[str]:
    lib = {f.signature.name: f for f in graph_def.library.function}
    used, stack = set(), []

    def scan(node_list):
        for n in node_list:
            if n.op in lib:
                stack.append(n.op)
            for a in n.attr.values():
                if a.HasField("func"):
                    stack.append(a.func.name)
                for f in a.list.func:
                    stack.append(f.name)

    scan(graph_def.node)
    while stack:
        f = stack.pop()
        if f in used or f not in lib:
            continue
        used.add(f)
        scan(lib[f].node_def)
    return used


def _splice(order: list[str], expand: dict[str, list[str]]) -> list[str]:
    """Return ``order`` with each inlined call replaced by its nodes, recursively, in one pass.

    ``expand[call]`` lists the nodes replacing ``call``; it includes ``call`` itself
    (the IdentityN taking its name), which is kept as it is.
    """
    out: list[str] = []
    stack: list = list(reversed(order))
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):  # a node that replaced the call of the same name
            out.append(item[0])
            continue
        sub = expand.pop(item, None)
        if sub is None:
            out.append(item)
        else:
            stack.extend(reversed([(n,) if n == item else n for n in sub]))
    return out


def lower_meta_graph(mg: meta_graph_pb2.MetaGraphDef) -> meta_graph_pb2.MetaGraphDef:
    """Return a TF1-style copy of TF2 MetaGraph ``mg`` (see the module docstring).

    Steps: merge duplicate calls, prune to what serving reaches, inline every call,
    prune again, give the variables readable names and TF1 VariableDefs, keep only the
    library functions still used, and rebuild the collections and the saver.
    """
    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(mg)
    gd = out.graph_def
    inliner = _Inliner(gd)
    nodes = {n.name: n for n in gd.node}
    order = [n.name for n in gd.node]
    keys = _save_keys(mg, nodes, inliner.lib)

    _merge_duplicate_calls(out, nodes, inliner.lib)
    roots = _serving_roots(out, mg)
    # prune first (drops the old saver calls), then inline what the signatures reach
    order, nodes = _prune(nodes, order, roots)
    order = _inline_calls(nodes, order, inliner)
    order, nodes = _prune(nodes, order, roots)
    variables = [n for n in order if nodes[n].op == "VarHandleOp"]
    missing = [v for v in variables if v not in keys]
    if missing:
        raise _err(f"variables {missing[:3]} are read by serving but not saved by its saver")

    rename = _readable_names(mg, variables, keys, order)
    order, nodes = _rename(nodes, order, rename)
    defs, key_lines = _variable_defs(nodes, order, [(rename[v], keys[v]) for v in variables])

    del gd.node[:]
    gd.node.extend(nodes[n] for n in order)
    _prune_library(gd)
    _tf1_collections(out, defs, key_lines)
    return rebuild_saver(out)  # a Saver restoring the object-based keys: loadable as it is


def _serving_roots(out: meta_graph_pb2.MetaGraphDef, mg: meta_graph_pb2.MetaGraphDef) -> list[str]:
    """The nodes serving needs: every signature tensor and the main/init op."""
    roots = []
    for sig in out.signature_def.values():
        for info in list(sig.inputs.values()) + list(sig.outputs.values()):
            roots.append(parse_input(info.name)[0])
    for key in ("saved_model_main_op", "legacy_init_op"):
        col = mg.collection_def.get(key)
        if col is not None:
            roots.extend(parse_input(v)[0] for v in col.node_list.value)
    return roots


def _prune(nodes: dict, order: list[str], roots: list[str]) -> tuple[list[str], dict]:
    """Keep the nodes ``roots`` reach, in order."""
    keep = _reachable(nodes, roots)
    order = [n for n in order if n in keep]
    return order, {n: nodes[n] for n in order}


def _inline_calls(nodes: dict, order: list[str], inliner: "_Inliner") -> list[str]:
    """Inline every function call of ``nodes`` (nested calls too); return the new order."""
    work = [n for n in order if nodes[n].op in CALL_OPS]
    expand: dict[str, list[str]] = {}  # call node -> the nodes replacing it (spliced into order below)
    count = 0
    while work:
        name = work.pop()
        call = nodes[name]
        count += 1
        if count > _MAX_INLINE:
            raise _err("function calls nest too deeply to inline")
        if call.attr["f"].func.name not in inliner.lib:
            raise _err(f"node {name} calls {call.attr['f'].func.name!r}, which is not in the library")
        new_nodes = inliner.inline(call)
        expand[name] = [n.name for n in new_nodes]
        for n in new_nodes:
            if n.name != name and n.name in nodes:
                raise _err(f"inlining {name} would duplicate node {n.name}")
            nodes[n.name] = n
            if n.op in CALL_OPS:
                work.append(n.name)
    return _splice(order, expand)


def _readable_names(mg, variables: list[str], keys: dict, order: list[str]) -> dict[str, str]:
    """Map each variable node to a readable name no other node has."""
    readable = _object_names(mg, {v: keys[v] for v in variables})
    taken = {n for n in order if n not in variables}
    rename: dict[str, str] = {}
    for v in variables:
        want, i = readable[v], 1
        cand = want
        while cand in taken:
            cand = f"{want}_{i}"
            i += 1
        rename[v] = cand
        taken.add(cand)
    return rename


def _rename(nodes: dict, order: list[str], rename: dict[str, str]) -> tuple[list[str], dict]:
    """Rename nodes and every input that reads them."""
    # a readable name may collide with another (non-variable) node's name prefix; that's fine
    renamed_nodes = {}
    for n in order:
        node = nodes[n]
        if n in rename:
            node.name = rename[n]
        for k, inp in enumerate(node.input):
            src, port, ctrl = parse_input(inp)
            if src in rename:
                node.input[k] = ("^" if ctrl else "") + rename[src] + (f":{port}" if port else "")
        renamed_nodes[node.name] = node
    return [rename.get(n, n) for n in order], renamed_nodes


_INIT_DTYPES = (types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_DOUBLE, types_pb2.DT_HALF,
                types_pb2.DT_BFLOAT16)


def _variable_defs(nodes: dict, order: list[str], variables: list[tuple[str, str]]):
    """Add a zeros initializer (never run at restore) and a snapshot read to each ``(variable, key)``.

    Returns the VariableDefs and the ``node\tcheckpoint key`` lines; new nodes go to ``nodes``/``order``.
    """
    import tensorflow as tf

    defs, key_lines = [], []
    for v, key in variables:
        node = nodes[v]
        shape = shape_of(node) or []
        dtype = node.attr["dtype"].type
        if dtype not in _INIT_DTYPES:
            raise _err(f"variable {v} has dtype {dtype}, which lpo cannot initialize")
        np_dtype = tf.dtypes.as_dtype(dtype).as_numpy_dtype
        dims = make_const(f"{v}/Initializer/zeros/shape", np.array(shape, np.int32), device=node.device)
        zero = make_const(f"{v}/Initializer/zeros/value", np.array(0, np_dtype), device=node.device)
        fill = make_node("Fill", f"{v}/Initializer/zeros", [dims.name, zero.name], device=node.device,
                         T=node.attr["dtype"], index_type=attr_value_pb2.AttrValue(type=types_pb2.DT_INT32))
        assign = make_node("AssignVariableOp", f"{v}/Assign", [v, fill.name], device=node.device,
                           dtype=node.attr["dtype"])
        read_name = f"{v}/Read/ReadVariableOp"
        new = [dims, zero, fill, assign]
        if read_name not in nodes:
            new.append(make_node("ReadVariableOp", read_name, [v], device=node.device, dtype=node.attr["dtype"]))
        for n in new:
            if n.name in nodes:
                raise _err(f"cannot add node {n.name}: the name is taken")
            nodes[n.name] = n
            order.append(n.name)
        defs.append(variable_pb2.VariableDef(variable_name=f"{v}:0", initial_value_name=f"{fill.name}:0",
                                             initializer_name=assign.name, snapshot_name=f"{read_name}:0",
                                             is_resource=True, trainable=True))
        key_lines.append(f"{v}\t{key}")
    return defs, key_lines


def _prune_library(gd) -> None:
    """Keep only the library functions (and gradients) the graph still uses."""
    used = _used_functions(gd)
    funcs = [f for f in gd.library.function if f.signature.name in used]
    del gd.library.function[:]
    gd.library.function.extend(funcs)
    grads = [g for g in gd.library.gradient if g.function_name in used]
    del gd.library.gradient[:]
    gd.library.gradient.extend(grads)


def _tf1_collections(out: meta_graph_pb2.MetaGraphDef, defs, key_lines: list[str]) -> None:
    """Drop the object graph, the saver and TF2's collections; add ``variables`` and the checkpoint keys."""
    out.ClearField("object_graph_def")
    out.ClearField("saver_def")
    for key in list(out.collection_def):
        if key not in ("saved_model_main_op", "legacy_init_op", "saved_model_assets", "asset_filepaths"):
            del out.collection_def[key]
    col = out.collection_def["variables"].bytes_list
    col.value.extend(vd.SerializeToString(deterministic=True) for vd in defs)
    out.collection_def[KEYS_COLLECTION].bytes_list.value.extend(line.encode() for line in key_lines)


def lower_tf2(sm: saved_model_pb2.SavedModel, tags=None, model_path: str = "") -> saved_model_pb2.SavedModel:
    """Return a TF1-style SavedModel with the (serve) MetaGraph of TF2 ``sm`` lowered."""
    mg = select_meta_graph(sm, tags)
    try:
        lowered = lower_meta_graph(mg)
    except ModelFormatError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise _err(f"cannot lower {model_path or 'it'} to a TF1 graph ({e})") from e
    out = saved_model_pb2.SavedModel()
    out.saved_model_schema_version = sm.saved_model_schema_version
    out.meta_graphs.add().CopyFrom(lowered)
    return out


@contextlib.contextmanager
def lowered_model_dir(model_path: str, sm: saved_model_pb2.SavedModel):
    """Yield a SavedModel dir that TF1 loaders can run with the tensor names of ``sm``.

    For a lowered TF2 model: a temp dir holding ``sm`` and links to ``model_path``'s
    variables and assets (the lowered graph restores the original object-based keys).
    For TF1 models: ``model_path`` itself.
    """
    if not any(KEYS_COLLECTION in mg.collection_def for mg in sm.meta_graphs):
        yield model_path
        return
    from lpo.core.savedmodel import write_saved_model

    tmp = tempfile.mkdtemp(prefix="lpo-lowered-")
    try:
        write_saved_model(sm, tmp)
        for name in ("variables", "assets", "assets.extra"):
            src = os.path.join(model_path, name)
            if os.path.exists(src):
                os.symlink(os.path.abspath(src), os.path.join(tmp, name))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["lowered_model_dir", "lower_tf2", "lower_meta_graph", "checkpoint_keys", "KEYS_COLLECTION"]
