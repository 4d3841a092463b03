"""DeepRec EmbeddingVariables (EVs): find ``KvVarHandleOp -> KvResourceGather`` lookups and
rewrite them to the low-precision EV form of DeepRec's own tool.

The form is that of ``embedding_var_opt`` in DeepRec-AI/DeepRec
``tools/low_precision_optimize/low_precision_optimize.py`` (commit 20f292da). For each EV
(each part of a partitioned EV) ``E`` at dtype ``d`` (``int8``, ``bf16`` or ``fp16``):

* a new EV ``E/<d>_data`` (values of dtype d; same key type, embedding dim and EV attrs,
  zero-initialized as the tool's ``tf.zeros_initializer``) replaces ``E``: its
  ``InitializeKvVariableOp``, ``KvVarIsInitializedOp`` and saver entries follow
  (``lpo.core.deeprec.rename_ev_in_saver``); checkpoint tensors ``E/<d>_data-keys``, ...;
* INT8 adds the float32 variable ``E/int8_scale`` of shape ``[dim]`` (one scale per dim);
* each lookup ``G = KvResourceGather(E, ids, default)`` becomes
  ``G/<d> = KvResourceGather(E/<d>_data, ids, default')`` with ``default'`` = G's default
  tensor (INT8: ``ClipByValue(default / scale, -128, 127)``) cast to d when
  ``is_use_default_value_tensor``, else ``Const(1, d)``; then ``G/cast_to_fp32`` (Cast to
  float32) and, for INT8, ``G/rescale = Mul(cast, E/int8_scale)``. G's consumers read the
  float32 result and G is removed.

Differences from the tool, on purpose: the new gather keeps G's ``validate_indices`` and
``is_inference`` (the tool resets them to the op defaults); an EV read by several
lookups is rewritten at every lookup (the tool skips it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tensorflow.core.framework import types_pb2, variable_pb2

from lpo.core.deeprec import (EV_GATHER, EV_HANDLE, EV_INIT, EV_IS_INIT, EvSpec, ev_specs, rename_ev_in_saver,
                              saver_form_problem)
from lpo.core.graph import DT, GraphMatcher, OpTypePattern, const_value, dtype_attr, make_const, make_node, parse_input
from lpo.core.plan import Conversion, VarConversion
from lpo.errors import ConfigError, ModelFormatError
from lpo.passes.registry import register
from lpo.passes.surgery import Surgery

log = logging.getLogger(__name__)

KIND = "ev"
#: The dtypes DeepRec's tool converts EVs to.
EV_DTYPES = ("BF16", "FP16", "INT8")
_NP = {"INT8": np.int8, "FP16": np.float16}
_SMALL_CONST = 1000  # elements; larger zero initializers are a Fill, as tf.zeros makes them


@dataclass
class EvCandidate:
    """An EV (all its parts) whose every reader outside the saver is a row lookup."""

    name: str
    dim: int
    rows: int
    parts: list[EvSpec]
    lookups: dict[str, list[str]] = field(default_factory=dict)
    kind: str = KIND

    @property
    def shape(self) -> list[int]:
        return [self.rows, self.dim]

    @property
    def nbytes(self) -> int:
        return max(0, self.rows) * self.dim * 4


# an EV handle looked up by key: KvResourceGather(resource, indices, default_value)
LOOKUP = OpTypePattern(EV_GATHER, "lookup", (OpTypePattern(EV_HANDLE, "ev"),))


def _readers(s: Surgery, spec: EvSpec, matched: list[str]) -> tuple[list[str], str | None]:
    """Return (lookups, why not) for EV part ``spec``: why not is None when every reader is supported."""
    idx = s.index
    lookups, inits = [], 0
    for c in idx.consumers(spec.node):
        if s.is_saver_node(c.name):
            continue
        first = parse_input(c.input[0])[0] if c.input else ""
        if c.name in matched:
            lookups.append(c.name)
        elif c.op == EV_INIT and first == spec.node and parse_input(c.input[1])[0] == spec.node:
            inits += 1
        elif c.op == EV_IS_INIT:
            continue
        else:
            return [], f"{c.name} ({c.op}) reads it"
    if inits != 1:
        return [], f"it has {inits} InitializeKvVariableOp (primary EVs with one initializer are supported)"
    if not lookups:
        return [], "no KvResourceGather reads it"
    problem = saver_form_problem(idx, s.is_saver_node, spec.node)
    if problem:
        return [], problem
    return lookups, None


def _rows(prefix: str | None, parts: list[EvSpec]) -> int:
    if not prefix:
        return -1
    from lpo.core.checkpoint import ev_rows

    return ev_rows(prefix, [p.name for p in parts])


def find(s: Surgery, specs) -> list[EvCandidate]:
    """Return the float32 EVs of the graph, parts grouped by their full name."""
    del specs  # EVs are not in variable_specs: they are tensor groups in the checkpoint
    matched: dict[str, list[str]] = {}
    for m in GraphMatcher(s.index, LOOKUP).match_all("lookup"):
        matched.setdefault(m["ev"].name, []).append(m["lookup"].name)
    groups: dict[str, list[EvSpec]] = {}
    for spec in ev_specs(s.mg, s.index).values():
        groups.setdefault(spec.full_name, []).append(spec)
    out = []
    for full, parts in sorted(groups.items()):
        parts = sorted(parts, key=lambda p: (p.partition, p.node))
        lookups, why = {}, None
        for p in parts:
            if p.dtype != "float32" or p.dim <= 0:
                why = f"part {p.node} is {p.dtype} with embedding dim {p.dim}"
                break
            if p.name != p.node:  # DeepRec's tool names the new tensors after the node, as its saver does
                why = f"its saver restores {p.node} from tensors named {p.name!r}, not after the node"
                break
            found, why = _readers(s, p, matched.get(p.node, []))
            if why:
                why = f"{p.node}: {why}"
                break
            lookups[p.node] = found
        if why:
            log.info("EmbeddingVariable %s is not optimizable: %s", full, why)
            continue
        out.append(EvCandidate(full, parts[0].dim, _rows(getattr(s, "checkpoint_prefix", None), parts), parts,
                               lookups))
    return out


def describe(cand: EvCandidate) -> str:
    """Return the ``lpo inspect`` detail: DeepRec EV, key type, parts, rows."""
    keys = cand.parts[0].key_dtype
    parts = f", {len(cand.parts)} parts" if len(cand.parts) > 1 else ""
    rows = f", {cand.rows} rows" if cand.rows >= 0 else ", rows unknown (EV tensors missing from the checkpoint)"
    return f"EmbeddingVariable ({keys} keys{parts}{rows})"


def new_name(part: str, dtype: str) -> str:
    """The name DeepRec's tool gives the low-precision EV of ``part``: ``<part>/<dtype>_data``."""
    return f"{part}/{dtype.lower()}_data"


def plan(cand: EvCandidate, dtype: str, options) -> Conversion:
    """Return the Conversion of EV ``cand`` to ``dtype`` (INT8: DeepRec's per-dim scale).

    Raises ConfigError for a dtype DeepRec has no EV format for (INT4).
    """
    if dtype not in EV_DTYPES:
        raise ConfigError(f"EmbeddingVariable {cand.name!r} cannot be {dtype}: DeepRec EVs take "
                          f"{', '.join(EV_DTYPES)} (DeepRec's own formats). Give it one of those in opt_config")
    if dtype == "INT8" and options.embedding_scheme != "per_dim":
        log.info("EmbeddingVariable %s: INT8 EVs use DeepRec's per-dim scale (embedding_scheme=%s applies to "
                 "ordinary tables)", cand.name, options.embedding_scheme)
    variables = []
    for p in cand.parts:
        v = VarConversion(key=p.name, slice="", shape=[-1, p.dim], role="ev", dtype=dtype,
                          dst_key=new_name(p.node, dtype))
        if dtype == "INT8":
            v.scale_key, v.scale_shape, v.axis = f"{p.node}/int8_scale", [p.dim], 1
        variables.append(v)
    return Conversion(kind=KIND, node=cand.name, dtype=dtype, scheme="per_dim" if dtype == "INT8" else "cast",
                      variables=variables,
                      targets={"parts": [p.node for p in cand.parts], "lookups": cand.lookups})


# --------------------------------------------------------------------------- rewrite
def _static_shape(s: Surgery, tensor: str, depth: int = 0) -> list[int] | None:
    """Best-effort static shape of ``tensor`` (Const, Fill/random ops with a Const shape, elementwise)."""
    node = s.index.node(parse_input(tensor)[0])
    if node.op == "Const":
        return [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
    if node.op in ("Fill", "TruncatedNormal", "RandomUniform", "RandomStandardNormal") and node.input:
        v = const_value(s.index.input_node(node, 0))
        return [int(d) for d in np.asarray(v).reshape(-1)] if v is not None else None
    if node.op in ("Identity", "Mul", "Add", "AddV2", "Sub", "RealDiv") and node.input and depth < 8:
        for i in range(len([x for x in node.input if not x.startswith("^")])):
            shape = _static_shape(s, node.input[i], depth + 1)
            if shape:
                return shape
    return None


def _zeros(s: Surgery, name: str, shape: list[int], dt: int, device: str) -> str:
    idx = s.index
    if dt == types_pb2.DT_BFLOAT16:
        from lpo.numerics.quant import _bf16_dtype

        np_dt = _bf16_dtype()
    else:
        np_dt = _NP[{types_pb2.DT_INT8: "INT8", types_pb2.DT_HALF: "FP16"}[dt]]
    if int(np.prod(shape)) <= _SMALL_CONST:
        return idx.add(make_const(name, np.zeros(shape, np_dt), device=device)).name
    dims = idx.add(make_const(f"{name}/shape_as_tensor", np.array(shape, np.int32), device=device))
    zero = idx.add(make_const(f"{name}/Const", np.zeros((), np_dt), device=device))
    idx.add(make_node("Fill", name, [dims.name, zero.name], device=device, T=dtype_attr(dt),
                      index_type=dtype_attr(types_pb2.DT_INT32)))
    return name


def _rename_class(node, old: str, new: str) -> None:
    if "_class" in node.attr:
        vals = [v.replace(f"loc:@{old}".encode(), f"loc:@{new}".encode()) if v == f"loc:@{old}".encode() else v
                for v in node.attr["_class"].list.s]
        del node.attr["_class"].list.s[:]
        node.attr["_class"].list.s.extend(vals)


def _clone(s: Surgery, node, name: str, old: str, new: str, dt: int):
    """Copy ``node`` as ``name`` with inputs from ``old`` moved to ``new`` and ``dtype`` = dt."""
    from tensorflow.core.framework import node_def_pb2

    c = node_def_pb2.NodeDef()
    c.CopyFrom(node)
    c.name = name
    for i, inp in enumerate(c.input):
        src, port, ctrl = parse_input(inp)
        if src == old:
            c.input[i] = "^" + new if ctrl else (new if port == 0 else f"{new}:{port}")
    if "dtype" in c.attr:
        c.attr["dtype"].type = dt
    _rename_class(c, old, new)
    return s.index.add(c)


def _moved(name: str, old: str, new: str) -> str:
    return new + name[len(old):] if name.startswith(old + "/") else f"{new}/{name.rsplit('/', 1)[-1]}"


def _rewire(s: Surgery, mapping: dict[str, str]) -> None:
    """Point every data and control input reading a node of ``mapping`` at its replacement."""
    idx = s.index
    for name in list(idx.order):
        if name not in idx.nodes or name in mapping:
            continue
        node = idx.node(name)
        changed = False
        for i, inp in enumerate(node.input):
            src, port, ctrl = parse_input(inp)
            if src in mapping:
                dst = mapping[src]
                node.input[i] = "^" + dst if ctrl else (dst if port == 0 else f"{dst}:{port}")
                changed = True
        if changed:
            idx.replace(node)
    for sig in s.mg.signature_def.values():
        for info in list(sig.inputs.values()) + list(sig.outputs.values()):
            src, port, _ = parse_input(info.name)
            if src in mapping:
                info.name = f"{mapping[src]}:{port}"


def _replace_variable_defs(s: Surgery, old: str, vd: variable_pb2.VariableDef) -> None:
    """Put ``vd`` where the VariableDef of ``old`` was, in every collection."""
    for i, d in enumerate(s.vars.defs):
        if d.variable_name == old + ":0":
            s.vars.defs[i] = vd
    for key, col in s.mg.collection_def.items():
        if key == "variables" or not col.bytes_list.value:
            continue
        values = list(col.bytes_list.value)
        for i, raw in enumerate(values):
            d = variable_pb2.VariableDef()
            try:
                d.ParseFromString(raw)
            except Exception:  # noqa: BLE001 - not a VariableDef collection
                break
            if d.variable_name == old + ":0":
                values[i] = vd.SerializeToString(deterministic=True)
        del col.bytes_list.value[:]
        col.bytes_list.value.extend(values)


def _prune(s: Surgery, roots: list[str], scope: str, keep: str) -> None:
    """Remove nodes under ``scope`` reachable backwards from ``roots`` that nothing reads any more."""
    idx = s.index
    seen, stack = set(), [parse_input(r)[0] for r in roots]
    while stack:
        n = stack.pop()
        if n in seen or n not in idx.nodes or not n.startswith(scope) or n.startswith(keep):
            continue
        seen.add(n)
        stack.extend(parse_input(i)[0] for i in idx.node(n).input)
    changed = True
    while changed:
        changed = False
        for n in sorted(seen):
            if n in idx.nodes and not idx.uses.get(n) and not idx.control_uses.get(n):
                idx.remove(n)
                changed = True


def _lookup(s: Surgery, gname: str, new: str, dt: int, dtype: str, scale: str | None) -> str:
    """Rewrite lookup ``gname`` to read EV ``new``; return the float32 result's node name."""
    idx = s.index
    g = idx.node(gname)
    dev, low = g.device, dtype.lower()
    base = idx.unique_name(f"{gname}/{low}")
    if g.attr["is_use_default_value_tensor"].b:
        t = g.input[2]
        if scale is not None:
            f32 = dtype_attr(types_pb2.DT_FLOAT)
            div = idx.add(make_node("RealDiv", f"{base}/default_value/truediv", [t, scale], device=dev, T=f32))
            lo = idx.add(make_const(f"{base}/default_value/clip_value_min", np.array(-128, np.float32), dev))
            hi = idx.add(make_const(f"{base}/default_value/clip_value_max", np.array(127, np.float32), dev))
            t = idx.add(make_node("ClipByValue", f"{base}/default_value/ClipByValue", [div.name, lo.name, hi.name],
                                  device=dev, T=f32)).name
        default = s.cast_node(f"{base}/default_value/Cast", t, types_pb2.DT_FLOAT, dt, dev)
    else:
        np_dt = _NP.get(dtype)
        if np_dt is None:
            from lpo.numerics.quant import _bf16_dtype

            np_dt = _bf16_dtype()
        default = idx.add(make_const(f"{base}/default_value", np.array(1, np_dt), dev)).name
    gather = make_node(EV_GATHER, base, [new, g.input[1], default], device=dev)
    gather.attr.MergeFrom(g.attr)
    gather.attr["dtype"].CopyFrom(dtype_attr(dt))
    idx.add(gather)
    out = s.cast_node(idx.unique_name(f"{gname}/cast_to_fp32"), base, dt, types_pb2.DT_FLOAT, dev)
    if scale is not None:
        out = idx.add(make_node("Mul", idx.unique_name(f"{gname}/rescale"), [out, scale], device=dev,
                                T=dtype_attr(types_pb2.DT_FLOAT))).name
    return out


def rewrite(s: Surgery, conv: Conversion) -> None:
    """Replace every part of the EV of ``conv`` by its low-precision EV (see the module docstring)."""
    idx = s.index
    dt = DT[conv.dtype]
    by_key = {v.key: v for v in conv.variables}
    for part in conv.targets["parts"]:
        vc = by_key[part]
        new = vc.dst_key
        if new in idx:
            raise ModelFormatError(f"the graph already has a node {new}; lpo cannot add the {conv.dtype} "
                                   f"EmbeddingVariable of {part} under DeepRec's name")
        old = idx.node(part)
        handle = _clone(s, old, new, part, new, dt)
        shared = old.attr["shared_name"].s.decode() if "shared_name" in old.attr else ""
        handle.attr["shared_name"].s = (new if shared in ("", part) else shared + new[len(part):]).encode()
        init = next(c for c in idx.consumers(part) if c.op == EV_INIT and not s.is_saver_node(c.name))
        shape = _static_shape(s, init.input[2])
        if not shape:
            rows = init.attr["default_value_dim"].i if "default_value_dim" in init.attr else 4096
            shape = [rows, vc.shape[1]]
        zeros = _zeros(s, f"{new}/Initializer/zeros", shape, dt, old.device)
        mapping = {part: new}
        new_init = _clone(s, init, _moved(init.name, part, new), part, new, dt)
        new_init.input[2] = zeros
        idx.replace(new_init)
        mapping[init.name] = new_init.name
        for c in idx.consumers(part):
            if c.op == EV_IS_INIT and not s.is_saver_node(c.name):
                mapping[c.name] = _clone(s, c, _moved(c.name, part, new), part, new, dt).name
        scale = None
        if conv.dtype == "INT8":
            scale = s.add_variable(vc.scale_key, types_pb2.DT_FLOAT, vc.scale_shape, resource=False,
                                   device=old.device)
        for gname in conv.targets["lookups"][part]:
            mapping[gname] = _lookup(s, gname, new, dt, conv.dtype, scale)
        rename_ev_in_saver(idx, s.is_saver_node, part, new, dt, zeros)
        _rewire(s, mapping)
        vd = next((d for d in s.vars.defs if d.variable_name == part + ":0"), None)
        if vd is not None:
            nvd = variable_pb2.VariableDef()
            nvd.CopyFrom(vd)
            nvd.variable_name = new + ":0"
            nvd.initializer_name = new_init.name
            nvd.initial_value_name = zeros + ":0"
            snap = parse_input(vd.snapshot_name)[0] if vd.snapshot_name else part
            nvd.snapshot_name = mapping.get(snap, new) + ":0"
            _replace_variable_defs(s, part, nvd)
        value_root = init.input[2]
        for name in [part, init.name, *[k for k in mapping if k not in (part, init.name)]]:
            if name in idx.nodes:
                idx.remove(name)
        _prune(s, [value_root], part + "/", new)


register(KIND, find=find, describe=describe, plan=plan, rewrite=rewrite, label="embedding variable",
         fallbacks={"INT4": "INT8"})  # DeepRec has no INT4 EV: its INT8
