"""DeepRec EmbeddingVariables (issue 15): inspect, optimize, convert_ckpt, refresh, validate.

The model is hand-built from DeepRec's op definitions (lpo/samples/deeprec.py); its
checkpoint is written with SaveV2 under DeepRec's tensor names. Stock TensorFlow cannot
run it, so serving is checked through tests/ev_emulation.py (Kv ops emulated by stock
ops), and the numbers against numpy references of DeepRec's C++ conversion.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2, variable_pb2

import lpo
from lpo.core import deeprec
from lpo.core.graph import const_value
from lpo.core.savedmodel import read_saved_model, select_meta_graph
from lpo.errors import CheckpointError, ConfigError, UnsupportedOpsError
from lpo.samples.deeprec import build_ev_model, write_ev_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "unit")]
from deeprec_reference import comparable, reference_values  # noqa: E402
from ev_emulation import run_emulated  # noqa: E402

DTYPES = ("INT8", "BF16", "FP16")
PARTS = ("user_emb", "item_emb/part_0", "item_emb/part_1")
SUFFIXES = [s for s in deeprec.EV_SUFFIXES if s != "-values"]
KV_OPS = ["InitializeKvVariableOp", "KvResourceGather", "KvResourceImportV2", "KvVarHandleOp", "KvVarIsInitializedOp"]
USER = "input_layer/user_embedding/embedding_lookup"
ITEM = "input_layer/item_embedding/embedding_lookup"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ev_model(tmp_path_factory):
    return build_ev_model(str(tmp_path_factory.mktemp("ev") / "model"))


@pytest.fixture(scope="module")
def ev_source(ev_model):
    r = tf.train.load_checkpoint(ev_model.variables_prefix)
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def ev_optimized(ev_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("ev_opt")
    out = {}
    for dt in DTYPES:
        lpo.optimize(ev_model.path, str(base / dt), data_type=dt, int8_dense="weight_only", quiet=True)
        out[dt] = str(base / dt)
    return out


def graph_of(path):
    mg = select_meta_graph(read_saved_model(path))
    return mg, {n.name: n for n in mg.graph_def.node}


def ckpt(prefix):
    r = tf.train.load_checkpoint(prefix)
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()}


def strings(node):
    return [v.decode() for v in np.asarray(const_value(node)).reshape(-1)]


# --------------------------------------------------------------------------- inspect
def test_inspect_lists_evs_with_rows(ev_model):
    cands = {c.name: c for c in lpo.inspect_model(ev_model.path).candidates}
    assert cands["user_emb"].kind == "ev" and cands["user_emb"].shape == [40, 8]
    assert cands["item_emb"].shape == [60, 8] and cands["item_emb"].dtype == "float32"
    assert cands["item_emb"].detail == "EmbeddingVariable (int64 keys, 2 parts, 60 rows)"
    assert cands["user_emb"].nbytes == 40 * 8 * 4
    assert {"cat_emb", "dense_0/MatMul", "dense_1/MatMul"} <= set(cands)  # the rest of the model still found


def test_cli_inspect_shows_evs(ev_model, capsys):
    from lpo import cli

    assert cli.main(["inspect", ev_model.path]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if " user_emb " in f" {line} ")
    assert row.split()[:4] == ["ev", "user_emb", "40x8", "float32"]


# --------------------------------------------------------------------------- the rewritten graph
@pytest.mark.parametrize("dtype", DTYPES)
def test_rewritten_graph_is_deeprecs_form(ev_model, ev_optimized, dtype):
    low, dt = dtype.lower(), {"INT8": types_pb2.DT_INT8, "BF16": types_pb2.DT_BFLOAT16,
                              "FP16": types_pb2.DT_HALF}[dtype]
    src_mg, src = graph_of(ev_model.path)
    mg, nodes = graph_of(ev_optimized[dtype])
    f32 = types_pb2.DT_FLOAT
    for part in PARTS:
        new = f"{part}/{low}_data"
        assert part not in nodes and f"{part}/Assign" not in nodes
        assert not any(n.startswith(f"{part}/Initializer") for n in nodes)  # the FP32 initializer is pruned
        h = nodes[new]
        assert h.op == "KvVarHandleOp" and h.attr["dtype"].type == dt and h.attr["shared_name"].s == new.encode()
        assert [d.size for d in h.attr["shape"].shape.dim] == [8] and h.attr["Tkeys"].type == types_pb2.DT_INT64
        init, old_init = nodes[f"{new}/Assign"], src[f"{part}/Assign"]
        assert init.op == "InitializeKvVariableOp"
        assert list(init.input) == [new, new, f"{new}/Initializer/zeros", f"{part}/Const"]
        assert {k: v for k, v in init.attr.items() if k != "dtype"} == \
            {k: v for k, v in old_init.attr.items() if k != "dtype"} and init.attr["dtype"].type == dt
        zeros = nodes[f"{new}/Initializer/zeros"]
        assert zeros.op == "Fill" and list(const_value(nodes[zeros.input[0]])) == [4096, 8]
        assert const_value(nodes[zeros.input[1]]) == 0 and zeros.attr["T"].type == dt
        assert nodes[f"{new}/IsInitialized/KvVarIsInitializedOp"].attr["dtype"].type == dt
        if dtype == "INT8":
            scale = nodes[f"{part}/int8_scale"]
            assert scale.op == "VariableV2" and [d.size for d in scale.attr["shape"].shape.dim] == [8]
            assert scale.attr["dtype"].type == f32
        else:
            assert f"{part}/int8_scale" not in nodes
    assert "init" in nodes and "^user_emb/Assign" not in nodes["init"].input
    assert f"^user_emb/{low}_data/Assign" in nodes["init"].input

    # lookups: G/<dt> -> G/cast_to_fp32 (-> G/rescale), consumers rewired, G removed
    def check_lookup(g, part, ids, consumer, pos):
        new = f"{part}/{low}_data"
        gather = nodes[f"{g}/{low}"]
        assert gather.op == "KvResourceGather" and list(gather.input[:2]) == [new, ids]
        assert gather.attr["dtype"].type == dt and gather.attr["is_inference"].b  # kept from G
        cast = nodes[f"{g}/cast_to_fp32"]
        assert cast.op == "Cast" and list(cast.input) == [gather.name]
        assert (cast.attr["SrcT"].type, cast.attr["DstT"].type) == (dt, f32)
        out = cast.name
        if dtype == "INT8":
            rescale = nodes[f"{g}/rescale"]
            assert rescale.op == "Mul" and list(rescale.input) == [cast.name, f"{part}/int8_scale/read"]
            out = rescale.name
        else:
            assert f"{g}/rescale" not in nodes
        assert g not in nodes and nodes[consumer].input[pos] == out
        return gather

    user = check_lookup(USER, "user_emb", "user", "concat", 0)
    default = nodes[user.input[2]]  # no default tensor: Const(1) of the new dtype
    assert default.op == "Const" and default.attr["dtype"].type == dt and float(const_value(default)) == 1
    assert not user.attr["is_use_default_value_tensor"].b
    for i, part in enumerate(("item_emb/part_0", "item_emb/part_1")):
        g = f"{ITEM}/KvResourceGather" + ("" if i == 0 else f"_{i}")
        item = check_lookup(g, part, f"{ITEM}/DynamicPartition:{i}", ITEM, 2 + i)
        assert item.attr["is_use_default_value_tensor"].b
        cast = nodes[item.input[2]]  # the default tensor, cast to the new dtype ...
        assert cast.op == "Cast" and cast.attr["DstT"].type == dt
        if dtype == "INT8":  # ... after dividing by the scale and clipping to [-128, 127]
            clip = nodes[cast.input[0]]
            assert clip.op == "ClipByValue" and [float(const_value(nodes[x])) for x in clip.input[1:]] == [-128, 127]
            div = nodes[clip.input[0]]
            assert div.op == "RealDiv" and list(div.input) == [f"{ITEM}/default_value", f"{part}/int8_scale/read"]
        else:
            assert cast.input[0] == f"{ITEM}/default_value"

    # the saver: DeepRec's SaveV2(has_ev) takes the new handles under their names; imports read them
    save = nodes["save/SaveV2"]
    names = strings(nodes[save.input[1]])
    assert save.attr["has_ev"].b and names[0] == "global_step"
    types = list(save.attr["dtypes"].list.type)
    for part in PARTS:
        new = f"{part}/{low}_data"
        assert part not in names
        k = names.index(new)
        assert save.input[3 + k] == new and types[k] == types_pb2.DT_RESOURCE
    if dtype == "INT8":
        for part in PARTS:
            k = names.index(f"{part}/int8_scale")
            assert save.input[3 + k] == f"{part}/int8_scale" and types[k] == f32
    imports = [n for n in nodes.values() if n.op == "KvResourceImportV2"]
    assert len(imports) == 3
    for imp in imports:
        new = imp.input[1]
        part = new.rsplit("/", 1)[0]
        assert list(imp.input) == ["save/Const", new, new, f"{new}/Initializer/zeros", imp.input[4], f"{part}/Const"]
        assert strings(nodes[imp.input[4]]) == [new] and imp.attr["dtype"].type == dt
        old = next(n for n in src.values() if n.op == "KvResourceImportV2" and n.input[1] == part)
        assert {k: v for k, v in imp.attr.items() if k != "dtype"} == \
            {k: v for k, v in old.attr.items() if k != "dtype"}  # partition_id/num, storage, ... kept
        assert "^" + imp.name in nodes["save/restore_all"].input
    assert nodes["save/KvResourceImportV2_2"].attr["partition_id"].i == 1
    assert nodes["save/KvResourceImportV2_2"].attr["partition_num"].i == 2
    if dtype == "INT8":  # the scales: RestoreV2 -> Assign under restore_all
        for part in PARTS:
            assign = next(n for n in nodes.values() if n.op == "Assign" and n.input[0] == f"{part}/int8_scale"
                          and n.name.startswith("save/"))
            restore = nodes[assign.input[1]]
            assert restore.op == "RestoreV2" and strings(nodes[restore.input[1]]) == [f"{part}/int8_scale"]
            assert "^" + assign.name in nodes["save/restore_all"].input

    # VariableDefs follow in every collection; op defs: DeepRec's kept, stock ones added
    for key in ("variables", "trainable_variables", "embedding_variables"):
        defs = []
        for raw in mg.collection_def[key].bytes_list.value:
            vd = variable_pb2.VariableDef()
            vd.ParseFromString(raw)
            defs.append(vd)
        by_name = {d.variable_name: d for d in defs}
        assert not {p + ":0" for p in PARTS} & set(by_name)
        vd = by_name[f"item_emb/part_1/{low}_data:0"]
        assert vd.initializer_name == f"item_emb/part_1/{low}_data/Assign" and vd.is_resource
        assert vd.save_slice_info_def.full_name == "item_emb" and list(vd.save_slice_info_def.var_offset) == [1, 0]
    ops = {o.name: o for o in mg.meta_info_def.stripped_op_list.op}
    src_ops = {o.name: o for o in src_mg.meta_info_def.stripped_op_list.op}
    for name in KV_OPS + ["SaveV2"]:
        assert ops[name] == src_ops[name]
    assert {"Cast", "Fill"} <= set(ops) and ("ClipByValue" in ops) == (dtype == "INT8")
    assert deeprec.check_nodes(mg.graph_def, mg.meta_info_def.stripped_op_list) == []


# --------------------------------------------------------------------------- the converted checkpoint
@pytest.mark.parametrize("dtype", DTYPES)
def test_converted_ev_tensors_are_deeprecs(ev_optimized, ev_source, dtype):
    low = dtype.lower()
    out = ckpt(os.path.join(ev_optimized[dtype], "variables", "variables"))
    for part in PARTS:
        new = f"{part}/{low}_data"
        values, scale, _ = reference_values(dtype, ev_source[part + "-values"])
        got = out[new + "-values"]
        assert got.dtype.name == {"INT8": "int8", "BF16": "bfloat16", "FP16": "float16"}[dtype]
        np.testing.assert_array_equal(comparable(got), values)
        if dtype == "INT8":
            np.testing.assert_array_equal(out[f"{part}/int8_scale"], scale)
        for sfx in SUFFIXES:  # keys, freqs, versions, offsets, filtered: copied as they are, renamed
            np.testing.assert_array_equal(out[new + sfx], ev_source[part + sfx])
            assert out[new + sfx].dtype == ev_source[part + sfx].dtype
        assert not any(k.startswith(part + "-") for k in out)
    assert out["global_step"] == ev_source["global_step"]
    if dtype == "INT8":  # partitions keep their own per-dim scales
        assert not np.array_equal(out["item_emb/part_0/int8_scale"], out["item_emb/part_1/int8_scale"])


def test_manifest_records_the_ev_plan(ev_optimized):
    with open(os.path.join(ev_optimized["INT8"], "assets.extra", "lpo_manifest.json")) as f:
        m = json.load(f)
    conv = next(c for c in m["conversions"] if c["node"] == "item_emb")
    assert conv["kind"] == "ev" and conv["scheme"] == "per_dim"
    assert [(v["key"], v["dst_key"], v["scale_key"], v["role"]) for v in conv["variables"]] == [
        ("item_emb/part_0", "item_emb/part_0/int8_data", "item_emb/part_0/int8_scale", "ev"),
        ("item_emb/part_1", "item_emb/part_1/int8_data", "item_emb/part_1/int8_scale", "ev")]


# --------------------------------------------------------------------------- serving (emulated Kv ops)
@pytest.mark.parametrize("dtype", DTYPES)
def test_serving_equals_fp32_model_on_deeprecs_dequantized_tables(ev_model, ev_source, tmp_path, dtype):
    """With only the EVs converted, the optimized graph computes exactly the FP32 graph on the
    dequantized EV tables: casts, rescales and rewiring are right, the rest is untouched."""
    opt = str(tmp_path / "opt")
    lpo.optimize(ev_model.path, opt, opt_config={"user_emb": dtype, "item_emb": dtype}, quiet=True)
    ref = dict(ev_source)
    for part in PARTS:
        ref[part + "-values"] = reference_values(dtype, ev_source[part + "-values"])[2]
    prefix = str(tmp_path / "ref")
    names = sorted(ref)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(ref[k]) for k in names])
    want = run_emulated(ev_model.path, ev_model.feeds, prefix=prefix)["prob"]
    got = run_emulated(opt, ev_model.feeds)["prob"]
    np.testing.assert_array_equal(got, want)


def test_whole_model_serves_close_to_fp32(ev_model, ev_optimized):
    base = run_emulated(ev_model.path, ev_model.feeds)["prob"]
    for dtype, tol in (("INT8", 2e-2), ("BF16", 1e-2), ("FP16", 1e-3)):
        got = run_emulated(ev_optimized[dtype], ev_model.feeds)["prob"]
        assert got.shape == base.shape and np.abs(got - base).max() < tol, dtype


# --------------------------------------------------------------------------- convert_ckpt / refresh
@pytest.mark.parametrize("dtype", ("INT8", "BF16"))
def test_convert_ckpt_and_refresh_equal_reoptimization(ev_model, ev_optimized, tmp_path, dtype):
    rows = {"user_emb": 55, "item_emb/part_0": 35, "item_emb/part_1": 33}  # the EVs grew
    new_ckpt = str(tmp_path / "new" / "model.ckpt-200")
    os.makedirs(os.path.dirname(new_ckpt))
    write_ev_checkpoint(new_ckpt, rows=rows, seed=7)
    res = lpo.convert_ckpt(new_ckpt, str(tmp_path / "conv"), ev_optimized[dtype], quiet=True)
    assert res.tensors_converted > 0
    twin = build_ev_model(str(tmp_path / "twin"), seed=7, rows=rows)  # the same checkpoint as a model
    lpo.optimize(twin.path, str(tmp_path / "reopt"), data_type=dtype, int8_dense="weight_only", quiet=True)
    a, b = ckpt(str(tmp_path / "conv")), ckpt(str(tmp_path / "reopt" / "variables" / "variables"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(comparable(a[k]), comparable(b[k]), err_msg=k)
    assert a[f"user_emb/{dtype.lower()}_data-values"].shape == (55, 8)

    out = str(tmp_path / "refreshed")
    lpo.refresh(ev_optimized[dtype], new_ckpt, out, quiet=True)
    with open(os.path.join(out, "saved_model.pb"), "rb") as f1, \
            open(os.path.join(ev_optimized[dtype], "saved_model.pb"), "rb") as f2:
        assert f1.read() == f2.read()
    feeds = dict(ev_model.feeds, user=ev_model.feeds["user"] % 55)
    np.testing.assert_array_equal(run_emulated(out, feeds)["prob"],
                                  run_emulated(str(tmp_path / "reopt"), feeds)["prob"])


# --------------------------------------------------------------------------- opt_config, bad input
def test_opt_config_takes_ev_names(ev_model, tmp_path):
    res = lpo.optimize(ev_model.path, str(tmp_path / "o"), opt_config={"user_emb": "INT8"}, quiet=True)
    assert [(n.kind, n.node, n.dtype) for n in res.optimized] == [("ev", "user_emb", "INT8")]
    _, nodes = graph_of(str(tmp_path / "o"))
    assert "user_emb/int8_data" in nodes and "item_emb/part_0" in nodes and "cat_emb/lpo_scale" not in nodes
    out = ckpt(str(tmp_path / "o" / "variables" / "variables"))
    assert out["item_emb/part_0-values"].dtype == np.float32 and out["cat_emb"].dtype == np.float32
    assert "item_emb/part_0-freqs" in out
    with pytest.raises(ConfigError, match="closest: item_emb"):
        lpo.optimize(ev_model.path, str(tmp_path / "o2"), opt_config={"item_emb/part_0": "INT8"})
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("bad, message", [
    ({"drop": ("user_emb-values",)}, r"EmbeddingVariable 'user_emb' has no 'user_emb-values' tensor"),
    ({"mismatch": "item_emb/part_1"}, r"'item_emb/part_1-keys' holds \[31\] keys but 'item_emb/part_1-values' "
                                      r"has 30 rows"),
])
def test_bad_ev_checkpoints_are_refused(ev_optimized, tmp_path, bad, message):
    model = build_ev_model(str(tmp_path / "bad"), **bad)
    with pytest.raises(CheckpointError, match=message):
        lpo.optimize(model.path, str(tmp_path / "out"), data_type="BF16", quiet=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match=message):
        lpo.convert_ckpt(model.variables_prefix, str(tmp_path / "conv"), ev_optimized["BF16"], quiet=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("conv")]


def test_int8_static_dense_says_it_cannot_calibrate(ev_model, tmp_path):
    with pytest.raises(UnsupportedOpsError, match="int8_dense='weight_only'"):
        lpo.optimize(ev_model.path, str(tmp_path / "o"), data_type="INT8", int8_dense="simulate",
                     calib_file=str(tmp_path / "x.npz"))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- validate
@pytest.fixture(scope="module")
def heldout(ev_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ev_data") / "heldout.npz")
    np.savez(path, label=np.zeros(64, np.float32), **ev_model.feeds)
    return path


def test_validate_names_the_missing_ops(ev_model, ev_optimized, heldout, tmp_path):
    with pytest.raises(UnsupportedOpsError) as e:
        lpo.validate(ev_model.path, ev_optimized["INT8"], heldout, report_dir=str(tmp_path / "rep"))
    msg = str(e.value)
    assert all(op in msg for op in KV_OPS) and "DeepRec" in msg and "lpo validate runs both models" in msg
    assert not (tmp_path / "rep").exists()


@pytest.mark.slow
def test_cli_validate_one_line_exit_2(ev_model, ev_optimized, heldout, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "lpo", "validate", ev_model.path, ev_optimized["BF16"], heldout,
                           "--report-dir", str(tmp_path / "rep")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lpo: error:")]
    assert len(errors) == 1 and "KvResourceGather" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists()


@pytest.mark.slow
def test_kfp_validate_step_fails_the_same_way(ev_model, ev_optimized, heldout):
    pytest.importorskip("kfp")
    from types import SimpleNamespace

    from lpo.components.validate import validate

    art = lambda p: SimpleNamespace(path=p, metadata={})  # noqa: E731
    with pytest.raises(UnsupportedOpsError, match="KvVarHandleOp"):
        validate.python_func(original=art(ev_model.path), optimized=art(ev_optimized["FP16"]), data=heldout,
                             metrics=SimpleNamespace(log_metric=lambda *a: None), report=art("r.html"),
                             report_md=art("r.md"))


@pytest.mark.slow
def test_airflow_validate_operator_fails_the_same_way(ev_model, ev_optimized, heldout, tmp_path):
    pytest.importorskip("airflow.sdk")
    from airflow.sdk.exceptions import AirflowFailException

    from lpo.operators import LpoValidateOperator

    op = LpoValidateOperator(task_id="validate", original=ev_model.path, optimized=ev_optimized["FP16"],
                             data=heldout, report_dir=str(tmp_path / "rep"))
    with pytest.raises(AirflowFailException, match="UnsupportedOpsError: .*KvResourceGather"):
        op.execute({})
    assert not (tmp_path / "rep").exists()


def test_optimize_is_deterministic_and_ev_tensors_group_together(ev_model, ev_optimized, tmp_path):
    from lpo.core.checkpoint import tensor_groups
    from lpo.core.plan import read_manifest
    from lpo.core.savedmodel import variable_specs

    again = str(tmp_path / "again")
    lpo.optimize(ev_model.path, again, data_type="INT8", int8_dense="weight_only", quiet=True)
    for f in ("saved_model.pb", os.path.join("assets.extra", "lpo_manifest.json")):
        with open(os.path.join(again, f), "rb") as a, open(os.path.join(ev_optimized["INT8"], f), "rb") as b:
            assert a.read() == b.read(), f
    a, b = ckpt(os.path.join(again, "variables", "variables")), ckpt(
        os.path.join(ev_optimized["INT8"], "variables", "variables"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # what a sharded conversion must keep in one shard: an EV's tensors, renamed together
    mg, _ = graph_of(ev_optimized["INT8"])
    targets = list(variable_specs(mg).values()) + deeprec.ev_var_specs(mg)
    groups = tensor_groups(ev_model.variables_prefix, read_manifest(ev_optimized["INT8"]), targets)
    assert ["user_emb" + s for s in deeprec.EV_SUFFIXES] in groups and ["cat_emb"] in groups
    assert not [g for g in groups if any(k.endswith("int8_scale") or k.endswith("lpo_scale") for k in g)]
    assert sorted(k for g in groups for k in g) == sorted(ckpt(ev_model.variables_prefix))


def test_sharded_deeprec_saver(tmp_path):
    """A saver built with sharded=True (ShardedFilename, MergeV2Checkpoints, restore_shard) is edited the same way."""
    model = build_ev_model(str(tmp_path / "m"), sharded=True)
    base = run_emulated(model.path, model.feeds)["prob"]
    out = str(tmp_path / "o")
    lpo.optimize(model.path, out, data_type="INT8", int8_dense="weight_only", quiet=True)
    mg, nodes = graph_of(out)
    assert mg.saver_def.sharded and deeprec.check_nodes(mg.graph_def, mg.meta_info_def.stripped_op_list) == []
    save = nodes["save/SaveV2"]
    assert save.input[0] == "save/ShardedFilename" and "user_emb/int8_data" in strings(nodes[save.input[1]])
    assert list(nodes["save/restore_all"].input)[0] == "^save/restore_shard"
    assert np.abs(run_emulated(out, model.feeds)["prob"] - base).max() < 2e-2


def test_int4_gives_evs_deeprecs_int8_and_is_refused_on_an_ev(ev_model, tmp_path):
    """data_type='INT4': INT4 ordinary tables, DeepRec's INT8 for EVs (DeepRec has no 4-bit EV); 'INT4' on an EV is refused."""
    from lpo.numerics.quant import int4_layout

    res = lpo.optimize(ev_model.path, str(tmp_path / "o"), data_type="INT4", int8_dense="weight_only", quiet=True)
    got = {(n.kind, n.node): n.dtype for n in res.optimized}
    assert {dt for (kind, _), dt in got.items() if kind in ("ev", "dense")} == {"INT8"}
    tables = {c.name: c.shape for c in lpo.inspect_model(ev_model.path).candidates if c.kind == "embedding"}
    assert tables and all(got[("embedding", t)] == int4_layout(*shape)[0] for t, shape in tables.items())
    with pytest.raises(ConfigError, match="DeepRec EVs take BF16, FP16, INT8"):
        lpo.optimize(ev_model.path, str(tmp_path / "o2"), opt_config={"user_emb": "INT4"}, quiet=True)
    assert not (tmp_path / "o2").exists()
