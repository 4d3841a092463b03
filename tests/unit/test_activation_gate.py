"""Outlier-proof INT8 activations: the per-layer output error and the gate (numpy only)."""
import numpy as np

from lpo import options as opts
from lpo.core.calibrate import activation_gate_misses, gate_activations, layer_output_error
from lpo.core.plan import Conversion, VarConversion
from lpo.numerics.observers import output_error
from lpo.numerics.quant import dequantize_int8, fake_quant, quantize_int8


def _conv(mode="compute", auto=True, axis=1, shape=(16, 8)):
    v = VarConversion(key="w", slice="", shape=list(shape), role="weight", dtype="INT8", axis=axis)
    t = {"act_gate": True} if auto else {}
    return Conversion(kind="dense", node="mm", dtype="INT8", scheme="per_channel", mode=mode, variables=[v],
                      targets=dict(t, dequantize_at_load=False), activation_range=[0.0, 1.0])


def test_output_error_matches_its_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64, 16)).astype(np.float32)
    w = rng.normal(0, 0.3, (16, 8))
    lo, hi = -2.0, 2.0
    y = x.astype(np.float64) @ w
    err = fake_quant(x, lo, hi).astype(np.float64) @ w - y
    want = np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(y ** 2))
    assert np.isclose(output_error(x, w, lo, hi), want, rtol=1e-12)
    assert output_error(np.zeros_like(x), w, lo, hi) == 0.0
    # a tighter range clips the tails: the error grows
    assert output_error(x, w, -0.5, 0.5) > 5 * output_error(x, w, lo, hi)


def test_layer_output_error_uses_the_stored_int8_weight_and_its_orientation():
    rng = np.random.default_rng(1)
    x = rng.random((32, 16)).astype(np.float32)
    w = rng.normal(0, 0.3, (16, 8)).astype(np.float32)
    wd = dequantize_int8(*quantize_int8(w, 1)).astype(np.float64)
    got = layer_output_error(_conv(), x, w, 0.0, 1.0)
    assert np.isclose(got, output_error(x, wd, 0.0, 1.0), rtol=1e-12)
    # transpose_b: the weight is [units, in], scales per row
    assert np.isclose(layer_output_error(_conv(axis=0, shape=(8, 16)), x, w.T.copy(), 0.0, 1.0), got, rtol=1e-6)


def test_gate_moves_auto_layers_and_keeps_requested_ones(caplog):
    gate = opts.ACTIVATION_GATE
    ok = {"clipped": 0.0, "output_rel_rmse": gate.max_output_rel_rmse / 2}
    assert activation_gate_misses(ok) == []
    assert activation_gate_misses({"clipped": 2 * gate.max_clip_rate, "output_rel_rmse": 0.0})
    assert activation_gate_misses({"clipped": 0.0, "output_rel_rmse": 2 * gate.max_output_rel_rmse})
    good, bad, asked = _conv(), _conv(), _conv(mode="simulate", auto=False)
    good.calib_error = dict(ok)
    bad.calib_error = {"clipped": 0.0, "output_rel_rmse": 3 * gate.max_output_rel_rmse}
    asked.calib_error = dict(bad.calib_error)
    with caplog.at_level("WARNING", logger="lpo"):
        assert gate_activations([good, bad, asked], dequantize_at_load=True) == 1
    assert (good.mode, good.calib_error["gate"]) == ("compute", "pass")
    assert (bad.mode, bad.activation_range, bad.calib_error["gate"]) == ("weight_only", None, "fallback")
    assert bad.calib_error["fallback_from"] == "compute" and bad.targets["dequantize_at_load"] is True
    assert (asked.mode, asked.calib_error["gate"]) == ("simulate", "over") and "miss the gate" in caplog.text
