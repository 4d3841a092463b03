"""The embedding pass on hand-built GraphDefs: find, describe, plan, rewrite, and the rewritten graph run."""
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from lpo import options as opts
from lpo.core.checkpoint import convert_values
from lpo.core.savedmodel import variable_specs
from lpo.numerics import quant
from lpo.passes import embedding
from lpo.passes.surgery import Surgery

from handmade import F32, I32, I64, HandGraph, run

RNG = np.random.default_rng(1)
TABLE = RNG.normal(size=(6, 4)).astype(np.float32)
IDS = np.array([5, 0, 3, 3], np.int64)
SEGMENTS = np.array([0, 0, 1, 1], np.int32)


def _resource_gather(g, table="t"):
    ids = g.placeholder("ids", (-1,), I64)
    return g.op("ResourceGather", "lookup", [table, ids], dtype=F32, Tindices=I64, batch_dims=0,
                validate_indices=True)


def _gather_v2(g, read, axis=0):
    ids = g.placeholder("ids", (-1,), I64)
    return g.op("GatherV2", "lookup", [read, ids, g.const("axis", np.array(axis, np.int32))], Tparams=F32,
                Tindices=I64, Taxis=I32, batch_dims=0)


def _segment_sum(g, read):
    ids = g.placeholder("ids", (-1,), I64)
    seg = g.placeholder("seg", (-1,), I32)
    return g.op("SparseSegmentSum", "lookup", [read, ids, seg], T=F32, Tidx=I64, Tsegmentids=I32)


def _unique_segment_mean(g, table="t"):
    """tf.compat.v1 embedding_lookup_sparse: Unique -> gather -> Identity -> SparseSegmentMean(., Unique.idx)."""
    ids = g.placeholder("ids", (-1,), I64)
    seg = g.placeholder("seg", (-1,), I32)
    g.op("Unique", "unique", [ids], T=I64, out_idx=I32)
    g.op("ResourceGather", "lookup", [table, "unique"], dtype=F32, Tindices=I64, batch_dims=0, validate_indices=True)
    g.op("Identity", "lookup/Identity", ["lookup"], T=F32)
    return g.op("SparseSegmentMean", "combined", ["lookup/Identity", "unique:1", seg], T=F32, Tidx=I32,
                Tsegmentids=I32)


def _graph(kind="resource"):
    g = HandGraph()
    read = g.variable("t", TABLE, resource=kind in ("resource", "unique"))
    out = {"resource": lambda: _resource_gather(g), "gather": lambda: _gather_v2(g, read),
           "segment": lambda: _segment_sum(g, read), "unique": lambda: _unique_segment_mean(g)}[kind]()
    return g, out


def _find(g):
    s = Surgery(g.mg)
    return s, embedding.find(s, variable_specs(g.mg, s.index))


def _feeds(kind):
    return {"ids": IDS, "seg": SEGMENTS} if kind in ("segment", "unique") else {"ids": IDS}


def _lookup(kind, table):
    rows = table[IDS]
    if kind == "segment":
        return np.stack([rows[SEGMENTS == s].sum(0) for s in range(2)])
    if kind == "unique":
        return np.stack([rows[SEGMENTS == s].mean(0) for s in range(2)])
    return rows


# --- find / describe -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["resource", "gather", "segment"])
def test_finds_each_lookup_form(kind):
    g, _ = _graph(kind)
    _s, (c,) = _find(g)
    assert (c.name, c.shape, c.lookups, c.nbytes, embedding.describe(c)) == ("t", [6, 4], {"t": ["lookup"]}, 96, "")


def test_gather_on_axis_1_is_not_a_lookup():
    g = HandGraph()
    _gather_v2(g, g.variable("t", TABLE, resource=False), axis=1)
    assert _find(g)[1] == []


def test_table_read_by_anything_else_is_not_a_candidate():
    g, _ = _graph("resource")
    g.op("Identity", "t_spy", ["t/Read/ReadVariableOp"], T=F32)
    assert _find(g)[1] == []


def test_initializer_status_and_saver_reads_are_ignored():
    g, _ = _graph("gather")
    g.op("IsVariableInitialized", "t/IsInitialized", ["t"], dtype=F32)
    consts = [g.const(f"save/{n}", np.array(v)) for n, v in (("Const", b"ckpt"), ("names", [b"t"]),
                                                               ("slices", [b""]))]
    g.op("SaveV2", "save/SaveV2", consts + ["t"])  # a saver reads the variable (rebuilt after the rewrite)
    _s, (c,) = _find(g)
    assert c.lookups == {"t": ["lookup"]}
    g.op("Shape", "not_a_saver", ["t"], T=F32, out_type=I32)
    assert _find(g)[1] == []


def test_partitioned_table_groups_its_parts():
    g = HandGraph()
    ids = g.placeholder("ids", (-1,), I64)
    for i, (lo, hi) in enumerate([(0, 3), (3, 6)]):
        name = f"t/part_{i}"
        g.variable(name, TABLE[lo:hi], slice_of=("t", [6, 4], [lo, 0]))
        g.op("ResourceGather", f"lookup_{i}", [name, ids], dtype=F32, Tindices=I64, batch_dims=0)
    _s, (c,) = _find(g)
    assert (c.name, c.shape, [p.node for p in c.parts], embedding.describe(c)) == (
        "t", [6, 4], ["t/part_0", "t/part_1"], "2 parts")
    conv = embedding.plan(c, "INT8", opts.OptimizeOptions(embedding_scheme="per_row"))
    assert [(v.key, v.slice, v.scale_key, v.scale_shape) for v in conv.variables] == [
        ("t", "6 4 0,3:0,4", "t/part_0/lpo_scale", [3, 1]), ("t", "6 4 3,3:0,4", "t/part_1/lpo_scale", [3, 1])]


# --- plan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,axis,shape", [("per_dim", 1, [4]), ("per_row", 0, [6, 1])])
def test_plan_int8_schemes(scheme, axis, shape):
    g, _ = _graph()
    _s, (c,) = _find(g)
    conv = embedding.plan(c, "INT8", opts.OptimizeOptions(embedding_scheme=scheme))
    (v,) = conv.variables
    assert (conv.scheme, v.role, v.dtype, v.scale_key, v.axis, v.scale_shape) == (scheme, "table", "INT8",
                                                                                  "t/lpo_scale", axis, shape)
    assert embedding.plan(c, "BF16", opts.OptimizeOptions()).scheme == "cast"


# --- rewrite + run ---------------------------------------------------------------------------
def _rewrite_and_run(kind, dtype, scheme="per_dim"):
    g, out = _graph(kind)
    s, (c,) = _find(g)
    conv = embedding.plan(c, dtype, opts.OptimizeOptions(embedding_scheme=scheme))
    embedding.rewrite(s, conv)
    mg = s.finish()
    values = dict(g.values)
    for vc in conv.variables:
        for key, _slice, arr in convert_values(vc, g.values[vc.key], vc.key):
            values[key] = arr
    return {n.name: n for n in mg.graph_def.node}, values, run(mg, out, _feeds(kind), values)


@pytest.mark.parametrize("kind", ["resource", "gather", "segment", "unique"])
@pytest.mark.parametrize("dtype", ["BF16", "FP16"])
def test_16bit_tables(kind, dtype):
    nodes, values, y = _rewrite_and_run(kind, dtype)
    assert nodes["t"].attr["dtype"].type == {"BF16": types_pb2.DT_BFLOAT16, "FP16": types_pb2.DT_HALF}[dtype]
    table = values["t"].astype(np.float32)
    assert not np.array_equal(table, TABLE)  # rounded
    np.testing.assert_allclose(y, _lookup(kind, table), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["resource", "gather", "segment", "unique"])
@pytest.mark.parametrize("scheme", ["per_dim", "per_row"])
def test_int8_tables(kind, scheme):
    nodes, values, y = _rewrite_and_run(kind, "INT8", scheme)
    assert nodes["t"].attr["dtype"].type == types_pb2.DT_INT8 and "t/lpo_scale" in nodes
    assert nodes["lookup"].op == ("SparseSegmentSum" if kind == "segment" else "Mul")  # same name, float32 out
    if scheme == "per_row":  # float16 row scales times a float32 power-of-two base
        assert values["t/lpo_scale"].dtype == np.float16 and "t/lpo_scale_base" in nodes
        table = quant.dequantize_int8_rows(values["t"], values["t/lpo_scale"], values["t/lpo_scale_base"])
    else:
        table = quant.dequantize_int8(values["t"], values["t/lpo_scale"])
    np.testing.assert_allclose(y, _lookup(kind, table), rtol=1e-6, atol=1e-6)
    assert np.abs(y - _lookup(kind, TABLE)).max() > 0  # int8, not the float table


@pytest.mark.parametrize("dtype", ["INT8", "BF16", "INT4"])
def test_embedding_lookup_sparse_gathers_all_ids_without_the_unique(dtype):
    """On a float table grappler drops Unique+gather; on a low-precision one lpo gathers every id
    (duplicates included) and reduces positions 0..n-1: the Unique is read by nobody any more."""
    nodes, values, y = _rewrite_and_run("unique", dtype)
    readers = [n for n in nodes.values() if any(i.split(":")[0] == "unique" for i in n.input)]
    assert readers == []
    gather = nodes["lookup/lpo_gather"]
    assert gather.op == "ResourceGather" and gather.input[1] == "ids"
    assert nodes["combined"].op == "SparseSegmentMean" and nodes["combined"].input[1] == "combined/lpo_range"
    assert y.shape == (2, TABLE.shape[1])
    np.testing.assert_allclose(y, _lookup("unique", TABLE), atol=0.3)  # low precision of the same rows


def test_a_unique_read_by_anything_else_keeps_the_plain_lookup():
    g, _ = _graph("unique")
    g.op("Identity", "spy", ["unique:1"], T=I32)  # the Unique's idx has another reader: still fine
    g.op("Identity", "spy_rows", ["lookup"], T=F32)  # the gathered rows have another reader: keep the Unique
    s, (c,) = _find(g)
    embedding.rewrite(s, embedding.plan(c, "INT8", opts.OptimizeOptions()))
    nodes = {n.name: n for n in s.finish().graph_def.node}
    assert nodes["lookup/lpo_gather"].input[1] == "unique" and nodes["combined"].input[1] == "unique:1"
