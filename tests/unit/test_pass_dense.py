"""The dense pass on hand-built GraphDefs: find, describe, plan, rewrite, and the rewritten graph run."""
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from lpo import options as opts
from lpo.core.checkpoint import convert_values
from lpo.core.savedmodel import variable_specs
from lpo.numerics import quant
from lpo.passes import dense
from lpo.passes.surgery import Surgery

from handmade import HandGraph, run

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 4)).astype(np.float32)
W = RNG.normal(size=(4, 3)).astype(np.float32)
B = RNG.normal(size=(3,)).astype(np.float32)


def _layer(bias_op="BiasAdd", relu=True, resource=True, bias=B, tensordot=False, extra=None):
    """x -> MatMul(W) [-> Reshape] [-> bias_op(b)] [-> Relu] -> out."""
    g = HandGraph()
    x = g.placeholder("x")
    w = g.variable("w", W, resource=resource)
    last = g.op("MatMul", "mm", [x, w], T=types_pb2.DT_FLOAT, transpose_a=False, transpose_b=False)
    if tensordot:
        last = g.op("Reshape", "rs", [last, g.const("rs/shape", np.array([-1, 3], np.int32))], T=1, Tshape=3)
    if bias_op:
        b = g.variable("b", bias, resource=resource)
        last = g.op(bias_op, "bias", [last, b], T=types_pb2.DT_FLOAT, **({"data_format": "NHWC"}
                                                                        if bias_op == "BiasAdd" else {}))
    if relu:
        last = g.op("Relu", "relu", [last], T=types_pb2.DT_FLOAT)
    if extra:
        extra(g, last)
    return g, last


def _find(g):
    s = Surgery(g.mg)
    return s, dense.find(s, variable_specs(g.mg, s.index))


def _reference(relu=True, bias=True):
    y = X @ W + (B if bias else 0)
    return np.maximum(y, 0) if relu else y


def _convert(g, conv):
    """The variable values the checkpoint converter would write for ``conv``."""
    values = dict(g.values)
    for vc in conv.variables:
        for key, _slice, arr in convert_values(vc, g.values[vc.key], vc.key):
            values[key] = arr
    return values


# --- find / describe -------------------------------------------------------------------------
@pytest.mark.parametrize("resource", [True, False])
def test_finds_matmul_biasadd_relu(resource):
    g, _ = _layer(resource=resource)
    _s, (c,) = _find(g)
    assert (c.name, c.shape, c.weight.node, c.bias.node, c.bias_add, c.relu) == ("mm", [4, 3], "w", "b", "bias",
                                                                                 "relu")
    assert c.activation == "x" and c.nbytes == (12 + 3) * 4
    assert dense.describe(c) == "MatMul+BiasAdd+Relu"


def test_keras_addv2_bias_needs_rank1():
    g, _ = _layer(bias_op="AddV2", relu=False)
    _s, (c,) = _find(g)
    assert (c.bias_op, dense.describe(c)) == ("AddV2", "MatMul+AddV2")
    g, _ = _layer(bias_op="AddV2", relu=False, bias=B.reshape(1, 3))  # a rank-2 addend is not a bias
    _s, (c,) = _find(g)
    assert c.bias is None and dense.describe(c) == "MatMul"


def test_tensordot_reshape_only_with_its_bias():
    g, _ = _layer(tensordot=True)
    _s, (c,) = _find(g)
    assert (c.reshape, dense.describe(c)) == ("rs", "MatMul+Reshape+BiasAdd+Relu")
    g, _ = _layer(tensordot=True, bias=np.zeros(6, np.float32))  # bias size != units: not this layer's bias
    _s, (c,) = _find(g)
    assert (c.reshape, c.bias, c.relu, dense.describe(c)) == (None, None, None, "MatMul")


def test_second_reader_of_bias_output_stops_the_chain():
    g, _ = _layer(relu=True, extra=lambda g, last: g.op("Identity", "spy", ["bias"], T=1))
    _s, (c,) = _find(g)
    assert c.bias_add == "bias" and c.relu is None


def test_weight_read_elsewhere_or_not_float_is_not_a_candidate():
    g, _ = _layer(extra=lambda g, last: g.op("Identity", "w_spy", ["w/Read/ReadVariableOp"], T=1))
    assert _find(g)[1] == []
    g, _ = _layer()
    for n in g.mg.graph_def.node:
        if n.name == "mm":
            n.attr["T"].type = types_pb2.DT_HALF
    assert _find(g)[1] == []


def test_bias_read_elsewhere_is_not_fused():
    g, _ = _layer(relu=False, extra=lambda g, last: g.op("Identity", "b_spy", ["b/Read/ReadVariableOp"], T=1))
    _s, (c,) = _find(g)
    assert c.bias is None


# --- plan ------------------------------------------------------------------------------------
def test_plan_int8_static():
    g, _ = _layer()
    _s, (c,) = _find(g)
    conv = dense.plan(c, "INT8", opts.OptimizeOptions(int8_dense="static"))  # the old name of simulate
    (wv,) = conv.variables
    assert (conv.kind, conv.node, conv.mode, conv.scheme) == ("dense", "mm", "simulate", "per_channel")
    assert (wv.key, wv.role, wv.dtype, wv.scale_key, wv.axis, wv.scale_shape) == ("w", "weight", "INT8",
                                                                                  "w/lpo_scale", 1, [3])
    assert conv.targets["activation"] == "x" and conv.targets["dequantize_at_load"] is True


def test_plan_bf16_compute_converts_the_bias_too():
    g, _ = _layer()
    _s, (c,) = _find(g)
    conv = dense.plan(c, "BF16", opts.OptimizeOptions(dense_mode="compute"))
    assert [(v.key, v.role, v.dtype) for v in conv.variables] == [("w", "weight", "BF16"), ("b", "bias", "BF16")]
    assert conv.scheme == "cast" and conv.targets["dequantize_at_load"] is False


# --- rewrite + run ---------------------------------------------------------------------------
def _rewrite_and_run(g, last, dtype, options):
    s, (c,) = _find(g)
    conv = dense.plan(c, dtype, options)
    if conv.mode in ("simulate", "compute") and dtype == "INT8":
        conv.activation_range = [float(X.min()), float(X.max())]
    dense.rewrite(s, conv)
    mg = s.finish()
    nodes = {n.name: n for n in mg.graph_def.node}
    return conv, nodes, run(mg, last, {"x": X}, _convert(g, conv))


@pytest.mark.parametrize("dtype", ["BF16", "FP16"])
def test_weight_only_16bit(dtype):
    g, last = _layer()
    _conv, nodes, y = _rewrite_and_run(g, last, dtype, opts.OptimizeOptions(dequantize_at_load=False))
    assert nodes["w"].attr["dtype"].type == {"BF16": types_pb2.DT_BFLOAT16, "FP16": types_pb2.DT_HALF}[dtype]
    assert nodes["mm"].input[1] == "mm/lpo_weight" and nodes["mm"].attr["T"].type == types_pb2.DT_FLOAT
    wq = quant.bf16_to_f32(quant.to_bf16(W)) if dtype == "BF16" else quant.to_fp16(W).astype(np.float32)
    np.testing.assert_allclose(y, np.maximum(X @ wq + B, 0), rtol=1e-5, atol=1e-6)


def test_compute_bf16_runs_the_chain_in_bf16():
    g, last = _layer()
    _conv, nodes, y = _rewrite_and_run(g, last, "BF16", opts.OptimizeOptions(dense_mode="compute"))
    assert [nodes[n].attr["T"].type for n in ("mm/lpo_lp", "bias/lpo_lp", "relu/lpo_lp")] == \
        [types_pb2.DT_BFLOAT16] * 3
    assert nodes["relu"].op == "Cast" and nodes["relu"].attr["DstT"].type == types_pb2.DT_FLOAT
    np.testing.assert_allclose(y, _reference(), rtol=0.05, atol=0.05)


def test_int8_weight_only_with_load_time_dequantization():
    g, last = _layer()
    conv, nodes, y = _rewrite_and_run(g, last, "INT8", opts.OptimizeOptions(int8_dense="weight_only"))
    assert nodes["w"].attr["dtype"].type == types_pb2.DT_INT8 and "w/lpo_scale" in nodes
    assert nodes["mm"].input[1] == "w/lpo_dequantized/Read/ReadVariableOp"  # the load-time cache
    q, scale = quant.quantize_int8(W, 1)
    np.testing.assert_allclose(y, np.maximum(X @ quant.dequantize_int8(q, scale) + B, 0), rtol=1e-5, atol=1e-5)


def test_int8_static_fake_quantizes_the_activation():
    g, last = _layer(relu=False)
    conv, nodes, y = _rewrite_and_run(g, last, "INT8", opts.OptimizeOptions(int8_dense="simulate",
                                                                            dequantize_at_load=False))
    fq = nodes["mm/lpo_act_quant"]
    assert fq.op == "FakeQuantWithMinMaxArgs" and nodes["mm"].input[0] == fq.name
    lo, hi = conv.activation_range
    q, scale = quant.quantize_int8(W, 1)
    want = quant.fake_quant(X, lo, hi) @ quant.dequantize_int8(q, scale) + B
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


# --- int8 compute (real int8 kernels) and the tensordot Reshape -------------------------------
def test_plan_auto_follows_the_target():
    g, _ = _layer()
    _s, (c,) = _find(g)
    for target, want in (("avx2", "weight_only"), ("portable", "weight_only"), ("avx512_vnni", "weight_only")):
        assert dense.plan(c, "INT8", opts.OptimizeOptions(target=target)).mode == want  # 4x3: too small to pay
    conv = dense.plan(c, "INT8", opts.OptimizeOptions(int8_dense="compute", target="avx2"))
    assert conv.mode == "compute" and [v.role for v in conv.variables] == ["weight"]  # the bias stays float32
    assert conv.targets["dequantize_at_load"] is False


@pytest.mark.parametrize("relu,bias", [(True, True), (False, True), (True, False)])
def test_int8_compute_rewrite(relu, bias):
    """QuantizeV2 -> QuantizedMatMulWithBiasAndDequantize -> Mul(scale) [-> Relu]; the last node keeps its name."""
    g, last = _layer(relu=relu, bias_op="BiasAdd" if bias else None)
    s, (c,) = _find(g)
    conv = dense.plan(c, "INT8", opts.OptimizeOptions(int8_dense="compute"))
    conv.activation_range = [float(X.min()), float(X.max())]
    dense.rewrite(s, conv)
    mg = s.finish()
    nodes = {n.name: n for n in mg.graph_def.node}
    assert "mm" not in nodes or nodes["mm"].op != "MatMul"
    ops = [n.op for n in mg.graph_def.node]
    assert ops.count("QuantizeV2") == ops.count("QuantizedMatMulWithBiasAndDequantize") == 1
    qmm = next(n for n in mg.graph_def.node if n.op == "QuantizedMatMulWithBiasAndDequantize")
    assert qmm.attr["input_quant_mode"].s == b"SCALED" and nodes[qmm.input[1]].op == "Bitcast"
    assert nodes[last].op == ("Relu" if relu else "Mul")
    assert nodes["w"].attr["dtype"].type == types_pb2.DT_INT8 and "w/lpo_scale" in nodes
    from lpo.target import host

    if not host().onednn:
        pytest.skip("oneDNN is off: the int8 kernel cannot run here (graph checked above)")
    y = run(mg, last, {"x": X}, _convert(g, conv))
    lo, hi = conv.activation_range
    q, scale = quant.quantize_int8(W, 1)
    want = quant.fake_quant(X, lo, hi) @ quant.dequantize_int8(q, scale) + (B if bias else 0)
    np.testing.assert_allclose(y, np.maximum(want, 0) if relu else want, rtol=1e-4, atol=1e-4)


def test_tensordot_reshape_moves_after_bias_and_relu():
    g, last = _layer(tensordot=True)
    s, (c,) = _find(g)
    assert c.reshape_ok
    conv = dense.plan(c, "INT8", opts.OptimizeOptions(int8_dense="weight_only"))
    dense.rewrite(s, conv)
    mg = s.finish()
    nodes = {n.name: n for n in mg.graph_def.node}
    assert nodes["relu"].op == "Reshape" and nodes["relu"].input[1] == "rs/shape"
    relu2d = nodes[nodes["relu"].input[0]]
    assert relu2d.op == "Relu" and nodes[relu2d.input[0]].op == "BiasAdd" and nodes[relu2d.input[0]].input[0] == "mm"
    y = run(mg, "relu", {"x": X}, _convert(g, conv))
    q, scale = quant.quantize_int8(W, 1)
    np.testing.assert_allclose(y, np.maximum(X @ quant.dequantize_int8(q, scale) + B, 0), rtol=1e-5, atol=1e-5)


def test_tensordot_reshape_that_changes_the_last_dim_stays():
    g, _last = _layer(tensordot=True)
    for n in g.mg.graph_def.node:  # a reshape to [-1, 1]... whose last entry is not the layer's units
        if n.name == "rs/shape":
            import tensorflow as tf

            n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array([3, -1], np.int32)))
    _s, (c,) = _find(g)
    assert c.reshape == "rs" and not c.reshape_ok
    assert dense.plan(c, "INT8", opts.OptimizeOptions(int8_dense="compute")).mode == "simulate"


def _two_layers():
    """x -> MatMul(W) -> BiasAdd -> Relu -> MatMul(W2) -> BiasAdd -> Relu."""
    g, h = _layer()
    w2 = g.variable("w2", RNG.normal(size=(3, 2)).astype(np.float32))
    b2 = g.variable("b2", RNG.normal(size=(2,)).astype(np.float32))
    last = g.op("MatMul", "mm2", [h, w2], T=types_pb2.DT_FLOAT, transpose_a=False, transpose_b=False)
    last = g.op("BiasAdd", "bias2", [last, b2], T=types_pb2.DT_FLOAT, data_format="NHWC")
    return g, g.op("Relu", "relu2", [last], T=types_pb2.DT_FLOAT)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_int8_layer_feeding_int8_layer_skips_the_relu(order):
    """QuantizeV2 over [0, hi] clamps: the first layer's Relu is skipped, whichever layer is rewritten first."""
    g, last = _two_layers()
    s, cands = _find(g)
    convs = [dense.plan(c, "INT8", opts.OptimizeOptions(int8_dense="compute")) for c in cands]
    convs[0].activation_range = [float(X.min()), float(X.max())]
    convs[1].activation_range = [0.0, 4.0]
    for i in order:
        dense.rewrite(s, convs[i])
    mg = s.finish()
    nodes = {n.name: n for n in mg.graph_def.node}
    q2 = nodes["mm2/lpo_int8/quantize"]
    assert q2.input[0] == "relu/lpo_scale" and nodes["relu/lpo_scale"].op == "Mul"  # not the Relu "relu"
    assert nodes["mm/lpo_int8/quantize"].input[0] == "x"  # lo < 0: the input is quantized as it is
    from lpo.target import host

    if host().onednn:
        values = dict(g.values)
        for conv in convs:
            values.update({k: v for k, v in _convert(g, conv).items() if v is not g.values.get(k)})
        y = run(mg, last, {"x": X}, values)
        h = quant.fake_quant(X, *convs[0].activation_range) @ quant.dequantize_int8(*quant.quantize_int8(W, 1)) + B
        h = np.maximum(h, 0)
        w2 = g.values["w2"]
        want = np.maximum(quant.fake_quant(h, 0.0, 4.0) @ quant.dequantize_int8(*quant.quantize_int8(w2, 1))
                          + g.values["b2"], 0)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_16bit_layer_feeding_16bit_layer_skips_the_cast_pair(order):
    """bf16 -> float32 -> bf16 is the identity: the second layer reads the first's bf16 Relu."""
    g, last = _two_layers()
    s, cands = _find(g)
    convs = [dense.plan(c, "BF16", opts.OptimizeOptions(dense_mode="compute")) for c in cands]
    for i in order:
        dense.rewrite(s, convs[i])
    mg = s.finish()
    nodes = {n.name: n for n in mg.graph_def.node}
    assert nodes["mm2/lpo_lp"].input[0] == "relu/lpo_lp" and nodes["relu"].op == "Cast"
    values = dict(g.values)
    for conv in convs:
        values.update({k: v for k, v in _convert(g, conv).items() if v is not g.values.get(k)})
    y = run(mg, last, {"x": X}, values)
    bf = lambda a: quant.bf16_to_f32(quant.to_bf16(a))  # noqa: E731
    h = np.maximum(X @ W + B, 0)
    want = np.maximum(h @ g.values["w2"] + g.values["b2"], 0)
    np.testing.assert_allclose(y, want, rtol=0.05, atol=0.05)
    assert bf(y).tolist() == y.tolist()  # the last cast is from bf16
