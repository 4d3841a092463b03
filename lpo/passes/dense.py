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

Rewrites (the last node of the chain keeps its name and float32 output):

* ``compute`` (BF16/FP16, the seed's form): ``Cast(a) -> MatMul16 -> BiasAdd16 -> Relu16 -> Cast``
* ``weight_only`` (BF16/FP16/INT8): weights stored low precision, ``Cast`` (and, for INT8,
  ``Mul`` by the per-output-channel scale) before a float32 MatMul
* ``static`` (INT8): as ``weight_only`` plus ``FakeQuantWithMinMaxArgs`` on the activation
  with the calibrated range, i.e. exact 8-bit activation/weight numerics with kernels that
  run in every stock TensorFlow build, with or without oneDNN.
"""
from __future__ import annotations

from dataclasses import dataclass

from tensorflow.core.framework import types_pb2

from lpo.core.graph import ANY, DT, READ_OPS, VARIABLE_OPS, GraphMatcher, OpTypePattern, dtype_attr, make_node
from lpo.errors import ConfigError
from lpo.passes.surgery import Surgery
from lpo.passes.registry import register
from lpo.core.plan import Conversion, VarConversion
from lpo.core.savedmodel import VarSpec

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


def find(s: Surgery, specs: dict[str, VarSpec]) -> list[DenseCandidate]:
    """Return the optimizable MatMul chains of the graph (the longest accepted match per MatMul)."""
    out = []
    for m in GraphMatcher(s.index, PATTERN).match_all("matmul", _acceptor(s, specs)):
        mm, w = m["matmul"], specs[m["weight"].name]
        # lowered TF2 models (checkpoint key != node): name the layer by its readable weight variable
        name = w.node if w.key != w.node else mm.name
        cand = DenseCandidate(name, list(w.shape), w, mm.input[0], transpose_b=mm.attr["transpose_b"].b,
                              matmul=mm.name if name != mm.name else "")
        if "bias_add" in m:
            cand.bias, cand.bias_add, cand.bias_op = specs[m["bias"].name], m["bias_add"].name, m["bias_add"].op
            cand.reshape = m["reshape"].name if "reshape" in m else None
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

    The mode is ``options.int8_dense`` for INT8 and ``options.dense_mode`` for BF16/FP16.
    Raises ConfigError for INT4 (an embedding-only type).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dense layer {cand.name!r} cannot be {dtype}: {dtype} is for embedding tables. "
                          f"Give it one of {', '.join(DTYPES)} (or FP32) in opt_config")
    mode = options.int8_dense if dtype == "INT8" else options.dense_mode
    dequantize_at_load = options.dequantize_at_load
    w = cand.weight
    wv = VarConversion(key=w.key, slice="", shape=list(w.shape), role="weight", dtype=dtype)
    variables = [wv]
    if dtype == "INT8":
        wv.scale_key = f"{w.node}/lpo_scale"
        wv.axis = 0 if cand.transpose_b else 1
        wv.scale_shape = [w.shape[0], 1] if cand.transpose_b else [w.shape[1]]
    if mode == "compute" and cand.bias is not None:
        variables.append(VarConversion(key=cand.bias.key, slice="", shape=list(cand.bias.shape), role="bias",
                                       dtype=dtype))
    targets = {"matmul": cand.matmul or cand.name, "weight": w.node, "weight_resource": w.resource,
               "bias": cand.bias.node if cand.bias else None, "bias_add": cand.bias_add, "relu": cand.relu,
               "activation": cand.activation, "dequantize_at_load": dequantize_at_load and mode != "compute"}
    if cand.reshape:
        targets["reshape"] = cand.reshape
    return Conversion(kind="dense", node=cand.name, dtype=dtype,
                      scheme="per_channel" if dtype == "INT8" else "cast", mode=mode,
                      variables=variables, targets=targets)


def _rewrite_compute(s: Surgery, conv: Conversion, dt: int) -> None:
    idx = s.index
    t = conv.targets
    chain = [n for n in (t["matmul"], t.get("reshape"), t["bias_add"], t["relu"]) if n]
    s.retype_variable(t["weight"], dt)
    if t["bias"]:
        s.retype_variable(t["bias"], dt)
    first = idx.node(t["matmul"])
    device = first.device
    prev = s.cast_node(idx.unique_name(first.name + "/lpo_cast_in"), first.input[0], types_pb2.DT_FLOAT, dt, device)
    for name in chain:
        node = idx.remove(name)
        lp = make_node(node.op, idx.unique_name(name + "/lpo_lp"), [prev] + list(node.input[1:]), device=node.device)
        lp.attr.MergeFrom(node.attr)
        lp.attr["T"].CopyFrom(dtype_attr(dt))
        idx.add(lp)
        prev = lp.name
    s.cast_node(chain[-1], prev, dt, types_pb2.DT_FLOAT, device)


def rewrite(s: Surgery, conv: Conversion) -> None:
    """Rewrite the dense layer of ``conv``."""
    idx = s.index
    t = conv.targets
    dt = DT[conv.dtype]
    if conv.mode == "compute":
        _rewrite_compute(s, conv, dt)
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
    if conv.targets.get("dequantize_at_load"):
        w = s.add_load_time_cache(idx.unique_name(t["weight"] + "/lpo_dequantized"), w, list(conv.variables[0].shape),
                                  device)
    idx.set_input(mm.name, 1, w)
    if conv.mode == "static":
        lo, hi = conv.activation_range
        fq = idx.add(make_node("FakeQuantWithMinMaxArgs", idx.unique_name(mm.name + "/lpo_act_quant"),
                               [mm.input[0]], device=device, min=float(lo), max=float(hi), num_bits=8,
                               narrow_range=False))
        idx.set_input(mm.name, 0, fq.name)


register("dense", find=find, describe=describe, plan=plan, rewrite=rewrite)
