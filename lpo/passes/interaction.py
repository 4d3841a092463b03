"""Fold a constant interaction mask into static gather indices (a structural pass: no variables, exact).

DeepRec modelzoo's DLRM (``interaction_op='dot'``) and many TF1 recommenders keep the strictly
lower triangle of the pairwise dot products ``x x^T`` [B, N, N] with a mask rebuilt on every run::

    ones = ones_like(x)                       # OnesLike, or Fill(Shape(x), 1)
    mask = cast(ones - band_part(ones, 0, -1), bool)   # or band_part(ones, lo, hi); the Cast is optional
    out = boolean_mask(x, mask)               # Reshape(x, [-1]) -> GatherV2(., Squeeze(Where(Reshape(mask, [-1]))), 0)

(TensorFlow Recommenders' ``DotInteraction`` passes the float 0/1 mask to ``boolean_mask``
uncast: ``Where`` keeps its nonzero entries, the same positions.)

The mask depends only on the static last two dimensions of ``x`` (its values are ones), so its
kept positions are known at rewrite time: for each [N, M] matrix the row-major flat positions
``k`` where ``MatrixBandPart``'s band test (or its complement) holds. ``Where`` over the
flattened [B, N, M] mask lists ``b * N * M + k`` in order, so the ``GatherV2`` output equals::

    Reshape(GatherV2(Reshape(x, [-1, N * M]), Const(k), axis=1), [-1])

element for element (a gather copies values: bit-equal at every data type). The ``GatherV2``
keeps its name, so its consumers are untouched; the mask nodes left without consumers are
removed. Pattern: :data:`PATTERNS`; the static shape comes from ``_output_shapes`` or, when the
graph has none, from TensorFlow's shape inference over the tensor's producers.

:func:`fold_interaction_masks` is registered as the structural pass ``interaction``: ``optimize()``
runs it before ``find`` and records its entries in the manifest's ``structural``.
"""
from __future__ import annotations

import logging

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.core.graph import (
    ANY, GraphMatcher, OpTypePattern, const_value, dtype_attr, make_const, make_node, parse_input, tensor_ref,
)
from lpo.passes.registry import register_structural
from lpo.passes.surgery import Surgery

log = logging.getLogger(__name__)

NAME = "interaction"
#: ops that only compute the mask or the flat view: removed once nothing reads them
MASK_OPS = ("Const", "Shape", "StridedSlice", "Prod", "Pack", "ConcatV2", "Reshape", "Where", "Squeeze", "Cast",
            "Sub", "MatrixBandPart", "OnesLike", "Fill", "Identity")


def _band(ones: str) -> OpTypePattern:
    return OpTypePattern("MatrixBandPart", "band", (OpTypePattern("OnesLike|Fill", ones), OpTypePattern("Const", "lower"),
                                                    OpTypePattern("Const", "upper")))


def _root(mask: OpTypePattern) -> OpTypePattern:
    """``GatherV2(Reshape(x), Squeeze(Where(Reshape([Cast](mask), [-1]))), 0)``: tf.boolean_mask over every axis."""
    cast = OpTypePattern("Cast", "cast", (mask,), optional=True)
    where = OpTypePattern("Where", "where", (OpTypePattern("Reshape", "mask_flat", (cast, OpTypePattern("Const",
                                                                                                        "mask_shape"))),))
    return OpTypePattern("GatherV2", "gather", (OpTypePattern("Reshape", "flat", (OpTypePattern("*", "tensor"), ANY)),
                                                OpTypePattern("Squeeze", "squeeze", (where,)),
                                                OpTypePattern("Const", "axis")))


#: the mask is ``ones - band_part(ones, lo, hi)`` (DeepRec's strictly lower triangle) or ``band_part(ones, lo, hi)``
PATTERNS = (_root(OpTypePattern("Sub", "complement", (OpTypePattern("OnesLike|Fill", "ones_sub"), _band("ones")))),
            _root(_band("ones")))


def kept_positions(n: int, m: int, lower: int, upper: int, complement: bool) -> np.ndarray:
    """Row-major flat positions of an [n, m] matrix that ``MatrixBandPart(ones, lower, upper)`` keeps (or drops)."""
    i, j = np.indices((n, m))
    band = ((lower < 0) | (i - j <= lower)) & ((upper < 0) | (j - i <= upper))
    return np.flatnonzero((~band if complement else band).reshape(-1)).astype(np.int32)


def _scalar(node) -> int | None:
    v = const_value(node)
    return int(v) if v is not None and v.size == 1 and v.dtype.kind in "iu" else None


def _ones_of(s: Surgery, ones, tensor: str) -> bool:
    """True when ``ones`` is ``OnesLike(tensor)`` or ``Fill(Shape(tensor), 1)``."""
    if ones.op == "OnesLike":
        return _same(ones.input[0], tensor)
    shape, value = s.index.input_node(ones, 0), const_value(s.index.input_node(ones, 1))
    return shape.op == "Shape" and _same(shape.input[0], tensor) and value is not None and value.size == 1 \
        and float(value.reshape(-1)[0]) == 1.0


def _same(a: str, b: str) -> bool:
    pa, pb = parse_input(a), parse_input(b)
    return pa[:2] == pb[:2]


def static_shape(s: Surgery, tensor: str) -> list[int] | None:
    """The static shape of ``tensor`` (``-1``: unknown dim), from ``_output_shapes`` or shape inference; None if unknown rank."""
    name, port, _ = parse_input(tensor)
    node = s.index.node(name)
    shapes = node.attr["_output_shapes"].list.shape if "_output_shapes" in node.attr else []
    if len(shapes) > port and not shapes[port].unknown_rank:
        return [d.size for d in shapes[port].dim]
    return _inferred_shape(s, name, port)


def _inferred_shape(s: Surgery, name: str, port: int) -> list[int] | None:
    """TensorFlow's shape inference over the producers of ``name`` (imported into a scratch graph)."""
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2

    idx, seen, todo = s.index, set(), [name]
    while todo:
        n = todo.pop()
        if n in seen or n not in idx:
            continue
        seen.add(n)
        todo.extend(parse_input(i)[0] for i in idx.node(n).input)
    gd = graph_pb2.GraphDef()
    gd.versions.CopyFrom(s.mg.graph_def.versions)
    gd.library.CopyFrom(s.mg.graph_def.library)
    gd.node.extend(idx.node(n) for n in idx.order if n in seen)
    try:
        with tf.Graph().as_default() as g:
            tf.graph_util.import_graph_def(gd, name="")
            shape = g.get_operation_by_name(name).outputs[port].shape
    except (ValueError, KeyError, TypeError, tf.errors.OpError) as e:  # ops this TF lacks, a broken graph
        log.debug("no static shape for %s: %s", name, e)
        return None
    return None if shape.rank is None else [-1 if d is None else int(d) for d in shape.as_list()]


def _fold_of(s: Surgery, m) -> dict | None:
    """The fold a match allows (``{"tensor", "shape", "lower", "upper", "complement", "kept"}``), or None."""
    gather, tensor = m["gather"], m["flat"].input[0]
    ones = m["ones"]
    if "ones_sub" in m and m["ones_sub"].name != ones.name:
        return None
    lower, upper = _scalar(m["lower"]), _scalar(m["upper"])
    squeeze = list(m["squeeze"].attr["squeeze_dims"].list.i)
    mask_shape = const_value(m["mask_shape"])
    if (lower is None or upper is None or _scalar(m["axis"]) != 0 or gather.attr["batch_dims"].i != 0
            or squeeze not in ([1], [-1]) or mask_shape is None or mask_shape.reshape(-1).tolist() != [-1]
            or not _ones_of(s, ones, tensor)):
        return None
    shape, flat = static_shape(s, tensor), static_shape(s, tensor_ref(m["flat"].name))
    if not shape or len(shape) < 2 or min(shape[-2:]) < 1 or flat is None or len(flat) != 1:
        return None
    n, cols = shape[-2:]
    kept = kept_positions(n, cols, lower, upper, "complement" in m)
    return {"tensor": tensor, "shape": [n, cols], "lower": lower, "upper": upper, "complement": "complement" in m,
            "kept": int(kept.size)}


def find(s: Surgery) -> list[dict]:
    """Return one entry per constant-mask ``boolean_mask`` of the graph (nothing rewritten).

    An entry: the ``GatherV2`` ``node`` and its ``tensor``, ``shape`` ([N, M]), the band's ``lower``,
    ``upper`` and ``complement``, and the number of ``kept`` positions.
    """
    out = []
    for m in GraphMatcher(s.index, *PATTERNS).match_all("gather", lambda m: not s.is_saver_node(m["gather"].name)):
        fold = _fold_of(s, m)
        if fold is not None:
            out.append({"node": m["gather"].name, **fold})
    return out


def describe(entry: dict) -> str:
    """One line: what the fold of ``entry`` replaced."""
    what = "ones - band_part(ones" if entry["complement"] else "band_part(ones"
    return (f"boolean_mask by {what}, {entry['lower']}, {entry['upper']}) of [{entry['shape'][0]}, "
            f"{entry['shape'][1]}] -> GatherV2(axis=1) of {entry['kept']} static indices")


def fold_interaction_masks(s: Surgery) -> list[dict]:
    """Fold every constant interaction mask of ``s`` (in place); return their :func:`find` entries."""
    out = []
    for entry in find(s):
        for m, fold in _matches_at(s, entry["node"]):  # matched again: an earlier fold may have pruned nodes
            _rewrite(s, m, fold)
            out.append({"node": entry["node"], **fold})
            log.debug("interaction: %s: %s", entry["node"], describe(out[-1]))
    return out


def _rewrite(s: Surgery, m: dict, fold: dict) -> None:
    """Replace the matched ``boolean_mask`` by ``Reshape -> GatherV2(axis=1, Const) -> Reshape`` (same name)."""
    idx = s.index
    n, cols = fold["shape"]
    kept = kept_positions(n, cols, fold["lower"], fold["upper"], fold["complement"])
    old = m["gather"]
    dev, dt = old.device, old.attr["Tparams"].type
    i32 = dtype_attr(types_pb2.DT_INT32)
    base = idx.unique_name(old.name + "/lpo_fold")
    rows_shape = idx.add(make_const(f"{base}/rows_shape", np.asarray([-1, n * cols], np.int32), device=dev))
    rows = idx.add(make_node("Reshape", f"{base}/rows", [fold["tensor"], rows_shape.name], device=dev,
                             T=dtype_attr(dt), Tshape=i32))
    indices = idx.add(make_const(f"{base}/indices", kept, device=dev))
    axis = idx.add(make_const(f"{base}/axis", np.asarray(1, np.int32), device=dev))
    gathered = idx.add(make_node("GatherV2", f"{base}/gather", [rows.name, indices.name, axis.name], device=dev,
                                 Tparams=dtype_attr(dt), Tindices=i32, Taxis=i32, batch_dims=0))
    flat_shape = idx.add(make_const(f"{base}/flat_shape", np.asarray([-1], np.int32), device=dev))
    inputs = [i for i in old.input if not i.startswith("^")]
    controls = [i for i in old.input if i.startswith("^")]
    idx.remove(old.name)
    idx.add(make_node("Reshape", old.name, [gathered.name, flat_shape.name] + controls, device=dev, T=dtype_attr(dt),
                      Tshape=i32))
    _prune(s, [parse_input(i)[0] for i in inputs])


def _matches_at(s: Surgery, name: str):
    node = s.index.node(name)
    for m in GraphMatcher(s.index, *PATTERNS).match(node):
        fold = _fold_of(s, m)
        if fold is not None:
            yield m, fold
            return


def _kept_names(s: Surgery) -> set[str]:
    """Nodes a signature or a collection names: never pruned."""
    out = set()
    for sig in s.mg.signature_def.values():
        for info in list(sig.inputs.values()) + list(sig.outputs.values()):
            out.add(parse_input(info.name)[0])
    for col in s.mg.collection_def.values():
        out.update(parse_input(v)[0] for v in col.node_list.value)
    return out


def _prune(s: Surgery, names: list[str]) -> None:
    """Remove the mask ops among ``names`` and their producers that nothing reads any more."""
    idx, keep = s.index, _kept_names(s)
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in idx or name in keep or idx.node(name).op not in MASK_OPS or idx.uses[name] \
                or idx.control_uses[name]:
            continue
        node = idx.remove(name)
        todo.extend(parse_input(i)[0] for i in node.input)


register_structural(NAME, fold_interaction_masks, title="Fold interaction mask")
