"""Dense layers: ``MatMul[+BiasAdd][+Relu]`` whose weights are a variable.

Pattern: ``MatMul(a, read(W))`` with ``W`` a float32 rank-2 variable read only by
this MatMul, optionally followed by ``BiasAdd(., read(b))`` (``b`` a variable read
only there; or ``AddV2(., read(b))`` with ``b`` rank 1, the Keras ``Dense`` form) and
``Relu``, each intermediate node having a single consumer.

``tf.tensordot(x, W, axes=(-1, 0))`` on a rank-3 input (DeepCTR-style layers) lowers to
``Reshape -> MatMul -> Reshape -> BiasAdd``: a ``Reshape`` that is the MatMul's sole
consumer and whose sole consumer is the bias op is taken into the chain (only when that
bias is fused, and the bias has the layer's ``units`` values), so ``compute`` mode runs
``MatMul16 -> Reshape16 -> BiasAdd16 [-> Relu16]`` and the bias is converted with the
kernel; the other modes only touch the weight, as for any MatMul.

Where the Reshape keeps the last dimension (its shape is a constant, or a concat ending in a
constant, whose last entry is ``units``), every mode first moves it after the bias and Relu:
``MatMul -> BiasAdd[-> Relu] -> Reshape`` (the Reshape takes the chain's last name), so that
TensorFlow fuses MatMul+BiasAdd+Relu into one kernel, which it cannot do across a Reshape.

Rewrites (the last node of the chain keeps its name and float32 output):

* ``compute`` (BF16/FP16, the seed's form): ``Cast(a) -> MatMul16 -> BiasAdd16 -> Relu16 -> Cast``
* ``compute`` (INT8, real int8 kernels, oneDNN only): ``QuantizeV2(a, calibrated range, MIN_FIRST,
  quint8) -> QuantizedMatMulWithBiasAndDequantize(qint8 W) -> Mul(s) [-> Relu]``. W is stored per
  output channel (``W = q * s``, one scale per column); the kernel gets ``q`` with min_b/max_b =
  -+127 (weight scale 1), bias ``b/s + lo * colsum(q)`` and ``SCALED`` mode over ``[0, hi - lo]``:
  QuantizeV2's MIN_FIRST codes are ``(a - lo) / step``, so the kernel computes
  ``(a - lo) @ q + b/s + lo * colsum(q) = a @ q + b/s`` exactly, and the ``Mul`` by ``s`` gives
  ``a @ W + b`` (Relu commutes with it, s > 0). The range is the calibrated one nudged like
  FakeQuantWithMinMaxArgs', so the numbers are those of ``simulate``. ``b/s`` and ``colsum`` are
  computed once at load into local variables: the checkpoint keeps int8 ``q``, float ``s`` and
  ``b`` as variables, exactly as for the other INT8 modes.
* ``weight_only`` (BF16/FP16/INT8): weights stored low precision, ``Cast`` (and, for INT8,
  ``Mul`` by the per-output-channel scale) before a float32 MatMul
* ``simulate`` (INT8, formerly ``static``): as ``weight_only`` plus ``FakeQuantWithMinMaxArgs`` on
  the activation with the calibrated range, i.e. exact 8-bit activation/weight numerics with
  kernels that run in every stock TensorFlow build, with or without oneDNN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.core.graph import (
    ANY, DT, READ_OPS, VARIABLE_OPS, GraphMatcher, OpTypePattern, const_value, dtype_attr, make_const, make_node,
    parse_input,
)
from lpo.errors import ConfigError
from lpo.passes.surgery import Surgery
from lpo.passes.registry import register
from lpo.core.plan import Conversion, VarConversion
from lpo.core.savedmodel import VarSpec
from lpo import options as opts

#: The dtypes a dense layer can take.
DTYPES = ("BF16", "FP16", "INT8")


@dataclass
class DenseCandidate:
    """A MatMul with variable weights, and the BiasAdd/Relu fused after it."""

    name: str
    shape: list[int]
    weight: VarSpec
    activation: str
    bias: VarSpec | None = None
    bias_add: str | None = None
    relu: str | None = None
    transpose_b: bool = False
    kind: str = "dense"
    matmul: str = ""  # the MatMul node when ``name`` is not it (lowered TF2 models)
    bias_op: str = "BiasAdd"  # or AddV2 (Keras Dense)
    reshape: str | None = None  # Reshape between MatMul and bias (tf.tensordot)
    reshape_ok: bool = False  # the Reshape keeps the last dimension: it can move after the bias/Relu
    transpose_a: bool = False

    @property
    def nbytes(self) -> int:
        n = self.shape[0] * self.shape[1] * 4
        return n + (self.bias.shape[0] * 4 if self.bias else 0)


def _variable(label: str) -> OpTypePattern:
    """A variable, read directly or through one snapshot read."""
    return OpTypePattern(READ_OPS, optional=True, inputs=(OpTypePattern(VARIABLE_OPS, label),))


# Relu?(BiasAdd|AddV2?(Reshape?(MatMul(x, W)), b)), each inner node read only by the next
MATMUL = OpTypePattern("MatMul", "matmul", (ANY, _variable("weight")), sole_consumer=True,
                       where=lambda n: n.attr["T"].type == types_pb2.DT_FLOAT)
RESHAPE = OpTypePattern("Reshape", "reshape", (MATMUL,), optional=True, sole_consumer=True)
BIAS_ADD = OpTypePattern("BiasAdd|AddV2", "bias_add", (RESHAPE, _variable("bias")), optional=True,
                         sole_consumer=True)
PATTERN = OpTypePattern("Relu", "relu", (BIAS_ADD,), optional=True)


def _acceptor(s: Surgery, specs: dict[str, VarSpec]):
    """Return the checks a dense match must pass beyond its pattern."""
    def sole_reader(var: VarSpec, reader) -> bool:
        return all(r.name == reader.name for r in s.readers(var.node))

    def accept(m) -> bool:
        mm = m["matmul"]
        w = specs.get(m["weight"].name)
        if s.is_saver_node(mm.name) or w is None or w.dtype != "float32" or len(w.shape) != 2 or w.slice \
                or not sole_reader(w, mm):
            return False
        if "bias_add" not in m:
            return "reshape" not in m  # tf.tensordot's Reshape is taken only with its bias
        b = specs.get(m["bias"].name)
        units = w.shape[0] if mm.attr["transpose_b"].b else w.shape[1]
        rank1 = b is not None and len(b.shape) == 1  # AddV2 (Keras Dense) only with a [units] bias
        return b is not None and (m["bias_add"].op == "BiasAdd" or rank1) and b.dtype == "float32" \
            and not b.slice and ("reshape" not in m or list(b.shape) == [units]) and sole_reader(b, m["bias_add"])

    return accept


def _last_entry(s: Surgery, tensor: str):
    """The last entry of a constant 1-D shape tensor, or of a concat/pack whose last part is constant."""
    node = s.index.node(parse_input(tensor)[0])
    if node.op in ("ConcatV2", "Concat", "Pack"):
        data = [i for i in node.input if not i.startswith("^")]
        data = data[:-1] if node.op == "ConcatV2" else data[1:] if node.op == "Concat" else data
        if not data:
            return None
        node = s.index.node(parse_input(data[-1])[0])
    value = const_value(node)
    if value is None or value.ndim > 1 or value.size < 1:
        return None
    return int(value.reshape(-1)[-1])


def _reshape_keeps_last_dim(s: Surgery, reshape, bias_add, units: int) -> bool:
    """True when ``MatMul -> Reshape -> bias`` equals ``MatMul -> bias -> Reshape`` (tf.tensordot)."""
    fmt = bias_add.attr["data_format"].s.decode() if "data_format" in bias_add.attr else "NHWC"
    return fmt == "NHWC" and len(reshape.input) >= 2 and _last_entry(s, reshape.input[1]) == units


def find(s: Surgery, specs: dict[str, VarSpec]) -> list[DenseCandidate]:
    """Return the optimizable MatMul chains of the graph (the longest accepted match per MatMul)."""
    out = []
    for m in GraphMatcher(s.index, PATTERN).match_all("matmul", _acceptor(s, specs)):
        mm, w = m["matmul"], specs[m["weight"].name]
        # lowered TF2 models (checkpoint key != node): name the layer by its readable weight variable
        name = w.node if w.key != w.node else mm.name
        cand = DenseCandidate(name, list(w.shape), w, mm.input[0], transpose_b=mm.attr["transpose_b"].b,
                              matmul=mm.name if name != mm.name else "", transpose_a=mm.attr["transpose_a"].b)
        if "bias_add" in m:
            cand.bias, cand.bias_add, cand.bias_op = specs[m["bias"].name], m["bias_add"].name, m["bias_add"].op
            cand.reshape = m["reshape"].name if "reshape" in m else None
            if cand.reshape:
                units = w.shape[0] if cand.transpose_b else w.shape[1]
                cand.reshape_ok = _reshape_keeps_last_dim(s, m["reshape"], m["bias_add"], units)
        if "relu" in m:
            cand.relu = m["relu"].name
        out.append(cand)
    return out


def describe(cand: DenseCandidate) -> str:
    """Return the ``lpo inspect`` detail of ``cand``: its fused chain, e.g. ``MatMul+BiasAdd+Relu``."""
    return "+".join(x for x in ("MatMul", "Reshape" if cand.reshape else "", cand.bias_op if cand.bias_add else "",
                                "Relu" if cand.relu else "") if x)


def plan(cand: DenseCandidate, dtype: str, options) -> Conversion:
    """Return the Conversion of dense layer ``cand`` to ``dtype``.

    The mode is ``options.int8_dense`` for INT8 and ``options.dense_mode`` for BF16/FP16;
    ``auto`` is resolved for ``options.target`` and the layer's size (lpo/target.py). To ask
    for one form on one layer, pass options with that mode (e.g. ``int8_dense='compute'``;
    in opt_config: ``"INT8:compute"``). Raises ConfigError for INT4 (an embedding-only type).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dense layer {cand.name!r} cannot be {dtype}: {dtype} is for embedding tables. "
                          f"Give it one of {', '.join(DTYPES)} (or FP32) in opt_config")
    from lpo.target import dense_mode, get_target

    requested = opts.normalize_int8_dense(options.int8_dense) if dtype == "INT8" else options.dense_mode
    odd = cand.transpose_a or cand.transpose_b or bool(cand.reshape and not cand.reshape_ok)
    mode = dense_mode(dtype, requested, get_target(getattr(options, "target", None)), cand.shape, transposed=odd)
    dequantize_at_load = options.dequantize_at_load
    w = cand.weight
    wv = VarConversion(key=w.key, slice="", shape=list(w.shape), role="weight", dtype=dtype)
    variables = [wv]
    if dtype == "INT8":
        wv.scale_key = f"{w.node}/lpo_scale"
        wv.axis = 0 if cand.transpose_b else 1
        wv.scale_shape = [w.shape[0], 1] if cand.transpose_b else [w.shape[1]]
    if mode == "compute" and dtype != "INT8" and cand.bias is not None:
        variables.append(VarConversion(key=cand.bias.key, slice="", shape=list(cand.bias.shape), role="bias",
                                       dtype=dtype))
    targets = {"matmul": cand.matmul or cand.name, "weight": w.node, "weight_resource": w.resource,
               "bias": cand.bias.node if cand.bias else None, "bias_add": cand.bias_add, "relu": cand.relu,
               "activation": cand.activation, "dequantize_at_load": dequantize_at_load and mode != "compute"}
    if dtype == "INT8" and requested == "auto" and mode in opts.CALIBRATED_INT8_MODES:
        targets["act_gate"] = True  # calibration may fall back to weight_only (options.ACTIVATION_GATE)
    if cand.reshape:
        targets["reshape"] = cand.reshape
        targets["reshape_ok"] = cand.reshape_ok
    return Conversion(kind="dense", node=cand.name, dtype=dtype,
                      scheme="per_channel" if dtype == "INT8" else "cast", mode=mode,
                      variables=variables, targets=targets)


def _controls(node) -> list[str]:
    return [i for i in node.input if i.startswith("^")]


def _hoist_reshape(s: Surgery, t: dict) -> dict:
    """``MatMul -> Reshape -> Bias[-> Relu]`` becomes ``MatMul -> Bias[-> Relu] -> Reshape``.

    The Reshape takes the chain's last name; returns the targets of the new 2-D chain.
    """
    idx = s.index
    reshape, bias = idx.node(t["reshape"]), idx.node(t["bias_add"])
    relu = idx.node(t["relu"]) if t["relu"] else None
    last = (relu or bias).name
    for name in (last, bias.name, reshape.name):
        if name in idx:
            idx.remove(name)
    new_bias = make_node(bias.op, idx.unique_name(bias.name + "/lpo_2d"),
                         [t["matmul"], bias.input[1]] + _controls(bias), device=bias.device)
    new_bias.attr.MergeFrom(bias.attr)
    new_bias.attr.pop("_output_shapes", None)  # rank 2 now
    idx.add(new_bias)
    prev = new_bias.name
    new_relu = None
    if relu is not None:
        new_relu = make_node("Relu", idx.unique_name(relu.name + "/lpo_2d"), [prev] + _controls(relu),
                             device=relu.device)
        new_relu.attr.MergeFrom(relu.attr)
        new_relu.attr.pop("_output_shapes", None)
        idx.add(new_relu)
        prev = new_relu.name
    out = make_node("Reshape", last, [prev] + list(reshape.input[1:]), device=reshape.device)
    out.attr.MergeFrom(reshape.attr)
    idx.add(out)
    return dict(t, bias_add=new_bias.name, relu=new_relu.name if new_relu is not None else None, reshape=None)


def _rewrite_compute(s: Surgery, t: dict, dt: int) -> None:
    """Cast in -> 16-bit MatMul/[Reshape/]bias/Relu -> cast out; no cast pair between two such layers.

    Where a 16-bit layer feeds another directly, the second reads the first's 16-bit output
    instead of ``Cast(Cast(y, float32), 16-bit)`` (exact: a 16-bit value survives the round trip).
    """
    idx = s.index
    chain = [n for n in (t["matmul"], t.get("reshape"), t["bias_add"], t["relu"]) if n]
    s.retype_variable(t["weight"], dt)
    if t["bias"]:
        s.retype_variable(t["bias"], dt)
    first = idx.node(t["matmul"])
    device = first.device
    src = idx.node(parse_input(first.input[0])[0])
    if src.op == "Cast" and src.attr["SrcT"].type == dt and parse_input(first.input[0])[1] == 0 and \
            parse_input(src.input[0])[0].endswith(_LP):
        prev = src.input[0]  # the 16-bit output of the 16-bit layer before
    else:
        prev = s.cast_node(idx.unique_name(first.name + _CAST_IN), first.input[0], types_pb2.DT_FLOAT, dt, device)
    for name in chain:
        node = idx.remove(name)
        lp = make_node(node.op, idx.unique_name(name + _LP), [prev] + list(node.input[1:]), device=node.device)
        lp.attr.MergeFrom(node.attr)
        lp.attr["T"].CopyFrom(dtype_attr(dt))
        idx.add(lp)
        prev = lp.name
    out = s.cast_node(chain[-1], prev, dt, types_pb2.DT_FLOAT, device)
    for use in list(idx.uses.get(out, [])):  # a 16-bit layer after this one, rewritten before it
        c = idx.node(use.consumer)
        if c.op == "Cast" and c.name.endswith(_CAST_IN) and c.attr["DstT"].type == dt and use.port == 0:
            for u in list(idx.uses.get(c.name, [])):
                idx.set_input(u.consumer, u.index, prev)


def _const(s: Surgery, name: str, value, device: str) -> str:
    node = make_const(s.index.unique_name(name), np.asarray(value), device=device)
    s.index.add(node)
    return node.name


def _node(s: Surgery, op: str, name: str, inputs: list[str], device: str, **attrs) -> str:
    node = make_node(op, s.index.unique_name(name), inputs, device=device, **attrs)
    s.index.add(node)
    return node.name


_QUANTIZE = "/lpo_int8/quantize"
_CAST_IN = "/lpo_cast_in"
_LP = "/lpo_lp"
_SCALE = "/lpo_scale"


def _skip_relu(s: Surgery, x: str) -> str:
    """The input to quantize over ``[0, hi]``: past the Relu of an int8 layer feeding only this one.

    QuantizeV2 clamps to its range, so a Relu just before it is redundant; only the Relu that an
    int8 compute layer added (after its scale ``Mul``) is skipped, the fused float kernels stay.
    """
    idx = s.index
    name, port, _ = parse_input(x)
    node = idx.node(name)
    if port or node.op != "Relu" or len(idx.uses.get(name, [])) != 1 or idx.control_uses.get(name):
        return x
    inner = node.input[0]
    return inner if parse_input(inner)[0].endswith(_SCALE) and idx.node(parse_input(inner)[0]).op == "Mul" else x


def _feed_quantize_directly(s: Surgery, relu: str, mul: str) -> None:
    """When an int8 compute layer quantizing over ``[0, hi]`` is the only reader of ``relu``, skip it."""
    idx = s.index
    uses = idx.uses.get(relu, [])
    if len(uses) != 1 or idx.control_uses.get(relu) or uses[0].port != 0 or uses[0].index != 0:
        return
    q = idx.node(uses[0].consumer)
    if q.op == "QuantizeV2" and q.name.endswith(_QUANTIZE):
        lo = const_value(idx.node(parse_input(q.input[1])[0]))
        if lo is not None and float(lo) == 0.0:
            idx.set_input(q.name, 0, mul)


def _rewrite_int8_compute(s: Surgery, conv: Conversion, t: dict) -> None:
    """Real int8 kernels: QuantizeV2 -> QuantizedMatMulWithBiasAndDequantize -> Mul(s) [-> Relu]."""
    from lpo.numerics.quant import quantize_activation_params

    idx = s.index
    f32, i8 = dtype_attr(types_pb2.DT_FLOAT), dtype_attr(types_pb2.DT_INT8)
    mm = idx.node(t["matmul"])
    device, x, w_read = mm.device, mm.input[0], mm.input[1]
    vc = conv.variables[0]
    units = vc.shape[1]
    s.retype_variable(t["weight"], types_pb2.DT_INT8)
    scale = s.add_variable(vc.scale_key, types_pb2.DT_FLOAT, vc.scale_shape, resource=t["weight_resource"],
                           device=device)
    lo, hi, _, _ = quantize_activation_params(*conv.activation_range)  # the grid of FakeQuant: 0 exact
    lo, hi = np.float32(lo), np.float32(hi)
    base = mm.name + "/lpo_int8"

    # once at load: a safe scale (an all-zero column has s = 0 and q = 0: use 1) and the kernel's bias
    safe = _node(s, "SelectV2", base + "/scale_safe",
                 [_node(s, "Greater", base + "/scale_pos", [scale, _const(s, base + "/zero", np.float32(0), device)],
                        device, T=f32),
                  scale, _const(s, base + "/one", np.float32(1), device)], device, T=f32)
    scale_c = s.add_load_time_cache(idx.unique_name(t["weight"] + "/lpo_scale_safe"), safe, [units], device)
    colsum = _node(s, "Sum", base + "/colsum",
                   [_node(s, "Cast", base + "/q_float", [w_read], device, SrcT=i8, DstT=f32, Truncate=False),
                    _const(s, base + "/axis0", np.array([0], np.int32), device)],
                   device, T=f32, Tidx=dtype_attr(types_pb2.DT_INT32), keep_dims=False)
    bias = _node(s, "Mul", base + "/zero_point_bias", [colsum, _const(s, base + "/lo", lo, device)], device, T=f32)
    if t["bias_add"]:
        b = idx.node(t["bias_add"]).input[1]
        bias = _node(s, "AddV2", base + "/bias_sum",
                     [_node(s, "RealDiv", base + "/bias_scaled", [b, safe], device, T=f32), bias], device, T=f32)
    bias_c = s.add_load_time_cache(idx.unique_name(t["weight"] + "/lpo_int8_bias"), bias, [units], device)

    # per call
    if lo == 0:
        x = _skip_relu(s, x)
    q8, qu8 = dtype_attr(types_pb2.DT_QINT8), dtype_attr(types_pb2.DT_QUINT8)
    xq = _node(s, "QuantizeV2", base + "/quantize",
               [x, _const(s, base + "/min_a", lo, device), _const(s, base + "/max_a", hi, device)], device,
               T=qu8, mode="MIN_FIRST", round_mode="HALF_AWAY_FROM_ZERO", narrow_range=False, axis=-1,
               ensure_minimum_range=0.0)
    wq = _node(s, "Bitcast", base + "/weight", [w_read], device, T=i8, type=q8)
    zero = _const(s, base + "/zero_f", np.float32(0), device)
    qmm = _node(s, "QuantizedMatMulWithBiasAndDequantize", base + "/matmul",
                [xq, wq, bias_c, zero, _const(s, base + "/range_a", np.float32(hi - lo), device),
                 _const(s, base + "/min_b", np.float32(-127), device),
                 _const(s, base + "/max_b", np.float32(127), device),
                 zero, zero], device,
                T1=qu8, T2=q8, Tbias=f32, Toutput=f32, transpose_a=False, transpose_b=False,
                input_quant_mode="SCALED")
    last = t["relu"] or t["bias_add"] or t["matmul"]
    controls = []
    for name in dict.fromkeys(n for n in (t["relu"], t["bias_add"], t["matmul"]) if n):
        controls += _controls(idx.remove(name))
    if t["relu"]:
        mul = _node(s, "Mul", last + "/lpo_scale", [qmm, scale_c] + controls, device, T=f32)
        idx.add(make_node("Relu", last, [mul], device=device, T=f32))
        _feed_quantize_directly(s, last, mul)
    else:
        idx.add(make_node("Mul", last, [qmm, scale_c] + controls, device=device, T=f32))


def rewrite(s: Surgery, conv: Conversion) -> None:
    """Rewrite the dense layer of ``conv``."""
    idx = s.index
    t = dict(conv.targets)
    if t.get("reshape") and t.get("reshape_ok"):
        t = _hoist_reshape(s, t)
    dt = DT[conv.dtype]
    if conv.mode == "compute":
        if conv.dtype == "INT8":
            _rewrite_int8_compute(s, conv, t)
        else:
            _rewrite_compute(s, t, dt)
        return
    mm = idx.node(t["matmul"])
    device = mm.device
    s.retype_variable(t["weight"], dt)
    w = s.cast_node(idx.unique_name(mm.name + "/lpo_weight"), mm.input[1], dt, types_pb2.DT_FLOAT, device)
    if conv.dtype == "INT8":
        vc = conv.variables[0]
        scale = s.add_variable(vc.scale_key, types_pb2.DT_FLOAT, vc.scale_shape, resource=t["weight_resource"],
                               device=device)
        deq = idx.add(make_node("Mul", idx.unique_name(mm.name + "/lpo_dequant"), [w, scale], device=device,
                                T=dtype_attr(types_pb2.DT_FLOAT)))
        w = deq.name
    if t.get("dequantize_at_load"):
        w = s.add_load_time_cache(idx.unique_name(t["weight"] + "/lpo_dequantized"), w, list(conv.variables[0].shape),
                                  device)
    idx.set_input(mm.name, 1, w)
    if conv.mode in ("simulate", "static"):
        lo, hi = conv.activation_range
        fq = idx.add(make_node("FakeQuantWithMinMaxArgs", idx.unique_name(mm.name + "/lpo_act_quant"),
                               [mm.input[0]], device=device, min=float(lo), max=float(hi), num_bits=8,
                               narrow_range=False))
        idx.set_input(mm.name, 0, fq.name)


def calibrates(conv: Conversion) -> bool:
    """An INT8 layer whose activations are quantized needs calibration data."""
    return conv.dtype == "INT8" and conv.mode in opts.CALIBRATED_INT8_MODES


def requirement(conv: Conversion) -> tuple[str, str]:
    """What the layer's form needs of the serving CPU (lpo.target.requirements)."""
    return conv.dtype, conv.mode


register("dense", find=find, describe=describe, plan=plan, rewrite=rewrite, label="dense op",
         fallbacks={"INT4": "INT8"},  # INT4 is for tables: int8_dense decides the layers' form
         auto_ladder=("INT8:weight_only", "BF16:weight_only", "FP16:weight_only", "FP32"),
         calibrates=calibrates, requirement=requirement)
