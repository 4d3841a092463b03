"""The single-value lookup pass on hand-built feature-column chains: match, rewrite node by node, run.

``column`` writes, node by node, the chain ``feature_column.input_layer`` builds for
``embedding_column(categorical_column_with_hash_bucket(...))`` on a ``[B]`` or ``[B, 1]``
string input (as TF 2.21 writes it, with a ``Const`` for the computed ``SparseReshape``
shape and ``Tile`` multiples).
"""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from lpo.core.checkpoint import convert_values
from lpo.core.graph import const_value, dtype_attr, make_node
from lpo.core.savedmodel import variable_specs
from lpo.passes import embedding
from lpo.passes.single_value import ZERO, fuse_hashing, fuse_single_value_lookups
from lpo.passes.surgery import Surgery
from lpo import options as opts

from handmade import F32, I32, I64, HandGraph, run

STR, BOOL = types_pb2.DT_STRING, types_pb2.DT_BOOL
BUCKETS, DIM = 7, 3
TABLE = np.random.default_rng(3).normal(size=(BUCKETS, DIM)).astype(np.float32)
VALUES = np.array([b"a", b"", b"zz", b"a", b"", b"never seen", b"q"])
SEGMENT = {"mean": "SparseSegmentMean", "sum": "SparseSegmentSum", "sqrtn": "SparseSegmentSqrtN"}


def _t(**kw):
    return {k: dtype_attr(v) for k, v in kw.items()}


def column(g: HandGraph, name="C1", *, combiner="mean", rank=1, table="resource", reshapes=2, shape=None,
           values=TABLE, buckets=BUCKETS, default_id=0, integer=False):
    """Append one column's chain; return the name of its last node (``[B, D]``).

    ``table``: ``resource`` (ResourceGather after Unique), ``ref`` (GatherV2 after Unique) or
    ``fast`` (SparseSegment* on the ref table read, TF >= 2.14). ``integer``: an int64 input
    (ignore value ``Cast(-1)``), formatted by ``AsString`` before the hash.
    """
    p = f"{name}_embedding"
    c = lambda n, v: g.const(f"{p}/{n}", v)  # noqa: E731
    kind = I64 if integer else STR
    x = g.placeholder(name, shape or ((-1,) if rank == 1 else (-1, 1)), kind)
    x2 = x
    if rank == 1:
        x2 = g.add(make_node("ExpandDims", f"{p}/ExpandDims", [x, c("ExpandDims/dim", np.int32(-1))],
                             **_t(T=kind, Tdim=I32)))
    ignore = c("ignore", np.array(b""))
    if integer:
        ignore = g.add(make_node("Cast", f"{p}/ignore_value", [c("ignore/x", np.int32(-1))], **_t(SrcT=I32, DstT=I64),
                                 Truncate=False))
    ne = g.add(make_node("NotEqual", f"{p}/NotEqual", [x2, ignore], **_t(T=kind), incompatible_shape_error=True))
    where = g.add(make_node("Where", f"{p}/indices", [ne], **_t(T=BOOL)))
    vals = g.add(make_node("GatherNd", f"{p}/values", [x2, where], **_t(Tparams=kind, Tindices=I64)))
    dense_shape = g.add(make_node("Shape", f"{p}/dense_shape", [x2], **_t(T=kind, out_type=I64)))
    if integer:
        vals = g.add(make_node("AsString", f"{p}/AsString", [vals], **_t(T=I64), fill="", precision=-1,
                               scientific=False, shortest=False, width=-1))
    hashed = g.add(make_node("StringToHashBucketFast", f"{p}/lookup", [vals], num_buckets=buckets))
    sr = g.add(make_node("SparseReshape", f"{p}/SparseReshape", [where, dense_shape, c("new_shape", np.array(
        [-1, 1], np.int64))]))
    ids = g.add(make_node("Identity", f"{p}/SparseReshape/Identity", [hashed], **_t(T=I64)))
    valid = g.add(make_node("GreaterEqual", f"{p}/GreaterEqual", [ids, c("GreaterEqual/y", np.int64(0))],
                            **_t(T=I64)))
    kept = g.add(make_node("Reshape", f"{p}/Reshape", [g.add(make_node("Where", f"{p}/Where", [valid], **_t(T=BOOL))),
                                                        c("Reshape/shape", np.array([-1], np.int32))],
                           **_t(T=I64, Tshape=I32)))
    gather = dict(**_t(Tparams=I64, Tindices=I64, Taxis=I32), batch_dims=0)
    g1 = g.add(make_node("GatherV2", f"{p}/GatherV2_1", [sr, kept, c("axis1", np.int32(0))], **gather))
    g2 = g.add(make_node("GatherV2", f"{p}/GatherV2_2", [ids, kept, c("axis2", np.int32(0))], **gather))
    sfer = g.add(make_node("SparseFillEmptyRows", f"{p}/SparseFillEmptyRows",
                           [g1, g2, g.add(make_node("Identity", f"{p}/Identity", [sr + ":1"], **_t(T=I64))),
                            c("default", np.int64(default_id))], **_t(T=I64)))
    seg_ids = g.add(make_node("StridedSlice", f"{p}/segment_ids", [
        sfer, c("ss/begin", np.array([0, 0], np.int32)), c("ss/end", np.array([0, 1], np.int32)),
        c("ss/strides", np.array([1, 1], np.int32))], **_t(T=I64, Index=I32), begin_mask=1, end_mask=1,
        shrink_axis_mask=2, ellipsis_mask=0, new_axis_mask=0))
    var = f"{p}/embedding_weights"
    read = g.variable(var, values, resource=table == "resource")
    seg_attrs = _t(T=F32, Tsegmentids=I64)
    if table == "fast":
        seg = g.add(make_node(SEGMENT[combiner], f"{p}/combined", [read, sfer + ":1", seg_ids], **seg_attrs,
                              **_t(Tidx=I64)))
    else:
        unique = g.add(make_node("Unique", f"{p}/Unique", [sfer + ":1"], **_t(T=I64, out_idx=I32)))
        if table == "resource":
            lookup = g.add(make_node("ResourceGather", f"{p}/embedding_lookup", [var, unique],
                                     **_t(dtype=F32, Tindices=I64), batch_dims=0, validate_indices=True))
        else:
            lookup = g.add(make_node("GatherV2", f"{p}/embedding_lookup", [read, unique, c("axis3", np.int32(0))],
                                     **_t(Tparams=F32, Tindices=I64, Taxis=I32), batch_dims=0))
        rows = g.add(make_node("Identity", f"{p}/embedding_lookup/Identity", [lookup], **_t(T=F32)))
        seg = g.add(make_node(SEGMENT[combiner], f"{p}/combined", [rows, unique + ":1", seg_ids], **seg_attrs,
                              **_t(Tidx=I32)))
    empty = g.add(make_node("Reshape", f"{p}/Reshape_1", [sfer + ":2", c("Reshape_1/shape", np.array([-1, 1],
                                                                                                  np.int32))],
                            **_t(T=BOOL, Tshape=I32)))
    tile = g.add(make_node("Tile", f"{p}/Tile", [empty, c("multiples", np.array([1, DIM], np.int32))],
                           **_t(T=BOOL, Tmultiples=I32)))
    zeros = g.add(make_node("ZerosLike", f"{p}/zeros_like", [seg], **_t(T=F32)))
    out = g.add(make_node("Select", f"{p}/weights", [tile, zeros, seg], **_t(T=F32)))
    if reshapes >= 1:
        cast = g.add(make_node("Cast", f"{p}/Cast_1", [dense_shape], **_t(SrcT=I64, DstT=I32), Truncate=False))
        sl = dict(**_t(T=I32, Index=I32))
        batch = g.add(make_node("Slice", f"{p}/Slice_1", [cast, c("s1/b", np.array([0], np.int32)),
                                                           c("s1/s", np.array([1], np.int32))], **sl))
        width = g.add(make_node("Slice", f"{p}/Slice_2", [
            g.add(make_node("Shape", f"{p}/Shape_1", [out], **_t(T=F32, out_type=I32))),
            c("s2/b", np.array([1], np.int32)), c("s2/s", np.array([-1], np.int32))], **sl))
        new = g.add(make_node("ConcatV2", f"{p}/concat", [batch, width, c("concat/axis", np.int32(0))],
                              **_t(T=I32, Tidx=I32), N=2))
        out = g.add(make_node("Reshape", f"{p}/Reshape_2", [out, new], **_t(T=F32, Tshape=I32)))
    if reshapes >= 2:
        first = g.add(make_node("StridedSlice", f"{p}/strided_slice", [
            g.add(make_node("Shape", f"{p}/Shape", [out], **_t(T=F32, out_type=I32))),
            c("s3/b", np.array([0], np.int32)), c("s3/e", np.array([1], np.int32)),
            c("s3/s", np.array([1], np.int32))], **_t(T=I32, Index=I32), begin_mask=0, end_mask=0,
            shrink_axis_mask=1, ellipsis_mask=0, new_axis_mask=0))
        new = g.add(make_node("Pack", f"{p}/Reshape_out/shape", [first, c("dim", np.int32(DIM))], **_t(T=I32), N=2,
                              axis=0))
        out = g.add(make_node("Reshape", f"{p}/Reshape_out", [out, new], **_t(T=F32, Tshape=I32)))
    return out


def sign(g: HandGraph, inputs: list[str], outputs: list[str]) -> None:
    """Add a serving signature feeding ``inputs`` and fetching ``outputs``."""
    sig = g.mg.signature_def["serving_default"]
    for n in inputs:
        sig.inputs[n].name = n + ":0"
    for n in outputs:
        sig.outputs[n].name = n + ":0"


def graph(**kw):
    g = HandGraph()
    out = column(g, **kw)
    g.op("Identity", "out", [out], T=F32)
    sign(g, ["C1"], ["out"])
    return g


def feed(rank):
    return {"C1": VALUES if rank == 1 else VALUES.reshape(-1, 1)}


def reference(table=TABLE, buckets=BUCKETS):
    """numpy: each row's table row, zeros for an ignored (empty) value; ids from TF's hash."""
    ids = tf.strings.to_hash_bucket_fast(VALUES, buckets).numpy()
    return np.where((VALUES != b"")[:, None], table[ids], np.float32(0))


def fuse(g):
    s = Surgery(g.mg)
    return s, fuse_single_value_lookups(s)


FORMS = [(c, r, t) for c in SEGMENT for r in (1, 2) for t in ("resource", "ref", "fast")]


@pytest.mark.parametrize("combiner,rank,table", FORMS, ids=["-".join(map(str, f)) for f in FORMS])
def test_fuses_the_chain_node_by_node(combiner, rank, table):
    g = graph(combiner=combiner, rank=rank, table=table)
    s, (entry,) = fuse(g)
    idx, p = s.index, "C1_embedding"
    out = idx.node(f"{p}/Reshape_out")  # the chain's last node keeps its name: its consumers are untouched
    assert {k: v for k, v in entry.items() if k != "removed_nodes"} == {
        "node": out.name, "input": "C1", "table": f"{p}/embedding_weights", "combiner": combiner, "buckets": BUCKETS,
        "lookup": f"{p}/Reshape_out/lpo_lookup"}
    assert (out.op, list(out.input)) == ("SelectV2", [f"{p}/NotEqual", entry["lookup"], ZERO])
    lookup = idx.node(entry["lookup"])
    hashed = f"{p}/Reshape_out/lpo_hash"
    if table == "resource":
        assert (lookup.op, list(lookup.input)) == ("ResourceGather", [f"{p}/embedding_weights", hashed])
    else:
        assert (lookup.op, list(lookup.input[:2])) == ("GatherV2", [f"{p}/embedding_weights/read", hashed])
        assert idx.node(lookup.input[2]).op == "Const"
    h = idx.node(hashed)
    assert h.op == "StringToHashBucketFast" and h.attr["num_buckets"].i == BUCKETS
    if rank == 1:
        assert list(h.input) == ["C1"]
    else:
        sq = idx.node(h.input[0])
        assert (sq.op, list(sq.input), list(sq.attr["squeeze_dims"].list.i)) == ("Squeeze", ["C1"], [1])
    # the SparseTensor plumbing is gone; the input, its [B, 1] view and NotEqual stay
    left = {n.op for n in idx.nodes.values()}
    assert not left & {"Where", "GatherNd", "SparseReshape", "SparseFillEmptyRows", "Unique", "Select", "Tile",
                       "ZerosLike", "StridedSlice", "Pack", "ConcatV2", "Reshape", "Shape", "Slice", "Cast",
                       SEGMENT[combiner]}
    assert f"{p}/lookup" not in idx and (f"{p}/ExpandDims" in idx) == (rank == 1)
    assert entry["removed_nodes"] >= 35
    got = run(s.finish(), "out", feed(rank), g.values)
    before = run(g.mg, "out", feed(rank), g.values)
    np.testing.assert_array_equal(got, before)  # bit for bit: one id per row
    np.testing.assert_array_equal(got, reference())


@pytest.mark.parametrize("reshapes", [0, 1])
def test_fuses_a_chain_without_input_layers_reshapes(reshapes):
    g = graph(reshapes=reshapes)
    s, (entry,) = fuse(g)
    assert entry["node"] == ("C1_embedding/weights", "C1_embedding/Reshape_2")[reshapes]
    np.testing.assert_array_equal(run(s.finish(), "out", feed(1), g.values), reference())


INTS = np.array([5, -1, 123456789012, 5, -1, 0, -7, -2**63], np.int64)


@pytest.mark.parametrize("rank", [1, 2])
def test_fuses_a_hashed_integer_column(rank):
    g = graph(integer=True, rank=rank)
    s, (entry,) = fuse(g)
    idx, p = s.index, "C1_embedding"
    h = idx.node(f"{p}/Reshape_out/lpo_hash")
    fmt = idx.node(h.input[0])
    assert fmt.op == "AsString" and fmt.attr["T"].type == I64 and idx.node(f"{p}/Reshape_out").op == "SelectV2"
    feeds = {"C1": INTS if rank == 1 else INTS.reshape(-1, 1)}
    got = run(s.finish(), "out", feeds, g.values)
    np.testing.assert_array_equal(got, run(g.mg, "out", feeds, g.values))
    ids = tf.strings.to_hash_bucket_fast(tf.strings.as_string(INTS), BUCKETS).numpy()
    np.testing.assert_array_equal(got, np.where((INTS != -1)[:, None], TABLE[ids], np.float32(0)))


def test_batch_of_one_and_empty_batch():
    g = graph()
    s, _ = fuse(g)
    mg = s.finish()
    for values in (np.array([b""]), np.array([b"x"]), np.array([], dtype=object)):
        want = run(g.mg, "out", {"C1": values}, g.values)
        got = run(mg, "out", {"C1": values}, g.values)
        assert got.shape == want.shape == (len(values), DIM)
        np.testing.assert_array_equal(got, want)


def test_multiple_values_per_row_fail_instead_of_mixing_rows():
    """A [B, 1] input fed [B, 2] through a C++ client (no Python shape check): Squeeze refuses it."""
    g = graph(rank=2)
    s, _ = fuse(g)
    graph_def = s.finish().graph_def
    for n in graph_def.node:
        if n.name == "C1":
            n.attr["shape"].shape.unknown_rank = True  # as if the feed bypassed the static shape
            del n.attr["shape"].shape.dim[:]
    mg = s.finish()
    mg.graph_def.CopyFrom(graph_def)
    with pytest.raises(tf.errors.InvalidArgumentError):
        run(mg, "out", {"C1": np.array([[b"a", b"b"]])}, g.values)


@pytest.mark.parametrize("case", ["not_fed_by_signature", "two_values_per_row", "unknown_shape", "small_table",
                                  "default_id_column", "float_table"])
def test_leaves_an_unproven_column_alone(case):
    kw = {"two_values_per_row": {"rank": 2, "shape": (-1, 2)}, "unknown_shape": {"shape": (-1, -1)},
          "small_table": {"buckets": BUCKETS + 1}}.get(case, {})
    g = HandGraph()
    out = column(g, **kw)
    g.op("Identity", "out", [out], T=F32)
    sign(g, [] if case == "not_fed_by_signature" else ["C1"], ["out"])
    if case == "default_id_column":  # safe_embedding_lookup_sparse(default_id=...): no Select, the default's row
        p = "C1_embedding"
        nodes = [n for n in g.mg.graph_def.node if n.name not in {f"{p}/weights", f"{p}/zeros_like", f"{p}/Tile",
                                                                   f"{p}/Reshape_1"}]
        for n in nodes:
            n.input[:] = [f"{p}/combined" if i == f"{p}/weights" else i for i in n.input]
        del g.mg.graph_def.node[:]
        g.mg.graph_def.node.extend(nodes)
    if case == "float_table":
        for n in g.mg.graph_def.node:
            if n.name == "C1_embedding/embedding_weights":
                n.attr["dtype"].type = types_pb2.DT_HALF
    s, found = fuse(g)
    assert found == [] and len(s.index.nodes) == len(g.mg.graph_def.node)


def test_a_shared_node_stays_for_its_other_reader():
    g = graph()
    g.op("Identity", "spy", ["C1_embedding/lookup"], T=I64)  # the hashed values, read elsewhere
    s, (entry,) = fuse(g)
    assert "C1_embedding/lookup" in s.index and "C1_embedding/values" in s.index
    assert "C1_embedding/SparseFillEmptyRows" not in s.index
    np.testing.assert_array_equal(run(s.finish(), "out", feed(1), g.values), reference())


def test_two_columns_and_a_shared_zero():
    g = HandGraph()
    outs = [column(g, "C1"), column(g, "C2", combiner="sum", rank=2, table="fast")]
    g.op("ConcatV2", "out", outs + [g.const("axis", np.int32(1))], T=F32, N=2, Tidx=I32)
    sign(g, ["C1", "C2"], ["out"])
    s, found = fuse(g)
    assert [e["input"] for e in found] == ["C1", "C2"]
    assert [n.name for n in s.index.nodes.values() if n.op == "Const" and n.name == ZERO] == [ZERO]
    feeds = {"C1": VALUES, "C2": VALUES[::-1].reshape(-1, 1)}
    np.testing.assert_array_equal(run(s.finish(), "out", feeds, g.values), run(g.mg, "out", feeds, g.values))


@pytest.mark.parametrize("dtype,scheme", [("INT8", "per_dim"), ("INT8", "per_row"), ("INT4", "per_row"),
                                          ("BF16", "cast")])
@pytest.mark.parametrize("table", ["resource", "ref"])
def test_the_embedding_pass_quantizes_the_fused_lookup(table, dtype, scheme):
    g = graph(table=table)
    s, (entry,) = fuse(g)
    specs = variable_specs(s.mg, s.index)
    (cand,) = embedding.find(s, specs)
    assert cand.lookups == {entry["table"]: [entry["lookup"]]}
    conv = embedding.plan(cand, dtype, opts.OptimizeOptions(embedding_scheme=scheme if dtype == "INT8" else "per_dim"))
    embedding.rewrite(s, conv)
    values = {}
    for vc in conv.variables:
        for key, _slice, arr in convert_values(vc, TABLE, vc.key):
            values[key] = arr
    got = run(s.finish(), "out", feed(1), values)
    deq = run(s.finish(), entry["lookup"], feed(1), values)  # the dequantized rows, as the converter wrote them
    np.testing.assert_array_equal(got, np.where((VALUES != b"")[:, None], deq, np.float32(0)))
    np.testing.assert_allclose(got, reference(), atol=0.3 if dtype == "INT4" else 0.03)


# --- fused hashing across columns --------------------------------------------------------------
def two_columns(concat=True):
    g = HandGraph()
    small = TABLE[:5]
    outs = [column(g, "C1"), column(g, "C2", rank=2, table="ref", values=small, buckets=5)]
    if concat:
        g.op("ConcatV2", "out", outs + [g.const("axis", np.int32(1))], T=F32, N=2, Tidx=I32)
        sign(g, ["C1", "C2"], ["out"])
    else:
        sign(g, ["C1", "C2"], outs)
    return g, outs


def test_hashes_the_columns_of_one_concat_at_once():
    g, outs = two_columns()
    s, found = fuse(g)
    (entry,) = fuse_hashing(s)
    idx = s.index
    assert entry == {"node": "out", "columns": ["C1", "C2"], "buckets": [BUCKETS, 5]}
    base = "out/lpo_hash"
    pack = idx.node(f"{base}/values")
    assert (pack.op, list(pack.input)) == ("Pack", ["C1", "C2_embedding/Reshape_out/lpo_values"])
    assert idx.node(f"{base}/fingerprint").op == "Fingerprint" and idx.node(f"{base}/uint64").op == "Bitcast"
    bucket = idx.node(f"{base}/bucket")
    assert bucket.op == "FloorMod" and list(const_value(idx.input_node(bucket, 1))) == [BUCKETS, 5]
    for i, (e, out) in enumerate(zip(found, outs)):
        assert idx.node(e["lookup"]).input[1] == (f"{base}/split:{i}" if i else f"{base}/split")
        assert idx.node(out).input[0] == (f"{base}/present/split:{i}" if i else f"{base}/present/split")
    ops = [n.op for n in idx.nodes.values()]
    assert "StringToHashBucketFast" not in ops and "C1_embedding/ExpandDims" not in idx
    assert ops.count("NotEqual") == ops.count("ExpandDims") == 1  # the masks: one over the stack
    feeds = {"C1": VALUES, "C2": VALUES[::-1].reshape(-1, 1)}
    got = run(s.finish(), ["out", f"{base}/split:0", f"{base}/split:1"], feeds, g.values)
    np.testing.assert_array_equal(got[0], run(g.mg, "out", feeds, g.values))
    np.testing.assert_array_equal(got[1], tf.strings.to_hash_bucket_fast(VALUES, BUCKETS).numpy())
    np.testing.assert_array_equal(got[2], tf.strings.to_hash_bucket_fast(VALUES[::-1], 5).numpy())


def test_columns_not_read_together_keep_their_own_hash():
    g, _ = two_columns(concat=False)
    s, _found = fuse(g)
    assert fuse_hashing(s) == []


@pytest.mark.parametrize("buckets", [1, 2, 1000, 2**31 - 1, 2**32, 2**32 + 15, 2**62 + 1, 2**63 - 1])
def test_fingerprint_modulo_is_string_to_hash_bucket_fast(buckets):
    """What fused hashing relies on: StringToHashBucketFast(v, n) == Fingerprint64(v) % n (uint64)."""
    rng = np.random.default_rng(buckets % 1000)
    values = [b"", b"\x00", b"\xff" * 300, "ü".encode()] + [rng.bytes(int(k)) for k in rng.integers(0, 80, 3000)]
    x = tf.constant(np.array(values, dtype=object))
    fused = tf.cast(tf.math.floormod(tf.bitcast(tf.fingerprint(x), tf.uint64), tf.constant(buckets, tf.uint64)),
                    tf.int64)
    np.testing.assert_array_equal(fused.numpy(), tf.strings.to_hash_bucket_fast(x, buckets).numpy())


def test_structural_passes_are_registered_and_reported():
    from lpo.core.optimizer import STRUCTURAL, NodeReport
    from lpo.passes import registry

    # in registration order; fuse_hashing is opt-in (measured slower)
    assert list(registry.structural()) == ["interaction", "single_value"]
    assert NodeReport("single_value", "C1/Reshape", STRUCTURAL).line() == "Fuse single-value lookup (exact): C1/Reshape"
    assert NodeReport("interaction", "bm/gather", STRUCTURAL).line() == "Fold interaction mask (exact): bm/gather"
