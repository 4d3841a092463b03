"""The storage-form registry (lpo.formats): discovery, dispatch, and checkpoint outputs identical to
what lpo wrote before the forms became modules (digests in formats_reference.json, recorded from the
dtype if-chains of lpo.core.checkpoint at commit c2f7069; INT4's changed once since, with its range
search, and are pinned too)."""
import functools
import hashlib
import json
import os
import types

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from lpo import formats, options as opts
from lpo.core.checkpoint import convert_ev_values, convert_values
from lpo.core.graph import DT
from lpo.core.plan import VarConversion as V
from lpo.errors import CheckpointError, ConfigError
from lpo.numerics import quant

REFERENCE = os.path.join(os.path.dirname(__file__), "formats_reference.json")
FORMS = ("BF16", "FP16", "INT4:per_dim", "INT4:per_row", "INT4:per_row_sym", "INT4:per_row_sym8", "INT8:per_dim",
         "INT8:per_row")


def _inputs():
    rng = np.random.default_rng(2024)
    out = {}
    for n, d in ((300, 16), (257, 5), (64, 1), (40, 8)):
        x = (rng.standard_normal((n, d)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32)
        x[3] = 0
        x[5, 0] = 40.0
        out[f"{n}x{d}"] = x
    out["t200x12"] = rng.standard_t(2, (200, 12)).astype(np.float32)
    return out


def _cases(n, d):
    """The VarConversions the passes plan (and format-1 manifests and DeepRec EVs hold)."""
    c = (d + 1) // 2
    yield "BF16", V("t", "", [n, d], "table", "BF16")
    yield "FP16", V("t", "", [n, d], "table", "FP16")
    yield "INT8:per_dim", V("t", "", [n, d], "table", "INT8", scale_key="t/lpo_scale", axis=1, scale_shape=[d],
                            scale_dtype="FP32")
    yield "INT8:per_row", V("t", "", [n, d], "table", "INT8", scale_key="t/lpo_scale", axis=0, scale_shape=[n, 1],
                            scale_dtype="FP16", base_key="t/lpo_scale_base")
    yield "INT8:fmt1_row", V("t", "", [n, d], "table", "INT8", scale_key="t/lpo_scale", axis=0, scale_shape=[n, 1])
    yield "INT8:dense", V("w", "", [n, d], "weight", "INT8", scale_key="w/lpo_scale", axis=1, scale_shape=[d])
    yield "INT4:per_dim", V("t", "", [n, d], "table", "INT4", scale_key="t/lpo_scale", axis=1, scale_shape=[d],
                            scale_dtype="FP32", offset_key="t/lpo_offset", out_shape=[n, c], out_slice="")
    yield "INT4:per_row", V("t", "", [n, d], "table", "INT4", scale_key="t/lpo_scale", axis=0, scale_shape=[n, 1],
                            scale_dtype="FP16", offset_key="t/lpo_offset", base_key="t/lpo_scale_base",
                            out_shape=[n, c], out_slice="")
    yield "INT4:per_row_sym", V("t", "", [n, d], "table", "INT4", scale_key="t/lpo_scale", axis=0,
                                scale_shape=[n, 1], scale_dtype="FP16", base_key="t/lpo_scale_base",
                                out_shape=[n, c], out_slice="")
    yield "INT4:per_row_sym8", V("t", "", [n, d], "table", "INT4", scale_key="t/lpo_scale_base", axis=0,
                                 scale_shape=[], scale_dtype="FP32", out_shape=[n, c + 1], out_slice="")
    yield "EV:BF16", V("e", "", [-1, d], "ev", "BF16", dst_key="e2")
    yield "EV:FP16", V("e", "", [-1, d], "ev", "FP16", dst_key="e2")
    yield "EV:INT8", V("e", "", [-1, d], "ev", "INT8", dst_key="e2", scale_key="e/int8_scale", scale_shape=[d], axis=1)


def _digest(outs) -> str:
    h = hashlib.sha256()
    for k, s, a in outs:
        a = np.asarray(a)
        h.update(f"{k}|{s}|{a.dtype.name}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _converted():
    for name, x in _inputs().items():
        for form, vc in _cases(*x.shape):
            yield f"{name} {form}", (convert_ev_values if form.startswith("EV:") else convert_values)(vc, x, "t")


def _no_range_search(monkeypatch):
    monkeypatch.setattr(quant, "quantize_int4", functools.partial(quant.quantize_int4, search=False))
    monkeypatch.setattr(quant, "quantize_int4_sym", functools.partial(quant.quantize_int4_sym, search=False))
    monkeypatch.setattr(quant, "quantize_int4_sym8", functools.partial(quant.quantize_int4_sym8, search=False))


def test_checkpoint_outputs_are_those_lpo_wrote_before_the_registry(monkeypatch):
    """Every form lpo had then, INT4 with the min/max ranges it had then (``search=False``)."""
    _no_range_search(monkeypatch)
    want = json.load(open(REFERENCE, encoding="utf-8"))["before_registry"]
    assert len(want) == 55
    got = {k: _digest(outs) for k, outs in _converted() if k in want}
    assert got.keys() == want.keys()
    assert {k for k in got if got[k] != want[k]} == set()


def test_int4_outputs_with_the_range_search_are_pinned():
    """INT4 now searches its ranges (lpo.numerics.quant._greedy): its outputs changed once, on purpose
    (and the symmetric row-wise form came)."""
    ref = json.load(open(REFERENCE, encoding="utf-8"))
    got = {k: _digest(outs) for k, outs in _converted() if "INT4" in k}
    assert got == ref["int4_range_search"]
    assert sum(got[k] != ref["before_registry"].get(k) for k in got) >= 18


def test_the_package_modules_are_the_registered_forms():
    assert sorted(formats.names()) == sorted(FORMS)
    assert formats.dtypes() == ("BF16", "FP16", "INT4", "INT8")
    assert formats.schemes("INT8") == ("per_dim", "per_row") and formats.schemes("BF16") == ()
    assert formats.schemes("INT4") == ("per_dim", "per_row", "per_row_sym", "per_row_sym8")
    assert {k: DT[k] for k in DT} == {"FP32": types_pb2.DT_FLOAT, "BF16": types_pb2.DT_BFLOAT16,
                                      "FP16": types_pb2.DT_HALF, "INT4": types_pb2.DT_UINT8,
                                      "INT8": types_pb2.DT_INT8}
    with pytest.raises(KeyError):
        DT["INT3"]
    with pytest.raises(ConfigError, match="unknown storage form 'INT3'"):
        formats.get("INT3")


@pytest.mark.parametrize("form,vc", list(_cases(10, 4)))
def test_each_plan_entry_finds_its_form(form, vc):
    if form.startswith("EV:"):
        return
    want = {"INT8:fmt1_row": "INT8:per_dim", "INT8:dense": "INT8:per_dim"}.get(form, form)
    assert formats.for_var(vc).NAME == want


def test_simulation_is_what_each_form_stores_dequantized(monkeypatch):
    """Each form's float32 view is its own numpy dequantization, within its error bound of the input
    (INT4 with min/max ranges: its range search clips, see tests/unit/test_quant_int4.py)."""
    _no_range_search(monkeypatch)
    x = _inputs()["300x16"]
    for form, vc in _cases(*x.shape):
        if form.startswith("EV:"):
            continue
        outs = convert_values(vc, x, "t")
        got = formats.for_var(vc).simulate(vc, outs)
        assert got.dtype == np.float32 and got.shape == x.shape
        bound = {"BF16": quant.error_bound("bf16", x), "FP16": quant.error_bound("fp16", x)}.get(form)
        if form == "INT4:per_row_sym8":  # the row scale is coded in each row's last byte
            bound = quant.int4_error_bound(quant.E4M4_SCALES[outs[0][2][:, -1]][:, None], outs[1][2])
        if bound is None:
            scale = dict((k, a) for k, _s, a in outs)[vc.scale_key]
            base = dict((k, a) for k, _s, a in outs).get(vc.base_key)
            s = quant.effective_scale(scale, base) if base is not None else scale
            bound = (quant.int4_error_bound if form.startswith("INT4") else quant.int8_error_bound)(s)
        assert np.all(np.abs(got - x) <= bound), form


def test_table_bytes_are_the_forms_sizes():
    assert formats.table_bytes(1000, 16, "FP32") == 64000
    assert formats.table_bytes(1000, 16, "BF16") == formats.table_bytes(1000, 16, "FP16") == 32000
    assert formats.table_bytes(1000, 16, "INT8") == formats.table_bytes(1000, 16, "INT8", "per_dim") == 16064
    assert formats.table_bytes(1000, 16, "INT8", "per_row") == 16000 + 2000 + 4
    assert formats.table_bytes(1000, 15, "INT4", "per_dim") == 8000 + 120
    assert formats.table_bytes(1000, 16, "INT4", "per_row") == 8000 + 4000 + 4
    assert formats.table_bytes(1000, 16, "INT4", "per_row_sym") == 8000 + 2000 + 4
    with pytest.raises(ConfigError):
        formats.table_bytes(10, 2, "INT3")


def test_a_form_that_misses_a_name_or_is_misnamed_is_refused():
    with pytest.raises(ConfigError, match="lacks .*encode"):
        formats.register(types.SimpleNamespace(NAME="X8", DTYPE="X8", SCHEME="cast"))
    good = {a: None for a in formats.REQUIRED}
    with pytest.raises(ConfigError, match="must be named 'X8:per_dim'"):
        formats.register(types.SimpleNamespace(**{**good, "NAME": "X8", "DTYPE": "X8", "SCHEME": "per_dim"}))
    assert "X8" not in formats.dtypes()


def test_a_registered_form_is_an_opt_config_value_and_leaves_again():
    import toy_format

    assert "TOY8" not in opts.node_dtypes()
    with pytest.raises(ConfigError):
        opts.normalize_node_choice("toy8")
    formats.register(toy_format)
    try:
        assert opts.normalize_node_choice("toy8:per-dim") == opts.NodeChoice("TOY8", "per_dim")
        assert formats.select("TOY8", 10, 4, opts.OPTIMIZE, "t") is toy_format
        with pytest.raises(ConfigError):
            opts.normalize_dtype("TOY8")  # model-wide data types stay the built-in ones
    finally:
        formats.unregister(toy_format.NAME)
    assert "TOY8" not in opts.node_dtypes()


def test_an_unknown_dtype_in_a_manifest_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="unknown target dtype 'INT3'"):
        convert_values(V("t", "", [2, 2], "table", "INT3"), np.zeros((2, 2), np.float32), "t")
    with pytest.raises(CheckpointError, match="unknown target dtype 'INT4'"):
        convert_ev_values(V("e", "", [-1, 2], "ev", "INT4", dst_key="e2"), np.zeros((2, 2), np.float32), "e")
