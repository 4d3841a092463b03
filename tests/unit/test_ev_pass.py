"""The DeepRec EV pass and its numerics on hand-built protos and arrays (no files, no checkpoint).

Graphs are built from DeepRec's op definitions (lpo/samples/deeprec.py); the numbers are
checked against element-by-element references of DeepRec's C++ (deeprec_reference.py).
"""
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from lpo import options as opts
from lpo.core import deeprec
from lpo.core.graph import const_value
from lpo.errors import ConfigError, UnsupportedOpsError
from lpo.numerics import quant
from lpo.samples.deeprec import build_ev_graph, deeprec_op_list

from deeprec_reference import deeprec_bf16_bits, deeprec_int8

KV_OPS = ["InitializeKvVariableOp", "KvResourceGather", "KvResourceImportV2", "KvVarHandleOp", "KvVarIsInitializedOp"]
USER = "input_layer/user_embedding/embedding_lookup"
ITEM = "input_layer/item_embedding/embedding_lookup"


def strings(node):
    return [v.decode() for v in np.asarray(const_value(node)).reshape(-1)]


def test_ev_int8_is_deeprecs_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, [37, 6]).astype(np.float32)
    x[:, 2] = 0  # an all-zero dim: scale 0, q 0
    x[:11, 4] = (np.arange(-5, 6) + 0.5) * 2.0 ** -6  # exact halves of the scale 2^-6 ...
    x[11, 4] = 127 * 2.0 ** -6
    x[12:, 4] = 0
    q, s = quant.ev_quantize_int8(x)
    rq, rs = deeprec_int8(x)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(q, rq)
    assert s[4] == 2.0 ** -6 and s[2] == 0 and not q[:, 2].any()
    assert list(q[:11, 4]) == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]  # ... round away from zero (not to even)
    q3, s3 = quant.ev_quantize_int8(x, chunk_rows=3)
    np.testing.assert_array_equal(q3, q)
    np.testing.assert_array_equal(s3, s)
    with pytest.raises(ConfigError, match="non-finite"):
        quant.ev_quantize_int8(np.array([[1.0, np.nan]], np.float32), name="bad")


def test_ev_bf16_truncates_like_deeprec():
    x = np.array([1 + 2 ** -8 + 2 ** -9, -3.3, 0.1, 65504.0, -0.0], np.float32)
    b = quant.ev_to_bf16(x)
    np.testing.assert_array_equal(b.view(np.uint16), deeprec_bf16_bits(x))
    assert b.view(np.uint16)[0] == 0x3F80  # truncated; round-to-nearest-even would give 0x3F81
    assert quant.to_bf16(x).view(np.uint16)[0] == 0x3F81


def test_unknown_ops_and_runnable_check():
    mg = build_ev_graph()
    assert deeprec.unknown_ops(mg.graph_def) == KV_OPS
    with pytest.raises(UnsupportedOpsError, match="KvResourceGather") as e:
        deeprec.check_runnable(mg, "m", "lpo validate runs both models")
    assert "DeepRec" in str(e.value) and e.value.ops == KV_OPS


def test_sample_graph_is_well_formed_against_deeprec_op_defs():
    mg = build_ev_graph()
    assert deeprec.check_nodes(mg.graph_def, mg.meta_info_def.stripped_op_list) == []
    ops = {o.name: o for o in mg.meta_info_def.stripped_op_list.op}
    for o in deeprec_op_list().op:  # DeepRec's own definitions, as DeepRec writes them
        assert ops[o.name] == o
    broken = type(mg.graph_def)()
    broken.CopyFrom(mg.graph_def)
    g = next(n for n in broken.node if n.name == USER)
    del g.attr["dtype"]
    g.input.append("user")
    problems = deeprec.check_nodes(broken, mg.meta_info_def.stripped_op_list)
    assert any("attr 'dtype' is missing" in p for p in problems)
    assert any("4 data inputs, its OpDef needs 3" in p for p in problems)


def test_find_on_hand_built_graph(caplog):
    from lpo.passes import ev
    from lpo.passes.surgery import Surgery

    mg = build_ev_graph()
    found = ev.find(Surgery(mg), {})
    assert [(c.name, c.dim, [p.node for p in c.parts]) for c in found] == [
        ("item_emb", 8, ["item_emb/part_0", "item_emb/part_1"]), ("user_emb", 8, ["user_emb"])]
    assert found[1].lookups == {"user_emb": [USER]}
    assert found[0].lookups == {"item_emb/part_0": [f"{ITEM}/KvResourceGather"],
                                "item_emb/part_1": [f"{ITEM}/KvResourceGather_1"]}
    assert "rows unknown" in ev.describe(found[1])  # no checkpoint given
    # an EV read by an op lpo does not rewrite is left alone, with the reason logged
    n = mg.graph_def.node.add(name="export", op="KvResourceExport", input=["user_emb"])
    n.attr["Tkeys"].type = types_pb2.DT_INT64
    with caplog.at_level("INFO", logger="lpo"):
        found = ev.find(Surgery(mg), {})
    assert [c.name for c in found] == ["item_emb"]
    assert "export (KvResourceExport) reads it" in caplog.text


def test_saver_v3_form_is_renamed():
    """DeepRec's newer saver (SaveV3 with ev_names + KvResourceLookupResource, KvResourceImportV3)."""
    from lpo.core.graph import GraphIndex, dtype_attr, make_const, make_node

    idx = GraphIndex(type(build_ev_graph().graph_def)())
    i64, f32 = dtype_attr(types_pb2.DT_INT64), dtype_attr(types_pb2.DT_FLOAT)
    for n in [make_node("KvVarHandleOp", "E", dtype=f32, Tkeys=i64), make_node("KvVarHandleOp", "E2", dtype=f32),
              make_const("save/Const", np.array(b"p", dtype=object)),
              make_const("save/ev_names", np.array([b"E", b"E2"], dtype=object)),
              make_const("save/names", np.array([b"global_step"], dtype=object)),
              make_const("save/slices", np.array([b""], dtype=object)),
              make_const("save/Const_1", np.array(b"E", dtype=object)),
              make_const("k", np.array(-1, np.int64)), make_const("global_step", np.array(1, np.int64)),
              make_node("KvResourceLookupResource", "save/Lookup", ["E"], dtype=f32, Tkeys=i64),
              make_node("KvResourceLookupResource", "save/Lookup_1", ["E2"], dtype=f32, Tkeys=i64),
              make_node("Pack", "save/ev_resources", ["save/Lookup", "save/Lookup_1"]),
              make_node("SaveV3", "save/SaveV3", ["save/Const", "save/names", "save/slices", "save/ev_names",
                                                  "save/ev_resources", "global_step"]),
              make_node("KvResourceImportV3", "save/KvResourceImportV3", ["save/Const", "E", "save/Const_1", "k"],
                        dtype=f32, Tkeys=i64),
              make_node("KvVarHandleOp", "E/int8_data", dtype=dtype_attr(types_pb2.DT_INT8), Tkeys=i64)]:
        idx.add(n)
    in_saver = lambda name: name.startswith("save/")  # noqa: E731
    assert deeprec.saver_form_problem(idx, in_saver, "E") is None
    deeprec.rename_ev_in_saver(idx, in_saver, "E", "E/int8_data", types_pb2.DT_INT8, None)
    assert list(idx.node("save/Lookup").input) == ["E/int8_data"]
    assert idx.node("save/Lookup").attr["dtype"].type == types_pb2.DT_INT8
    assert idx.node("save/Lookup_1").attr["dtype"].type == types_pb2.DT_FLOAT
    assert strings(idx.input_node(idx.node("save/SaveV3"), 3)) == ["E/int8_data", "E2"]
    imp = idx.node("save/KvResourceImportV3")
    assert list(imp.input)[:2] == ["save/Const", "E/int8_data"] and imp.attr["dtype"].type == types_pb2.DT_INT8
    assert strings(idx.input_node(imp, 2)) == ["E/int8_data"]
    assert idx.consumers("E") == []


def test_rewrite_on_hand_built_graph_then_saver_edit():
    """find -> plan -> rewrite -> rebuild_saver on the protos alone: every node stays well formed."""
    from lpo.core.savedmodel import rebuild_saver
    from lpo.passes import ev
    from lpo.passes.surgery import Surgery

    mg = build_ev_graph()
    s = Surgery(mg)
    options = opts.OptimizeOptions(data_type="FP16")
    convs = [ev.plan(c, "FP16", options) for c in ev.find(s, {})]
    assert [v.dst_key for c in convs for v in c.variables] == [
        "item_emb/part_0/fp16_data", "item_emb/part_1/fp16_data", "user_emb/fp16_data"]
    for c in convs:
        ev.rewrite(s, c)
    out = rebuild_saver(s.finish(), source=mg)  # TF cannot import it: the saver is edited in place
    assert deeprec.check_nodes(out.graph_def, out.meta_info_def.stripped_op_list) == []
    nodes = {n.name: n for n in out.graph_def.node}
    assert nodes[f"{USER}/fp16"].attr["dtype"].type == types_pb2.DT_HALF
    assert nodes["concat"].input[0] == f"{USER}/cast_to_fp32"
    assert not [n for n in nodes if n in ("user_emb", "item_emb/part_0", "item_emb/part_1")]
    assert out.saver_def == mg.saver_def


def test_ev_saved_under_another_name_is_left_alone(caplog):
    from lpo.core.graph import make_const
    from lpo.passes import ev
    from lpo.passes.surgery import Surgery

    mg = build_ev_graph()
    i = next(i for i, n in enumerate(mg.graph_def.node) if n.name == "save/Const_1")  # user_emb's restore name
    mg.graph_def.node[i].CopyFrom(make_const("save/Const_1", np.array(b"scope/user_emb", dtype=object)))
    assert deeprec.ev_specs(mg)["user_emb"].name == "scope/user_emb"
    assert [t.key for t in deeprec.ev_var_specs(mg)] == ["scope/user_emb", "item_emb/part_0", "item_emb/part_1"]
    with caplog.at_level("INFO", logger="lpo"):
        assert [c.name for c in ev.find(Surgery(mg), {})] == ["item_emb"]
    assert "from tensors named 'scope/user_emb'" in caplog.text
