"""Run a model on calibration data without loading its embedding tables (bounded memory).

Static INT8 calibration needs the dense layers' input activations on a few batches,
not the whole model in memory. :class:`CompactRunner` gets them with peak memory that
follows the calibration data and the largest table, not the sum of the tables:

1. **Graph**: each row lookup of a table (found by the embedding pass) becomes a
   placeholder -- a gather's output, or a segment reduction's ``data``/``indices``
   inputs (fed with the gathered rows and ``0..n-1``, the form lpo's own rewrite
   uses) -- and the tables, with everything that only they feed (initializers, reads,
   checks), leave the graph; the saver is rebuilt over the remaining (dense) variables.
2. **Ids**: that model runs once per batch to fetch the ids every lookup receives.
3. **Rows**: each table (each part of a partitioned one) is read from the checkpoint
   alone and only the rows the batches look up are kept.
4. **Activations**: the model runs on each batch with those rows fed in.

A gather's output is a copy of table rows and a segment reduction sums the same rows
in the same order either way, so the activations equal those of the full model.
Pure protobuf edits plus a private session (:class:`lpo.validation.runner.SignatureRunner`).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from lpo.core.graph import dtype_attr, make_node, parse_input
from lpo.options import DEFAULT_TAGS
from lpo.core.savedmodel import VARIABLES_COLLECTION, VarSpec, rebuild_saver, write_saved_model

log = logging.getLogger(__name__)

GATHER_OPS = ("ResourceGather", "GatherV2", "Gather")
_VARDEF_COLLECTIONS = (VARIABLES_COLLECTION, "trainable_variables", "local_variables", "model_variables")


@dataclass
class _Lookup:
    node: str
    kind: str  # "gather" or "segment"
    part: VarSpec
    ids: str  # tensor name of the ids it reads
    ids_dtype: object = None


def _tensor(ref: str) -> str:
    name, port, _ = parse_input(ref)
    return f"{name}:{port}"


def _output_shape(node):
    shapes = node.attr["_output_shapes"].list.shape if "_output_shapes" in node.attr else []
    return shapes[0] if shapes else None


def compact_meta_graph(mg: meta_graph_pb2.MetaGraphDef, tables) -> tuple[meta_graph_pb2.MetaGraphDef, list[_Lookup]]:
    """Return ``mg`` with the lookups of ``tables`` as placeholders and the tables removed, and the lookups."""
    import tensorflow as tf

    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(mg)
    nodes = {n.name: n for n in out.graph_def.node}
    lookups: list[_Lookup] = []
    table_nodes = set()
    for table in tables:
        for part in table.parts:
            table_nodes.add(part.node)
            for name in table.lookups.get(part.node, []):
                node = nodes[name]
                if node.op in GATHER_OPS:
                    dt = node.attr["dtype" if node.op == "ResourceGather" else "Tparams"].type
                    ids_t = node.attr["Tindices"].type
                    lookups.append(_Lookup(name, "gather", part, _tensor(node.input[1]), ids_t))
                    ph = make_node("Placeholder", name, device=node.device, dtype=dtype_attr(dt))
                    shape = _output_shape(node)
                    if shape is not None:
                        ph.attr["shape"].shape.CopyFrom(shape)
                    node.CopyFrom(ph)
                else:  # SparseSegment*: feed data (the gathered rows) and indices (0..n-1)
                    ids_t = node.attr["Tidx"].type
                    lookups.append(_Lookup(name, "segment", part, _tensor(node.input[1]), ids_t))
                    rows = make_node("Placeholder", name + "/lpo_calib_rows", device=node.device,
                                     dtype=dtype_attr(node.attr["T"].type))
                    pos = make_node("Placeholder", name + "/lpo_calib_pos", device=node.device,
                                    dtype=dtype_attr(ids_t))
                    nodes[rows.name], nodes[pos.name] = rows, pos
                    node.input[0], node.input[1] = rows.name, pos.name
                    out.graph_def.node.add().CopyFrom(rows)
                    out.graph_def.node.add().CopyFrom(pos)
    nodes = {n.name: n for n in out.graph_def.node}
    # the tables and everything their values still reach (initializers, reads, checks)
    consumers: dict[str, list[str]] = {}
    for n in out.graph_def.node:
        for inp in n.input:
            src, _port, ctrl = parse_input(inp)
            if not ctrl:
                consumers.setdefault(src, []).append(n.name)
    gone, stack = set(), list(table_nodes)
    while stack:
        n = stack.pop()
        if n in gone:
            continue
        gone.add(n)
        stack.extend(consumers.get(n, []))
    keep = [n for n in out.graph_def.node if n.name not in gone]
    for n in keep:
        if "_class" in n.attr:  # colocation with a removed table (its initializer ops)
            locs = [s for s in n.attr["_class"].list.s if s.decode().removeprefix("loc:@") not in gone]
            if len(locs) != len(n.attr["_class"].list.s):
                if locs:
                    del n.attr["_class"].list.s[:]
                    n.attr["_class"].list.s.extend(locs)
                else:
                    del n.attr["_class"]
        if any(inp.startswith("^") and inp[1:] in gone for inp in n.input):
            inputs = [inp for inp in n.input if not (inp.startswith("^") and inp[1:] in gone)]
            del n.input[:]
            n.input.extend(inputs)
    del out.graph_def.node[:]
    out.graph_def.node.extend(keep)
    for key in _VARDEF_COLLECTIONS:
        col = out.collection_def.get(key)
        if col is None or not col.bytes_list.value:
            continue
        kept = []
        for raw in col.bytes_list.value:
            vd = variable_pb2.VariableDef()
            vd.ParseFromString(raw)
            if vd.variable_name.split(":")[0] not in gone:
                kept.append(raw)
        del col.bytes_list.value[:]
        col.bytes_list.value.extend(kept)
    for key in list(out.collection_def):
        col = out.collection_def[key]
        if col.node_list.value:
            vals = [v for v in col.node_list.value if parse_input(v)[0] not in gone]
            del col.node_list.value[:]
            col.node_list.value.extend(vals)
    for sig in out.signature_def.values():
        for info in list(sig.outputs.values()):
            if parse_input(info.name)[0] in gone:
                raise ValueError(f"signature output {info.name} reads a table directly")
    del tf
    return rebuild_saver(out), lookups


class CompactRunner:
    """A model's serving signature run on calibration batches, its tables read row by row.

    ``fetch(tensors)`` returns, per batch, the values of graph ``tensors`` (e.g. the
    dense layers' inputs), equal to those of the full model.
    """

    def __init__(self, model_path: str, sm: saved_model_pb2.SavedModel, mg: meta_graph_pb2.MetaGraphDef, tables,
                 batches: list[dict], tags=DEFAULT_TAGS):
        from lpo.core.checkpoint import read_slice
        from lpo.core.savedmodel import variables_prefix
        from lpo.validation.runner import SignatureRunner

        self.batches = batches
        compact, self.lookups = compact_meta_graph(mg, tables)
        out = saved_model_pb2.SavedModel(saved_model_schema_version=sm.saved_model_schema_version)
        out.meta_graphs.add().CopyFrom(compact)
        self._dir = tempfile.mkdtemp(prefix="lpo-calib-")
        try:
            write_saved_model(out, self._dir)
            for name in ("variables", "assets", "assets.extra"):
                src = os.path.join(model_path, name)
                if os.path.exists(src):
                    os.symlink(os.path.abspath(src), os.path.join(self._dir, name))
            self.runner = SignatureRunner(self._dir, tags=tags)
            ids_names = sorted({lk.ids for lk in self.lookups})
            ids = [dict(zip(ids_names, self.runner.fetch(b, ids_names))) if ids_names else {} for b in batches]
            self.feeds: list[dict] = [{} for _ in batches]
            prefix = variables_prefix(model_path)
            by_part: dict[tuple[str, str], list[_Lookup]] = {}
            for lk in self.lookups:
                by_part.setdefault((lk.part.key, lk.part.slice), []).append(lk)
            for (key, sl), lks in sorted(by_part.items()):
                table = read_slice(prefix, key, sl, "float32")  # one table (part) at a time
                for i, b in enumerate(ids):
                    for lk in lks:
                        idx = np.asarray(b[lk.ids])
                        rows = np.take(table, idx.reshape(-1).astype(np.int64), axis=0)
                        if lk.kind == "gather":
                            self.feeds[i][lk.node + ":0"] = rows.reshape(idx.shape + table.shape[1:])
                        else:
                            self.feeds[i][lk.node + "/lpo_calib_rows:0"] = rows
                            self.feeds[i][lk.node + "/lpo_calib_pos:0"] = np.arange(idx.size, dtype=idx.dtype)
                del table
        except Exception:
            self.close()
            raise
        log.debug("compact calibration model: %d lookups fed from %d table parts", len(self.lookups),
                  len({(lk.part.key, lk.part.slice) for lk in self.lookups}))

    def fetch(self, tensors: list[str]):
        """Yield, batch by batch, the values of graph ``tensors``."""
        for batch, extra in zip(self.batches, self.feeds):
            feed = self.runner.feed_dict(batch)
            feed.update(extra)
            yield self.runner.session.run(list(tensors), feed)

    def close(self) -> None:
        """Release the session and the temporary model."""
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "CompactRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- outlier-proof activations
def layer_output_error(conv, x: np.ndarray, weight: np.ndarray, lo: float, hi: float) -> float:
    """:func:`lpo.numerics.observers.output_error` of dense conversion ``conv`` on its inputs ``x``.

    ``weight`` is the layer's float32 weight; it is quantized as the conversion stores it
    (per output channel), so the number is what 8-bit activations add to weight-only INT8.
    """
    from lpo.numerics.observers import output_error
    from lpo.numerics.quant import dequantize_int8, quantize_int8

    vc = conv.variables[0]
    w = dequantize_int8(*quantize_int8(weight, vc.axis, name=vc.key)).astype(np.float64)
    if vc.axis == 0:  # transpose_b: [units, in]
        w = w.T
    return output_error(x, w, lo, hi)


def activation_gate_misses(error: dict | None, gate=None) -> list[str]:
    """The :class:`lpo.options.ActivationGate` limits a layer's ``calib_error`` exceeds (empty: safe)."""
    from lpo.options import ACTIVATION_GATE

    gate = gate or ACTIVATION_GATE
    if not error:
        return []
    out = []
    if error.get("clipped", 0.0) > gate.max_clip_rate:
        out.append(f"{100 * error['clipped']:.3g}% of inputs clipped > {100 * gate.max_clip_rate:.3g}%")
    rel = error.get("output_rel_rmse")
    if rel is not None and rel > gate.max_output_rel_rmse:
        out.append(f"output error {100 * rel:.3g}% > {100 * gate.max_output_rel_rmse:.3g}%")
    return out


def gate_activations(convs, dequantize_at_load: bool, gate=None) -> int:
    """Move calibrated INT8 layers that ``int8_dense='auto'`` chose and that miss the gate to ``weight_only``.

    Each conversion's ``calib_error`` gets ``gate`` (``pass``, ``fallback`` or ``over`` for a
    form the user asked for, which is kept with a warning). Returns the number moved.
    """
    moved = 0
    for c in convs:
        if c.calib_error is None:
            continue
        misses = activation_gate_misses(c.calib_error, gate)
        if not misses:
            c.calib_error["gate"] = "pass"
        elif c.targets.get("act_gate"):
            log.info("  %s: INT8 %s -> weight_only (%s)", c.node, c.mode, "; ".join(misses))
            c.calib_error["gate"] = "fallback"
            c.calib_error["fallback_from"] = c.mode
            c.mode, c.activation_range = "weight_only", None
            c.targets["dequantize_at_load"] = bool(dequantize_at_load)
            moved += 1
        else:
            c.calib_error["gate"] = "over"
            log.warning("  %s: INT8 %s was asked for but its 8-bit activations miss the gate (%s); "
                        "int8_dense='auto' or 'weight_only' keeps single predictions close to FP32", c.node,
                        c.mode, "; ".join(misses))
    return moved
