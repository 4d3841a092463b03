"""Read and write SavedModel protos; variables of a MetaGraph; the saver.

Only protobuf edits here, except :func:`rebuild_saver`, which imports the edited
MetaGraph into a scratch ``tf.Graph`` to let TensorFlow build a fresh Saver for
the new variable list (no variable values are read).
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from google.protobuf import message as pb_message
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from lpo.errors import InternalError, LpoError, ModelFormatError
from lpo.core.deeprec import EV_HANDLE, EV_SAVER_OPS
from lpo.core.graph import GraphIndex, shape_of

log = logging.getLogger(__name__)

SAVED_MODEL_PB = "saved_model.pb"
VARIABLES_COLLECTION = "variables"
#: ``node\tcheckpoint key`` lines for variables whose key is not their node name (lowered TF2 models)
KEYS_COLLECTION = "lpo_checkpoint_keys"
SKIP_COPY = {SAVED_MODEL_PB, "saved_model.pbtxt", "variables", "fingerprint.pb"}


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """Parse ``path/saved_model.pb``, raising ModelFormatError with a hint on failure."""
    if not os.path.exists(path):
        raise ModelFormatError(f"model path {path} does not exist; pass a SavedModel directory")
    if not os.path.isdir(path):
        raise ModelFormatError(f"model path {path} is a file; pass the SavedModel directory that holds saved_model.pb")
    pb = os.path.join(path, SAVED_MODEL_PB)
    if not os.path.isfile(pb):
        hint = " (a .pbtxt SavedModel is not supported; convert it to binary)" if os.path.isfile(
            os.path.join(path, "saved_model.pbtxt")) else ""
        raise ModelFormatError(f"{path} is not a SavedModel: it has no {SAVED_MODEL_PB}{hint}")
    sm = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as f:
            sm.ParseFromString(f.read())
    except (pb_message.DecodeError, RuntimeError, ValueError) as e:
        raise ModelFormatError(f"{pb} is corrupt or truncated ({e}); re-export the model") from e
    if not sm.meta_graphs:
        raise ModelFormatError(f"{pb} holds no MetaGraph; re-export the model")
    return sm


def tag_sets(sm: saved_model_pb2.SavedModel) -> list[list[str]]:
    """Return the tag set of each MetaGraph."""
    return [sorted(m.meta_info_def.tags) for m in sm.meta_graphs]


def select_meta_graph(sm: saved_model_pb2.SavedModel, tags=None) -> meta_graph_pb2.MetaGraphDef:
    """Return the MetaGraph for ``tags`` (default ``serve``; a list or a comma-separated string).

    The one tag-matching rule of lpo: the MetaGraph whose tag set equals ``tags``, else the only
    one whose tags include all of them (a model tagged ``{serve, gpu}`` is found by ``serve``).
    TF loaders are given that MetaGraph's own full tag set.
    """
    from lpo.options import normalize_tags

    want = set(normalize_tags(tags))
    for m in sm.meta_graphs:
        if set(m.meta_info_def.tags) == want:
            return m
    wider = [m for m in sm.meta_graphs if want <= set(m.meta_info_def.tags)]
    if len(wider) == 1:
        return wider[0]
    available = ", ".join(repr(",".join(t) or "<no tags>") for t in tag_sets(sm))
    what = "several MetaGraphs are tagged" if wider else "the SavedModel has no MetaGraph tagged"
    raise ModelFormatError(f"{what} {','.join(sorted(want))!r}; available tag sets: {available}. "
                           "Pass tags= (CLI --tags) with one of them")


def is_tf2(mg: meta_graph_pb2.MetaGraphDef) -> bool:
    """True when the MetaGraph is a TF2 (object-graph) SavedModel."""
    return len(mg.object_graph_def.nodes) > 0


def check_servable(mg: meta_graph_pb2.MetaGraphDef, path: str) -> None:
    """Raise ModelFormatError when the MetaGraph has no signature to serve."""
    sigs = [k for k in mg.signature_def if not k.startswith("__")]
    if not sigs:
        raise ModelFormatError(
            f"{path} has no serving signature; export it with a signature_def_map (e.g. 'serving_default')"
        )
    if is_tf2(mg):
        return
    nodes = {n.name for n in mg.graph_def.node}
    for key in sorted(sigs):
        sig = mg.signature_def[key]
        for kind, infos in (("input", sig.inputs), ("output", sig.outputs)):
            for name in sorted(infos):
                info = infos[name]
                coo = info.coo_sparse
                for t in (info.name, coo.values_tensor_name, coo.indices_tensor_name, coo.dense_shape_tensor_name):
                    if t and t.split(":")[0].lstrip("^") not in nodes:
                        raise ModelFormatError(
                            f"signature {key!r} {kind} {name!r} refers to tensor {t!r}, which is not in the "
                            f"graph of {path}; the SavedModel is corrupt: re-export it")


def variables_prefix(path: str) -> str:
    """Return the checkpoint prefix of a SavedModel's variables."""
    return os.path.join(path, "variables", "variables")


def check_variables(path: str) -> None:
    """Raise ModelFormatError when the SavedModel's variables checkpoint is missing."""
    prefix = variables_prefix(path)
    if not os.path.isfile(prefix + ".index"):
        raise ModelFormatError(
            f"{path} has no variables checkpoint ({prefix}.index is missing); "
            "copy the complete SavedModel directory, including variables/"
        )


@dataclass
class VarSpec:
    """A variable node of the graph and where it lives in the checkpoint."""

    node: str
    key: str
    slice: str
    shape: list[int]
    dtype: str
    resource: bool
    full_shape: list[int]
    #: ``"variable"``, or ``"ev"`` for a DeepRec EmbeddingVariable: a group of checkpoint
    #: tensors ``key + suffix`` (lpo.core.deeprec.EV_SUFFIXES), ``shape`` = ``[-1, dim]``
    kind: str = "variable"


def _dtype_name(enum: int) -> str:
    import tensorflow as tf

    return tf.dtypes.as_dtype(enum).name


def variable_defs(mg: meta_graph_pb2.MetaGraphDef) -> list[variable_pb2.VariableDef]:
    """Return the VariableDefs of the global variables collection."""
    out = []
    col = mg.collection_def.get(VARIABLES_COLLECTION)
    if col is None:
        return out
    for raw in col.bytes_list.value:
        vd = variable_pb2.VariableDef()
        try:
            vd.ParseFromString(raw)
        except (pb_message.DecodeError, RuntimeError, ValueError) as e:
            raise ModelFormatError(f"the MetaGraph's '{VARIABLES_COLLECTION}' collection holds a corrupt "
                                   f"VariableDef ({e}); re-export the model") from e
        out.append(vd)
    return out


def checkpoint_keys(mg: meta_graph_pb2.MetaGraphDef) -> dict[str, str]:
    """Return {variable node: checkpoint key} of the ``lpo_checkpoint_keys`` collection (TF1 models: empty)."""
    col = mg.collection_def.get(KEYS_COLLECTION)
    if col is None:
        return {}
    out = {}
    for raw in col.bytes_list.value:
        node, _, key = raw.decode().partition("\t")
        out[node] = key
    return out


def variable_specs(mg: meta_graph_pb2.MetaGraphDef, index: GraphIndex | None = None) -> dict[str, VarSpec]:
    """Map each variable node of the MetaGraph to its checkpoint key and slice."""
    if index is None:  # only node lookups are needed here: a plain name -> node map
        index = {n.name: n for n in mg.graph_def.node}
    specs: dict[str, VarSpec] = {}
    keys = checkpoint_keys(mg)
    for vd in variable_defs(mg):
        node_name = vd.variable_name.split(":")[0]
        if node_name not in index:
            continue
        node = index.node(node_name) if isinstance(index, GraphIndex) else index[node_name]
        if node.op == EV_HANDLE:  # DeepRec EmbeddingVariables: lpo.core.deeprec.ev_specs
            continue
        shape = shape_of(node) or []
        key, spec, full = keys.get(node_name, node_name), "", shape
        if vd.HasField("save_slice_info_def"):
            si = vd.save_slice_info_def
            key = si.full_name
            full = list(si.full_shape)
            spec = " ".join(str(d) for d in full) + " " + ":".join(
                f"{o},{n}" for o, n in zip(si.var_offset, si.var_shape))
        specs[node_name] = VarSpec(node_name, key, spec, shape, _dtype_name(node.attr["dtype"].type),
                                   node.op == "VarHandleOp", full)
    return specs


SAVER_OPS = ("SaveV2", "RestoreV2", "MergeV2Checkpoints", "SaveSlices", "Save", "Restore",
             "RestoreSlice") + EV_SAVER_OPS


def saver_scopes(mg: meta_graph_pb2.MetaGraphDef) -> list[str]:
    """Return the name scopes of every saver in the graph (e.g. ``save``, ``save_1``)."""
    scopes = {n.name.rsplit("/", 1)[0] for n in mg.graph_def.node if n.op in SAVER_OPS and "/" in n.name}
    if mg.HasField("saver_def") and "/" in mg.saver_def.restore_op_name:
        scopes.add(mg.saver_def.restore_op_name.rsplit("/", 1)[0])
    return sorted(scopes)


def strip_saver(mg: meta_graph_pb2.MetaGraphDef) -> meta_graph_pb2.MetaGraphDef:
    """Return a copy of ``mg`` without any saver ops, saver_def or savers collection."""
    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(mg)
    prefixes = tuple(s + "/" for s in saver_scopes(mg))
    out.ClearField("saver_def")
    if prefixes:
        keep = [n for n in out.graph_def.node if not n.name.startswith(prefixes)]
        for n in keep:
            for inp in n.input:
                if inp.lstrip("^").startswith(prefixes):
                    raise ModelFormatError(
                        f"node {n.name} reads the saver op {inp}; lpo cannot rebuild this saver"
                    )
        del out.graph_def.node[:]
        out.graph_def.node.extend(keep)
    out.collection_def.pop("savers", None)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def _graph_def_with_shapes(graph):
    """Return ``graph``'s GraphDef as ``export_meta_graph(graph=...)`` writes it, in linear time.

    Each op's NodeDef in creation order, with an ``_output_shapes`` attr when it has
    outputs; versions and function library from ``as_graph_def``. (TensorFlow's own
    loop reads ``Graph._nodes_by_id`` per node, which TF 2.x rebuilds on each access:
    quadratic in the graph size.)
    """
    gd = graph.as_graph_def()
    del gd.node[:]
    for op in graph.get_operations():
        node = gd.node.add()
        node.CopyFrom(op.node_def)
        if op.outputs and "_output_shapes" not in node.attr:
            node.attr["_output_shapes"].list.shape.extend([o.get_shape().as_proto() for o in op.outputs])
    return gd


def rebuild_saver(mg: meta_graph_pb2.MetaGraphDef,
                  source: meta_graph_pb2.MetaGraphDef | None = None) -> meta_graph_pb2.MetaGraphDef:
    """Return ``mg`` with a fresh V2 Saver over its (possibly retyped) variables.

    The old saver ops are removed; the MetaGraph is imported into a scratch graph
    where TensorFlow builds a default Saver from the variables collection
    (partitioned variables keep their slices). Signatures, assets, tags and every
    other collection are kept from ``mg``.

    When TensorFlow cannot import ``mg``, ``source`` (the unedited input MetaGraph,
    if given) decides the blame: if it cannot be imported either, the model is
    corrupt (ModelFormatError); otherwise lpo's edit broke it (InternalError).

    A graph with ops this TensorFlow lacks (DeepRec's ``Kv*`` ops) cannot be imported at
    all: its saver is edited in place instead (:func:`lpo.core.protosaver.patch_saver`).
    """
    from lpo.core.deeprec import unknown_ops

    if unknown_ops(mg.graph_def):  # e.g. DeepRec's Kv* ops: TensorFlow cannot import it, edit the saver instead
        from lpo.core.protosaver import patch_saver

        return patch_saver(mg, source)
    import tensorflow as tf

    stripped = strip_saver(mg)
    graph = tf.Graph()
    try:
        with graph.as_default():
            saver = tf.compat.v1.train.import_meta_graph(stripped, clear_devices=False)
            keys = checkpoint_keys(stripped)
            if keys:  # lowered TF2 model: restore from the object-based keys
                var_list = {keys.get(v.op.name, v.op.name): v for v in tf.compat.v1.global_variables()}
                saver = tf.compat.v1.train.Saver(var_list=var_list, allow_empty=True)
            if saver is None:
                saver = tf.compat.v1.train.Saver(allow_empty=True)
            exported = tf.compat.v1.train.export_meta_graph(
                graph_def=_graph_def_with_shapes(graph), graph=graph, saver_def=saver.as_saver_def(),
                clear_devices=False, clear_extraneous_savers=True)
            if not exported.graph_def.library.ListFields():
                exported.graph_def.ClearField("library")  # as the graph= path writes it
    except LpoError:
        raise
    except Exception as e:  # noqa: BLE001 - TF raises ValueError, KeyError, TypeError, OpError, ...
        if source is not None:
            rebuild_saver(source)  # raises ModelFormatError when the input graph itself is broken
            raise InternalError(f"lpo produced a graph TensorFlow cannot import ({_first_line(e)}); "
                                "please report this bug with the --debug traceback") from e
        raise ModelFormatError(f"TensorFlow cannot import the model's graph: {_first_line(e)}. The SavedModel "
                               "is corrupt or was edited by hand: re-export it") from e
    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(mg)
    out.graph_def.CopyFrom(exported.graph_def)
    out.saver_def.CopyFrom(exported.saver_def)
    out.meta_info_def.stripped_op_list.CopyFrom(exported.meta_info_def.stripped_op_list)
    for key in list(out.collection_def):
        if key not in exported.collection_def:
            del out.collection_def[key]
    for key, col in exported.collection_def.items():
        if key in stripped.collection_def:
            out.collection_def[key].CopyFrom(stripped.collection_def[key])
        else:
            out.collection_def[key].CopyFrom(col)
    return out


def write_saved_model(sm: saved_model_pb2.SavedModel, out_dir: str) -> None:
    """Write ``sm`` as ``out_dir/saved_model.pb`` (deterministic serialization)."""
    data = sm.SerializeToString(deterministic=True)
    with open(os.path.join(out_dir, SAVED_MODEL_PB), "wb") as f:
        f.write(data)


def copy_model_files(src: str, dst: str, skip_extra: set[str] | None = None) -> None:
    """Copy everything of SavedModel ``src`` except the graph and variables into ``dst``."""
    skip_extra = skip_extra or set()
    for name in sorted(os.listdir(src)):
        if name in SKIP_COPY:
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s):
            shutil.copytree(s, d, ignore=lambda _dir, names: [n for n in names if n in skip_extra])
        else:
            shutil.copy2(s, d)
