"""Real int8 kernels, the target CPU and its requirements (issue 10).

Tests that run an int8-compute model need oneDNN and skip where it is off; building one
does not (optimize never runs the int8 kernels), so the graph, manifest, refresh and the
oneDNN-off error path are checked on every CPU.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo import options as opts
from lpo import target as tg
from lpo.errors import RequirementError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONEDNN = tg.host().onednn
needs_onednn = pytest.mark.skipif(not ONEDNN, reason=f"oneDNN is off here ({tg.host().describe()}; "
                                                     f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}):"
                                                     " int8 kernels cannot run")
#: The int8 kernels compute the FakeQuant form's numbers only on CPUs with int8 dot-product
#: instructions (VNNI/AMX), whatever LPO_HOST_TARGET emulates: oneDNN's int8 path on an AVX2-only
#: CPU (TF_ENABLE_ONEDNN_OPTS=1) rounds differently (measured on an AMD Zen 3: 2.2x the mean
#: |Δp| of the FakeQuant form). The forms and graphs are still checked there; the numerics are not.
REAL_INT8_ISA = any(f in tg.read_cpuinfo()[0] for f in tg.INT8_FEATURES)
needs_int8_isa = pytest.mark.skipif(not (ONEDNN and REAL_INT8_ISA), reason=(
    "int8 kernel numerics need oneDNN on a CPU with VNNI/AMX (this CPU: "
    f"{' '.join(f for f in tg.FEATURES if f in tg.read_cpuinfo()[0]) or 'no AVX2'}, oneDNN {'on' if ONEDNN else 'off'})"))
K, UNITS = 256, 256


# --------------------------------------------------------------------------- a tiny TF1 model
def build_mlp(path, *, tensordot=False, zero_column=False, seed=0):
    """x[None, K] -> Dense(256, relu) -> Dense(256, relu) -> Dense(1) -> sigmoid ``prob``.

    ``tensordot``: the layers take a [None, 1, K] tensor through tf.tensordot (DeepCTR's form:
    MatMul -> Reshape -> BiasAdd -> Relu). ``zero_column``: one output column of the first
    kernel is all zero (its int8 scale is 0).
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, K], name="x")
        h = tf.expand_dims(x, 1) if tensordot else x
        for i, units in enumerate((UNITS, UNITS, 1)):
            fan_in = int(h.shape[-1])
            w0 = rng.normal(0, 1.5 / np.sqrt(fan_in), (fan_in, units)).astype(np.float32)
            if zero_column and i == 0:
                w0[:, 3] = 0.0
            w = v1.get_variable(f"dense{i}/kernel", initializer=w0, use_resource=True)
            b = v1.get_variable(f"dense{i}/bias", initializer=rng.normal(0, 0.1, units).astype(np.float32),
                                use_resource=True)
            y = tf.tensordot(h, w, axes=1) if tensordot else tf.matmul(h, w)
            y = tf.nn.bias_add(y, b)
            h = tf.nn.relu(y) if i < 2 else y
        logits = tf.reshape(h, [-1])
        prob = tf.sigmoid(logits, name="prob")
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            b = v1.saved_model.Builder(path)
            sig = v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"prob": prob})
            b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            b.save()
    return path


def data(rows, seed=1):
    rng = np.random.default_rng(seed)
    # inputs in [0, 1): 8-bit activations of the first layer stay within options.ACTIVATION_GATE, so
    # int8_dense='auto' keeps the int8 kernels these tests check (N(0, 1) inputs move its output ~1%)
    x = rng.random((rows, K)).astype(np.float32)
    return {"x": x, "label": (rng.random(rows) < 1 / (1 + np.exp(2 - 4 * x[:, 0]))).astype(np.float32)}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlp")
    model = build_mlp(str(d / "model"), zero_column=True)
    np.savez(d / "calib.npz", x=data(512, seed=2)["x"])
    np.savez(d / "heldout.npz", **data(2048))
    return {"model": model, "calib": str(d / "calib.npz"), "heldout": str(d / "heldout.npz"), "dir": d}


def optimize(mlp, name, **kw):
    out = str(mlp["dir"] / name)
    if not os.path.isdir(out):
        lpo.optimize(mlp["model"], out, calib_file=mlp["calib"], quiet=True, **kw)
    return out


def predict(model, x):
    from lpo.validation.runner import SignatureRunner

    with SignatureRunner(model) as r:
        return r.run({"x": x})["prob"]


def graph_ops(model):
    from lpo.core.savedmodel import read_saved_model, select_meta_graph

    return [n.op for n in select_meta_graph(read_saved_model(model)).graph_def.node]


def manifest(model):
    with open(os.path.join(model, "assets.extra", "lpo_manifest.json")) as f:
        return json.load(f)


# --------------------------------------------------------------------------- target / oneDNN policy
@pytest.mark.parametrize("env,flags,want", [
    ({}, {"avx2", "fma"}, False),
    ({}, {"avx2", "avx512f", "avx512_vnni"}, True),
    ({}, {"avx2", "avx_vnni"}, True),
    ({}, {"avx512f", "avx512_bf16"}, True),
    ({}, {"amx_tile"}, True),
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {"avx2"}, True),
    ({"TF_ENABLE_ONEDNN_OPTS": "TRUE"}, {"avx2"}, True),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {"avx512_vnni"}, False),
    ({"TF_ENABLE_ONEDNN_OPTS": "false"}, {"avx512_vnni"}, False),
    ({"TF_ENABLE_ONEDNN_OPTS": "yes"}, {"avx2"}, False),  # not a TF boolean: TF's default
    ({"TF_ENABLE_ONEDNN_OPTS": "yes"}, {"avx512_vnni"}, True),
])
def test_onednn_policy_is_tensorflows(env, flags, want):
    if not tg._is_x86() or os.uname().sysname != "Linux":
        pytest.skip("TensorFlow's oneDNN default applies to Linux x86")
    assert tg.onednn_enabled(flags, env) is want


@pytest.mark.slow
@pytest.mark.parametrize("env", [None, "0"])
def test_onednn_detection_agrees_with_tensorflow(env):
    """lpo's public rule against TF's own (private) IsMklEnabled(), in a fresh process per setting."""
    e = {k: v for k, v in os.environ.items() if k != tg.ENV}
    if env is not None:
        e[tg.ENV] = env
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    code = ("import lpo.target as t; from tensorflow.python.util import _pywrap_util_port as p; "
            "print(t.onednn_enabled(), bool(p.IsMklEnabled()))")
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ours, tfs = r.stdout.split()
    assert ours == tfs


def test_presets_and_decision_table():
    big, small = [K, UNITS], [UNITS, 64]
    for name in opts.TARGETS:
        t = tg.get_target(name)
        int8 = tg.dense_mode("INT8", "auto", t, big)
        assert int8 == ("compute" if t.onednn else "weight_only"), name  # simulate is never faster
        assert tg.dense_mode("INT8", "auto", t, small) == "weight_only"
        assert tg.dense_mode("BF16", "auto", t, big) == ("compute" if name in ("amx", "zen4") else "weight_only")
        assert tg.dense_mode("FP16", "auto", t, big) == "weight_only"
        for explicit in ("compute", "simulate", "weight_only"):  # explicit choices are kept
            assert tg.dense_mode("INT8", explicit, t, small) == explicit
    # int8 kernels take W as [K, N]: a transposed layer keeps the portable form
    assert tg.dense_mode("INT8", "compute", tg.get_target("amx"), big, transposed=True) == "simulate"
    assert tg.dense_mode("INT8", "auto", tg.get_target("amx"), big, transposed=True) == "weight_only"
    assert tg.get_target("host").detected == (tg.emulated_host() is None) and tg.get_target(None).name == "host"
    assert opts.normalize_int8_dense("static") == "simulate"
    with pytest.raises(lpo.ConfigError, match="did you mean"):
        tg.get_target("avx512_vnnni")
    req = tg.requirements([("INT8", "compute"), ("INT8", "weight_only")], tg.get_target("avx512_vnni"))
    assert req["onednn"] and req["TF_ENABLE_ONEDNN_OPTS"] == "1" and req["cpu_features"] == ["avx512_vnni"]
    assert tg.requirements([("INT8", "simulate"), ("BF16", "weight_only")], tg.get_target("amx")) == {}


def test_avx2_target_defaults_to_weight_only(mlp):
    """On an AVX2 target (no oneDNN) INT8 and BF16 'auto' are the weight-only forms, byte for byte."""
    import filecmp

    for dtype in ("INT8", "BF16"):
        auto = optimize(mlp, f"avx2-{dtype}", data_type=dtype, target="avx2")
        old = optimize(mlp, f"explicit-{dtype}", data_type=dtype, target="avx2", int8_dense="weight_only",
                       dense_mode="weight_only")
        assert filecmp.cmp(os.path.join(auto, "saved_model.pb"), os.path.join(old, "saved_model.pb"), shallow=False)
        m = manifest(auto)
        assert m["requires"] == {} and m["target"]["name"] == "avx2" and not m["target"]["onednn"]
        assert [c["mode"] for c in m["conversions"] if c["kind"] == "dense"] == ["weight_only"] * 3
    assert "FakeQuantWithMinMaxArgs" not in graph_ops(auto.replace("BF16", "INT8"))
    assert "QuantizedMatMulWithBiasAndDequantize" not in graph_ops(auto.replace("BF16", "INT8"))


def test_int8_compute_graph_manifest_and_variables(mlp):
    import tensorflow as tf

    out = optimize(mlp, "vnni", data_type="INT8", target="avx512_vnni")
    ops = graph_ops(out)
    assert ops.count("QuantizedMatMulWithBiasAndDequantize") == 2 and ops.count("QuantizeV2") == 2
    assert ops.count("FakeQuantWithMinMaxArgs") == 0  # the 256x1 layer: int8 weights only
    m = manifest(out)
    assert [c["mode"] for c in m["conversions"]] == ["compute", "compute", "weight_only"]
    assert m["requires"]["onednn"] and m["requires"]["cpu_features"] == ["avx512_vnni"]
    assert m["target"]["name"] == "avx512_vnni"
    # nothing frozen: int8 weights, their scales and the float biases are checkpoint variables
    dtypes = {k: v.name for k, v in tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
              .get_variable_to_dtype_map().items()}
    for i in range(3):
        assert dtypes[f"dense{i}/kernel"] == "int8" and dtypes[f"dense{i}/kernel/lpo_scale"] == "float32"
        assert dtypes[f"dense{i}/bias"] == "float32"
    from lpo.core.savedmodel import read_saved_model, select_meta_graph

    def big_consts(model):
        return {n.name for n in select_meta_graph(read_saved_model(model)).graph_def.node if n.op == "Const"
                and np.prod([d.size for d in n.attr["value"].tensor.tensor_shape.dim]) >= 1024}

    assert big_consts(out) - big_consts(mlp["model"]) == set()


@needs_int8_isa
def test_int8_compute_equals_simulate_numerics(mlp):
    """The int8 kernels compute the numbers of the FakeQuant form (same grid, same weights).

    They differ only where an activation lies within float rounding of a code boundary
    (QuantizeV2 and FakeQuant round in different float steps): a few codes in 10^5.
    """
    x = data(2048)["x"]
    fp32 = predict(mlp["model"], x)
    comp = predict(optimize(mlp, "all_compute", data_type="INT8", int8_dense="compute"), x)  # the 256x1 too
    sim = predict(optimize(mlp, "sim", data_type="INT8", int8_dense="simulate"), x)
    err_c, err_s, gap = np.abs(comp - fp32), np.abs(sim - fp32), np.abs(comp - sim)
    assert np.median(gap) <= 0.05 * np.median(err_s)  # mostly identical
    assert abs(err_c.mean() - err_s.mean()) <= 0.1 * err_s.mean()
    assert err_c.max() <= 2 * err_s.max() and err_s.max() <= 0.05


@needs_onednn
def test_int8_kernels_execute(mlp):
    """Step stats of a run: the oneDNN int8 MatMul runs for both 256-wide layers, no float MatMul for them."""
    import tensorflow as tf

    from lpo.validation.runner import SignatureRunner

    out = optimize(mlp, "vnni", data_type="INT8", target="avx512_vnni")
    with SignatureRunner(out) as r:
        md = tf.compat.v1.RunMetadata()
        r.session.run(r.outputs["prob"], r.feed_dict({"x": data(64)["x"]}),
                      options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                      run_metadata=md)
    kernels = [ns.timeline_label.split("(")[0].split("=")[-1].strip()
               for dev in md.step_stats.dev_stats for ns in dev.node_stats]
    assert sum("QuantizedMatMulWithBiasAndDequantize" in k for k in kernels) == 2
    assert sum("QuantizeV2" in k for k in kernels) == 2


def test_refresh_of_int8_compute_keeps_ranges_and_converts_like_reoptimization(mlp, tmp_path):
    """convert_ckpt/refresh: the variables of a re-optimization, bit for bit; the graph (ranges) of the first run."""
    import filecmp

    import tensorflow as tf

    from lpo.samples.tf1 import perturb_checkpoint

    first = optimize(mlp, "vnni", data_type="INT8", target="avx512_vnni")
    new_ckpt = perturb_checkpoint(mlp["model"], str(tmp_path / "ckpt" / "model.ckpt-2"), seed=3, scale=0.05)
    new_model = str(tmp_path / "new_model")
    import shutil

    shutil.copytree(mlp["model"], new_model)
    for f in os.listdir(os.path.join(new_model, "variables")):
        os.remove(os.path.join(new_model, "variables", f))
    for f in os.listdir(tmp_path / "ckpt"):
        if f.startswith("model.ckpt-2."):
            shutil.copy(tmp_path / "ckpt" / f, os.path.join(new_model, "variables", "variables" + f[len("model.ckpt-2"):]))
    again = str(tmp_path / "again")
    lpo.optimize(new_model, again, data_type="INT8", target="avx512_vnni", calib_file=mlp["calib"], quiet=True)
    out = str(tmp_path / "refreshed")
    lpo.refresh(first, new_ckpt, out, quiet=True)
    assert filecmp.cmp(os.path.join(out, "saved_model.pb"), os.path.join(first, "saved_model.pb"), shallow=False)
    a = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    b = tf.train.load_checkpoint(os.path.join(again, "variables", "variables"))
    keys = sorted(a.get_variable_to_shape_map())
    assert keys == sorted(b.get_variable_to_shape_map())
    for k in keys:
        assert np.array_equal(a.get_tensor(k), b.get_tensor(k)), k
    assert not np.array_equal(a.get_tensor("dense0/kernel"),
                              tf.train.load_checkpoint(os.path.join(first, "variables", "variables"))
                              .get_tensor("dense0/kernel"))


def test_inspect_shows_target_and_requires(mlp, capsys):
    from lpo import cli

    out = optimize(mlp, "vnni", data_type="INT8", target="avx512_vnni")
    info = lpo.inspect_model(out).optimized
    assert info["target"]["name"] == "avx512_vnni" and info["requires"]["onednn"]
    assert info["forms"] == {"INT8 compute": 2, "INT8 weight_only": 1}
    assert cli.main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "target: avx512_vnni (oneDNN on" in text and "requires: oneDNN yes" in text
    assert lpo.inspect_model(mlp["model"]).optimized == {}


@needs_onednn
def test_validate_reports_the_requirements(mlp):
    out = optimize(mlp, "vnni", data_type="INT8", target="avx512_vnni")
    rep = lpo.validate(mlp["model"], out, mlp["heldout"], batch_sizes=(64,), iters=2, warmup=1)
    d = rep.to_dict()
    assert d["runtime"]["requires"]["onednn"] and d["runtime"]["onednn"] and d["runtime"]["ok"]
    assert d["manifest"]["target"]["name"] == "avx512_vnni"
    from lpo.orchestration import validation_metrics

    m = validation_metrics(d)
    assert m["requires_onednn"] == 1.0 and m["onednn"] == 1.0


_OFF_SCRIPT = r"""
import sys
import numpy as np
import lpo, lpo.target
from lpo.validation.runner import SignatureRunner
model, heldout, fp32 = sys.argv[1:4]
x = {"x": np.load(heldout)["x"][:8]}
try:
    SignatureRunner(model)
except lpo.RequirementError as e:
    print("load:", e)
try:
    lpo.validate(fp32, model, heldout, batch_sizes=(8,), iters=1)
except lpo.RequirementError as e:
    print("validate:", e)
lpo.target.check_runnable = lambda *a, **k: None  # as if the manifest were missing: TF's own failure
with SignatureRunner(model) as r:
    try:
        r.run(x)
    except lpo.RequirementError as e:
        print("run:", e)
"""


@pytest.mark.slow
def test_onednn_off_error_path(mlp):
    """TF_ENABLE_ONEDNN_OPTS=0: an LpoError naming the setting and the fallback, never "Missing 0-th output"."""
    out = optimize(mlp, "vnni", data_type="INT8", target="avx512_vnni")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _OFF_SCRIPT, out, mlp["heldout"], mlp["model"]], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = {line.split(":", 1)[0]: line for line in r.stdout.splitlines() if ":" in line}
    assert set(lines) >= {"load", "validate", "run"}, r.stdout
    for line in lines.values():
        assert "TF_ENABLE_ONEDNN_OPTS" in line and "--target" in line and "Missing" not in line
    cli = subprocess.run([sys.executable, "-m", "lpo", "validate", mlp["model"], out, mlp["heldout"]], env=env,
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert cli.returncode == 2, cli.stderr
    err = [line for line in cli.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("lpo: error:") and "TF_ENABLE_ONEDNN_OPTS=0" in err[0]
    assert "Missing 0-th output" not in cli.stderr and "Traceback" not in cli.stderr


# --------------------------------------------------------------------------- tensordot: MatMul -> Reshape -> BiasAdd
def _kernels(model, x):
    import tensorflow as tf

    from lpo.validation.runner import SignatureRunner

    with SignatureRunner(model) as r:
        md = tf.compat.v1.RunMetadata()
        r.session.run(r.outputs["prob"], r.feed_dict({"x": x}),
                      options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                      run_metadata=md)
    return [(ns.node_name, ns.timeline_label.split("(")[0].split("=")[-1].strip())
            for dev in md.step_stats.dev_stats for ns in dev.node_stats]


FUSED = ("_FusedMatMul", "_MklFusedMatMul", "_MklNativeFusedMatMul")


@pytest.fixture(scope="module")
def tensordot(tmp_path_factory):
    d = tmp_path_factory.mktemp("tensordot")
    model = build_mlp(str(d / "model"), tensordot=True)
    np.savez(d / "calib.npz", x=data(256, seed=2)["x"])
    return {"model": model, "calib": str(d / "calib.npz"), "dir": d}


def test_tensordot_bias_moves_after_the_reshape_and_fuses(tensordot):
    """The Reshape goes after BiasAdd+Relu; TensorFlow then runs one fused MatMul kernel per layer."""
    out = str(tensordot["dir"] / "int8_wo")
    lpo.optimize(tensordot["model"], out, data_type="INT8", int8_dense="weight_only", quiet=True)
    cands = {c.name: c for c in lpo.inspect_model(tensordot["model"]).candidates}
    assert {c.detail for c in cands.values()} == {"MatMul+Reshape+BiasAdd+Relu", "MatMul+Reshape+BiasAdd"}
    from lpo.core.savedmodel import read_saved_model, select_meta_graph

    nodes = {n.name: n for n in select_meta_graph(read_saved_model(out)).graph_def.node}
    relu0 = nodes["Relu"]  # the first layer's Relu keeps its name: now the Reshape, fed by a 2-D Relu
    assert relu0.op == "Reshape" and nodes[relu0.input[0]].op == "Relu"
    assert nodes[nodes[relu0.input[0]].input[0]].op == "BiasAdd"
    x = data(256)["x"]
    np.testing.assert_allclose(predict(out, x), predict(tensordot["model"], x), atol=0.02)
    before = [k for _, k in _kernels(tensordot["model"], x)]
    after = [k for _, k in _kernels(out, x)]
    assert "BiasAdd" in before  # TensorFlow cannot fuse across the Reshape ...
    assert "BiasAdd" not in after and sum(k in FUSED for k in after) == 3  # ... and fuses every layer after it


def test_tensordot_int8_compute_graph(tensordot):
    out = str(tensordot["dir"] / "int8_vnni")
    lpo.optimize(tensordot["model"], out, data_type="INT8", target="avx512_vnni", calib_file=tensordot["calib"],
                 quiet=True)
    assert [c["mode"] for c in manifest(out)["conversions"]] == ["compute", "compute", "weight_only"]
    ops = graph_ops(out)
    assert ops.count("QuantizedMatMulWithBiasAndDequantize") == 2 and "BiasAdd" in ops  # the 256x1 layer's
    if ONEDNN and REAL_INT8_ISA:  # the numerics: see needs_int8_isa
        x = data(256)["x"]
        comp, sim = str(tensordot["dir"] / "int8_comp"), str(tensordot["dir"] / "int8_sim")
        for path, mode in ((comp, "compute"), (sim, "simulate")):  # every layer: int8 kernels vs FakeQuant
            lpo.optimize(tensordot["model"], path, data_type="INT8", int8_dense=mode, calib_file=tensordot["calib"],
                         quiet=True)
        fp32 = predict(tensordot["model"], x)
        err_c, err_s = np.abs(predict(comp, x) - fp32), np.abs(predict(sim, x) - fp32)
        assert abs(err_c.mean() - err_s.mean()) <= 0.15 * err_s.mean() and err_c.max() <= 2 * err_s.max()


def test_native_noise_filter_drops_the_onednn_banner():
    from lpo.log import NATIVE_NOISE

    banner = ("I0000 00:00:1796057068.569223   11961 port.cc:153] oneDNN custom operations are on. You may see "
              "slightly different numerical results due to floating-point round-off errors from different "
              "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.")
    assert NATIVE_NOISE.match(banner)
    assert not NATIVE_NOISE.match("lpo: error: model path /x does not exist; pass a SavedModel directory")
    assert not NATIVE_NOISE.match("E0000 00:00:1.5 1 real_kernel.cc:9] a real native error")


def test_requirement_error_is_a_user_error():
    assert issubclass(RequirementError, lpo.LpoError) and RequirementError.exit_code == 2


def test_auto_falls_back_to_weight_only_where_activations_miss_the_gate(mlp, tmp_path, caplog):
    """N(0, 1) inputs on 8 bits move the first layer's output ~1%: 'auto' keeps it weight-only, 'compute' warns."""
    calib = str(tmp_path / "normal.npz")
    np.savez(calib, x=np.random.default_rng(5).normal(0, 1, (512, K)).astype(np.float32))
    out = str(tmp_path / "auto")
    lpo.optimize(mlp["model"], out, data_type="INT8", target="avx512_vnni", calib_file=calib, quiet=True)
    c0, c1, c2 = manifest(out)["conversions"]
    assert (c0["mode"], c0["calib_error"]["gate"], c0["calib_error"]["fallback_from"]) == \
        ("weight_only", "fallback", "compute")
    assert c0["calib_error"]["output_rel_rmse"] > opts.ACTIVATION_GATE.max_output_rel_rmse
    assert c0["activation_range"] is None
    assert (c1["mode"] == "compute") == (c1["calib_error"]["gate"] == "pass") and c2["mode"] == "weight_only"
    assert graph_ops(out).count("QuantizedMatMulWithBiasAndDequantize") == (c1["mode"] == "compute")
    with caplog.at_level("WARNING", logger="lpo"):
        lpo.optimize(mlp["model"], str(tmp_path / "asked"), data_type="INT8", int8_dense="compute", calib_file=calib,
                     quiet=True)
    assert manifest(str(tmp_path / "asked"))["conversions"][0]["calib_error"]["gate"] == "over"
    assert "miss the gate" in caplog.text
