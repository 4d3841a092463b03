"""The interaction-mask structural pass on hand-built GraphDefs: match, rewrite node by node, run the result."""
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from lpo.core.graph import dtype_attr
from lpo.passes import interaction, registry
from lpo.passes.surgery import Surgery

from handmade import HandGraph, run

F32, I32, I64, BOOL = types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_BOOL
N, D = 5, 3  # features, embedding dim
RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, N, D)).astype(np.float32)


def _dot_mask_graph(*, lower=0, upper=-1, complement=True, ones="OnesLike", cast=True, squeeze=(1,), axis=0,
                    mask_shape=(-1,), consumer=True, shapes=False):
    """DeepRec's ``_dot_op``: boolean_mask(x x^T, cast(ones - band_part(ones, lower, upper), bool))."""
    g = HandGraph()
    x = g.placeholder("x", (-1, N, D))
    dot = g.op("BatchMatMulV2", "dot", [x, x], T=F32, adj_x=False, adj_y=True)
    if ones == "OnesLike":
        one = g.op("OnesLike", "ones", [dot], T=F32)
    else:
        shape = g.op("Shape", "ones/shape", [dot], T=F32, out_type=I32)
        one = g.op("Fill", "ones", [shape, g.const("ones/value", np.float32(1.0 if ones == "Fill" else 2.0))],
                   T=F32, index_type=dtype_attr(I32))
    band = g.op("MatrixBandPart", "band", [one, g.const("band/lower", np.int64(lower)),
                                           g.const("band/upper", np.int64(upper))], T=F32, Tindex=dtype_attr(I64))
    mask = g.op("Sub", "sub", [one, band], T=F32) if complement else band
    if cast:
        mask = g.op("Cast", "cast", [mask], SrcT=F32, DstT=BOOL, Truncate=False)
    flat_mask = g.op("Reshape", "bm/mask_flat", [mask, g.const("bm/mask_flat/shape", np.asarray(mask_shape, np.int32))],
                     T=BOOL if cast else F32, Tshape=I32)
    where = g.op("Where", "bm/where", [flat_mask], T=BOOL if cast else F32)
    sq = g.op("Squeeze", "bm/squeeze", [where], T=I64, squeeze_dims=_ints(squeeze))
    flat = g.op("Reshape", "bm/flat", [dot, g.const("bm/flat/shape", np.asarray([-1], np.int32))], T=F32, Tshape=I32)
    g.op("GatherV2", "bm/gather", [flat, sq, g.const("bm/gather/axis", np.int32(axis))], Tparams=F32, Tindices=I64,
         Taxis=I32, batch_dims=0)
    if consumer:
        g.op("Reshape", "out", ["bm/gather", g.const("out/shape", np.asarray([-1, N * (N - 1) // 2], np.int32))],
             T=F32, Tshape=I32)
    if shapes:  # as an exported SavedModel has them
        from tensorflow.core.framework import tensor_shape_pb2

        for node in g.mg.graph_def.node:
            if node.name in ("dot", "bm/flat"):
                s = tensor_shape_pb2.TensorShapeProto()
                for d in ((-1, N, N) if node.name == "dot" else (-1,)):
                    s.dim.add().size = d
                node.attr["_output_shapes"].list.shape.add().CopyFrom(s)
    return g


def _ints(values):
    from tensorflow.core.framework import attr_value_pb2

    a = attr_value_pb2.AttrValue()
    a.list.i.extend(values)
    return a


def _reference(x, lower=0, upper=-1, complement=True):
    """numpy: tf.boolean_mask(x x^T, mask) with the band mask, flat (row-major over batch, row, column)."""
    dot = x @ np.swapaxes(x, 1, 2)
    i, j = np.indices((N, N))
    band = ((lower < 0) | (i - j <= lower)) & ((upper < 0) | (j - i <= upper))
    mask = ~band if complement else band
    return dot[:, mask]  # numpy boolean indexing is row-major too: [B, kept]


def _fold(g):
    s = Surgery(g.mg)
    entries = interaction.fold_interaction_masks(s)
    return entries, s.finish()


def test_kept_positions_are_the_strict_lower_triangle_row_major():
    assert interaction.kept_positions(3, 3, 0, -1, True).tolist() == [3, 6, 7]  # (1,0), (2,0), (2,1)
    assert interaction.kept_positions(3, 3, -1, 0, False).tolist() == [0, 3, 4, 6, 7, 8]  # lower incl. diagonal
    assert interaction.kept_positions(2, 3, 0, 0, False).tolist() == [0, 4]  # diagonal of a 2x3


def test_find_lists_one_site_with_its_shape_and_the_pass_is_registered():
    s = Surgery(_dot_mask_graph().mg)
    want = {"node": "bm/gather", "tensor": "dot", "shape": [N, N], "lower": 0, "upper": -1, "complement": True,
            "kept": N * (N - 1) // 2}
    assert interaction.find(s) == [want]
    assert s.index.node("bm/gather").op == "GatherV2"  # find rewrites nothing
    assert "GatherV2(axis=1) of 10 static indices" in interaction.describe(want)
    entries, _mg = _fold(_dot_mask_graph())
    assert entries == [want]
    structural_pass = registry.structural()["interaction"]
    assert structural_pass.rewrite is interaction.fold_interaction_masks
    assert structural_pass.line("bm/gather") == "Fold interaction mask (exact): bm/gather"


def test_rewrite_node_by_node():
    _entries, mg = _fold(_dot_mask_graph())
    nodes = {n.name: n for n in mg.graph_def.node}
    out = nodes["bm/gather"]
    assert (out.op, list(out.input)) == ("Reshape", ["bm/gather/lpo_fold/gather", "bm/gather/lpo_fold/flat_shape"])
    gather = nodes["bm/gather/lpo_fold/gather"]
    assert (gather.op, list(gather.input)) == ("GatherV2", ["bm/gather/lpo_fold/rows", "bm/gather/lpo_fold/indices",
                                                            "bm/gather/lpo_fold/axis"])
    assert gather.attr["Tindices"].type == I32 and gather.attr["Tparams"].type == F32
    rows = nodes["bm/gather/lpo_fold/rows"]
    assert (rows.op, list(rows.input)) == ("Reshape", ["dot", "bm/gather/lpo_fold/rows_shape"])
    import tensorflow as tf

    value = lambda name: tf.make_ndarray(nodes[name].attr["value"].tensor).tolist()  # noqa: E731
    assert value("bm/gather/lpo_fold/rows_shape") == [-1, N * N]
    assert value("bm/gather/lpo_fold/axis") == 1
    assert value("bm/gather/lpo_fold/indices") == [5, 10, 11, 15, 16, 17, 20, 21, 22, 23]
    assert value("bm/gather/lpo_fold/flat_shape") == [-1]
    # the mask and the flat view are gone; the consumer reads the same name
    for gone in ("ones", "band", "sub", "cast", "bm/mask_flat", "bm/where", "bm/squeeze", "bm/flat", "band/lower",
                 "bm/flat/shape", "bm/gather/axis"):
        assert gone not in nodes, gone
    assert list(nodes["out"].input)[0] == "bm/gather" and "dot" in nodes and "x" in nodes


@pytest.mark.parametrize("kw", [
    {}, {"ones": "Fill"}, {"complement": False, "lower": -1, "upper": 0}, {"complement": False, "lower": 1, "upper": 1},
    {"lower": 1, "upper": -1}, {"squeeze": (-1,)}, {"consumer": False}, {"shapes": True},
    {"cast": False},  # TFRS's DotInteraction: the float 0/1 mask; Where keeps its nonzeros
])
def test_rewritten_graph_equals_numpy_and_the_original_bit_for_bit(kw):
    g = _dot_mask_graph(**kw)
    entries, mg = _fold(g)
    assert len(entries) == 1
    band = {k: kw[k] for k in ("lower", "upper", "complement") if k in kw}
    for batch in (X, X[:1], np.zeros((0, N, D), np.float32)):
        want = _reference(batch, **band).reshape(-1)
        orig = run(g.mg, "bm/gather", {"x": batch}, {})
        got = run(mg, "bm/gather", {"x": batch}, {})
        np.testing.assert_array_equal(orig, want.astype(np.float32)) if batch.size == 0 else \
            np.testing.assert_allclose(orig, want, rtol=1e-6)
        assert got.dtype == orig.dtype and got.shape == orig.shape
        assert np.array_equal(got, orig)  # bit-equal: a gather copies the same values


@pytest.mark.parametrize("kw", [
    {"ones": "Fill2"},  # fill value 2: not a ones mask
    {"squeeze": ()},  # squeeze of every axis: a scalar for one kept value
    {"axis": 1},
    {"mask_shape": (-1, 1)},
])
def test_other_graphs_are_left_alone(kw):
    g = _dot_mask_graph(**kw)
    entries, mg = _fold(g)
    assert entries == [] and interaction.find(Surgery(g.mg)) == []
    assert {n.name: n.op for n in mg.graph_def.node} == {n.name: n.op for n in g.mg.graph_def.node}


def test_unknown_feature_count_is_left_alone():
    g = _dot_mask_graph()
    x = next(n for n in g.mg.graph_def.node if n.name == "x")
    x.attr["shape"].shape.dim[1].size = -1
    assert interaction.find(Surgery(g.mg)) == []


def test_mask_read_elsewhere_is_kept():
    g = _dot_mask_graph()
    g.op("Identity", "spy", ["cast"], T=BOOL)
    _entries, mg = _fold(g)
    names = {n.name for n in mg.graph_def.node}
    assert {"cast", "sub", "band", "ones", "spy"} <= names and "bm/where" not in names
    np.testing.assert_array_equal(run(mg, "bm/gather", {"x": X}, {}), run(g.mg, "bm/gather", {"x": X}, {}))
