"""Grouped tables on hand-built GraphDefs: which tables group, the rewrite, and the grouped
graph run against the ungrouped one (bit for bit) and against a numpy reference of the grouped layout."""
import numpy as np
import pytest

from lpo import formats
from lpo import options as opts
from lpo import passes
from lpo.core.checkpoint import convert_values
from lpo.core.savedmodel import variable_specs
from lpo.formats import grouped
from lpo.passes import embedding, grouping
from lpo.passes.surgery import Surgery

from handmade import F32, I32, I64, HandGraph, run

RNG = np.random.default_rng(7)
ROWS = {"a": 5, "b": 7, "c": 3}  # grouped: dim 4, single-value lookups
TABLES = {k: RNG.normal(size=(n, 4)).astype(np.float32) for k, n in ROWS.items()}
WIDE = RNG.normal(size=(6, 8)).astype(np.float32)  # another dim: its own path
MULTI = RNG.normal(size=(4, 4)).astype(np.float32)  # a multi-valued (segment) lookup: its own path
FORMS = [("INT8", "per_dim"), ("INT8", "per_row"), ("BF16", "per_dim"), ("FP16", "per_dim"), ("FP32", "per_dim")]


def _signature(g, inputs, outputs):
    sig = g.mg.signature_def["serving_default"]
    for n in inputs:
        sig.inputs[n].name = n + ":0"
    for n in outputs:
        sig.outputs[n].name = n + ":0"


def _graph(rank=1, twice=False, resource=True):
    """Tables a, b, c (dim 4), wide (dim 8), multi (segment sum); ``twice``: table a looked up by two inputs."""
    g = HandGraph()
    shape = (-1,) if rank == 1 else (-1, 1)
    reads = {k: g.variable(k, v, resource=resource) for k, v in TABLES.items()}
    reads["wide"] = g.variable("wide", WIDE, resource=resource)
    reads["multi"] = g.variable("multi", MULTI, resource=resource)
    names, outs = [], []
    lookups = [("a", "a"), ("b", "b"), ("c", "c"), ("wide", "wide")] + ([("a", "a2")] if twice else [])
    for table, name in lookups:
        ids = g.placeholder(f"ids_{name}", shape, I64)
        cast = g.op("Identity", f"ids_{name}/identity", [ids], T=I64)  # elementwise on the way: still one per row
        names.append(ids)
        if resource:
            outs.append(g.op("ResourceGather", f"lookup_{name}", [table, cast], dtype=F32, Tindices=I64, batch_dims=0,
                             validate_indices=True))
        else:
            outs.append(g.op("GatherV2", f"lookup_{name}", [reads[table], cast, g.const(f"axis_{name}", np.int32(0))],
                             Tparams=F32, Tindices=I64, Taxis=I32, batch_dims=0))
    ids = g.placeholder("ids_multi", (-1,), I64)
    seg = g.placeholder("seg_multi", (-1,), I32)
    names += [ids, seg]
    outs.append(g.op("SparseSegmentSum", "lookup_multi", [reads["multi"], ids, seg], T=F32, Tidx=I64,
                     Tsegmentids=I32))
    for o in outs:  # each lookup read by a consumer (and one also by a control edge)
        g.op("Identity", f"{o}/out", [o], T=F32)
    g.op("NoOp", "after", ["^" + outs[0]])
    _signature(g, names, [f"{o}/out" for o in outs])
    return g, [f"{o}/out" for o in outs]


def _feeds(rank, twice=False, batch=6):
    feeds = {}
    for name, table in [("a", "a"), ("b", "b"), ("c", "c")] + ([("a2", "a")] if twice else []):
        n = ROWS[table]
        ids = RNG.integers(0, n, size=batch)
        ids[:2] = [0, n - 1]  # the member's boundary rows
        feeds[f"ids_{name}"] = ids.reshape(-1, 1) if rank == 2 else ids
    feeds["ids_wide"] = RNG.integers(0, 6, size=(batch, 1) if rank == 2 else batch)
    feeds["ids_multi"] = np.array([0, 3, 3, 1])
    feeds["seg_multi"] = np.array([0, 0, 1, 1], np.int32)
    return feeds


def _plan(g, dtype, scheme, group=True):
    s = Surgery(g.mg)
    found = embedding.find(s, variable_specs(g.mg, s.index))
    options = opts.OptimizeOptions(data_type=dtype, embedding_scheme=scheme).normalized()
    convs = [] if dtype == "FP32" else [embedding.plan(c, dtype, options) for c in found]
    return grouping.plan_groups(Surgery(g.mg), found, convs, fp32=dtype == "FP32") if group else convs


def _values(g, convs):
    """The converted variables, as the checkpoint converter writes them (slices assembled)."""
    values = {k: v for k, v in g.values.items()}
    half = grouped.Float16Slices()
    for conv in convs:
        for vc in conv.variables:
            outs = grouped.encode(vc, g.values[vc.key], vc.key) if vc.group else convert_values(vc, g.values[vc.key],
                                                                                                vc.key)
            for key, spec, arr in half.take(outs):
                if spec:
                    full, index = grouped._parse_spec(spec)
                    values.setdefault(key, np.zeros(full, arr.dtype))[index] = arr
                else:
                    values[key] = arr
        for key, _spec, arr in half.finish():
            values[key] = arr
    return values


def _rewrite_and_run(g, convs, outs, feeds):
    mg = type(g.mg)()
    mg.CopyFrom(g.mg)
    s = Surgery(mg)
    for conv in convs:
        passes.get(conv.kind).rewrite(s, conv)
    mg = s.finish()
    return mg, run(mg, outs, feeds, _values(g, convs))


def test_groups_tables_of_one_dim_and_form_with_single_value_lookups():
    g, _outs = _graph()
    convs = _plan(g, "INT8", "per_dim")
    groups = [c for c in convs if c.kind == "group"]
    assert len(groups) == 1
    t = groups[0].targets
    assert t["tables"] == ["a", "b", "c"] and [m["offset"] for m in t["members"]] == [0, 5, 12]
    assert t["rows"] == 15 and t["dim"] == 4 and t["ids_rank"] == 1
    assert sorted(c.node for c in convs if c.kind == "embedding") == ["multi", "wide"]  # their own path
    vcs = groups[0].variables
    assert [v.group for v in vcs] == [[0, 3], [1, 3], [2, 3]] and {v.dst_key for v in vcs} == {groups[0].node}
    assert vcs[1].out_slice == "15 4 5,7:0,4" and vcs[0].scale_shape == [3, 4]
    assert "a@0" in grouping.describe(groups[0]) and "c@12" in grouping.describe(groups[0])


def test_tables_kept_fp32_by_opt_config_are_left_alone():
    g, _outs = _graph()
    s = Surgery(g.mg)
    found = embedding.find(s, variable_specs(g.mg, s.index))
    options = opts.OptimizeOptions(data_type="INT8").normalized()
    convs = [embedding.plan(c, "INT8", options) for c in found if c.name in ("a", "b")]
    (group,) = [c for c in grouping.plan_groups(Surgery(g.mg), found, convs) if c.kind == "group"]
    assert group.targets["tables"] == ["a", "b"]  # c stays a float32 table of its own


def test_a_lookup_not_from_a_one_per_row_input_is_not_grouped():
    g, _outs = _graph()
    ph = next(n for n in g.mg.graph_def.node if n.name == "ids_b")
    ph.attr["shape"].shape.dim.add().size = 3  # [batch, 3]: several ids per row
    convs = _plan(g, "INT8", "per_dim")
    (group,) = [c for c in convs if c.kind == "group"]
    assert group.targets["tables"] == ["a", "c"]


def test_a_lookup_on_ids_computed_otherwise_is_not_grouped():
    g, _outs = _graph()
    node = next(n for n in g.mg.graph_def.node if n.name == "ids_c/identity")
    node.op = "Unique"  # not elementwise: the proof stops
    node.attr["out_idx"].type = I32
    convs = _plan(g, "INT8", "per_dim")
    (group,) = [c for c in convs if c.kind == "group"]
    assert group.targets["tables"] == ["a", "b"]


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("dtype,scheme", FORMS)
def test_grouped_graph_equals_ungrouped_bit_for_bit(dtype, scheme, rank):
    g, outs = _graph(rank)
    feeds = _feeds(rank)
    grouped_mg, got = _rewrite_and_run(g, _plan(g, dtype, scheme), outs, feeds)
    _plain_mg, want = _rewrite_and_run(g, _plan(g, dtype, scheme, group=False), outs, feeds)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    ops = [n.op for n in grouped_mg.graph_def.node]
    gathers = [n for n in grouped_mg.graph_def.node if n.op in ("ResourceGather", "GatherV2")
               and n.input[0] == "lpo_group_0"]
    assert len(gathers) == 1  # one gather for a, b and c
    assert ops.count("Unpack" if rank == 1 else "Split") == 1
    names = {n.name for n in grouped_mg.graph_def.node}
    assert not names & {"a", "b", "c", "lookup_a", "lookup_b", "lookup_c"}  # member tables and lookups are gone
    if dtype == "FP32":  # exact: the original graph's numbers
        original = run(g.mg, outs, feeds, g.values)
        assert all(np.array_equal(a, b) for a, b in zip(got, original))


def test_a_table_looked_up_twice_reads_its_scales_once_per_slot():
    g, outs = _graph(twice=True)
    outs = outs + ["lookup_a2/out"] if "lookup_a2/out" not in outs else outs
    feeds = _feeds(1, twice=True)
    convs = _plan(g, "INT8", "per_dim")
    (group,) = [c for c in convs if c.kind == "group"]
    assert group.targets["members"][0]["lookups"] == ["lookup_a", "lookup_a2"]
    _mg, got = _rewrite_and_run(g, convs, outs, feeds)
    _mg, want = _rewrite_and_run(g, _plan(g, "INT8", "per_dim", group=False), outs, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_ref_variables_group_too():
    g, outs = _graph(resource=False)
    feeds = _feeds(1)
    convs = _plan(g, "INT8", "per_row")
    assert any(c.kind == "group" for c in convs)
    _mg, got = _rewrite_and_run(g, convs, outs, feeds)
    _mg, want = _rewrite_and_run(g, _plan(g, "INT8", "per_row", group=False), outs, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def reference_lookup(values, vcs, ids):
    """numpy: the grouped layout looked up at ``ids`` ([B, T], member-local) -> [B, T, D] float32."""
    offsets = np.array([int(v.out_slice.split()[2].split(",")[0]) for v in vcs])
    key = vcs[0].dst_key
    q = values[key][ids + offsets]
    v = vcs[0]
    if v.dtype == "FP32":
        return q
    if v.scale_key is None:  # a cast form
        return formats.for_var(grouped.table_var(v)).dequantize(q)
    scale = values[v.scale_key]
    if v.axis == 1:  # [T, D], per table
        return q.astype(np.float32) * scale
    rows = scale[ids + offsets].astype(np.float32) * values[v.base_key]  # [B, T, 1] * [T, 1]
    return q.astype(np.float32) * rows


@pytest.mark.parametrize("dtype,scheme", FORMS)
def test_numpy_reference_of_the_grouped_layout_equals_each_tables_own_form(dtype, scheme):
    g, _outs = _graph()
    (group,) = [c for c in _plan(g, dtype, scheme) if c.kind == "group"]
    values = _values(g, [group])
    ids = np.stack([RNG.integers(0, ROWS[t], 9) for t in "abc"], axis=1)
    ids[0] = 0
    ids[1] = [ROWS[t] - 1 for t in "abc"]
    got = reference_lookup(values, group.variables, ids)
    for t, vc in enumerate(group.variables):
        own = grouped.table_var(vc)
        if dtype == "FP32":
            table = TABLES[vc.key]
        else:
            outs = convert_values(own, TABLES[vc.key], vc.key)
            table = formats.for_var(own).simulate(own, outs)
        assert np.array_equal(got[:, t], table[ids[:, t]])


def test_group_conversion_survives_the_manifest():
    from lpo.core.plan import Plan

    g, _outs = _graph()
    plan = Plan(data_type="INT8", conversions=_plan(g, "INT8", "per_row"))
    again = Plan.from_dict(__import__("json").loads(plan.dumps()))
    assert plan.to_dict()["format"] == 3 and again.to_dict() == plan.to_dict()
    (key,) = again.groups()
    assert [v.key for v in again.groups()[key]] == ["a", "b", "c"]
    assert {f"{key}/lpo_scale", f"{key}/lpo_scale_base"} < again.side_keys()
    assert not {"a/lpo_scale", "b/lpo_scale", "c/lpo_scale"} & again.side_keys()  # the members write the group's
    assert Plan(data_type="INT8").to_dict()["format"] == 2  # without groups: readable by older lpo


def test_single_value_proof_follows_elementwise_ops_to_a_signature_input():
    g, _outs = _graph(rank=2)
    s = Surgery(g.mg)
    inputs = grouping.signature_inputs(s)
    assert grouping.single_value(s, "lookup_a", inputs) == {"ids": "ids_a/identity", "ids_t": I64, "rank": 2,
                                                                "batch": -1}
    assert grouping.single_value(s, "lookup_multi", inputs) is None
    assert inputs["ids_a"] == [-1, 1] and inputs["seg_multi"] == [-1]
