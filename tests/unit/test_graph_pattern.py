"""OpTypePattern / GraphMatcher on hand-built GraphDefs."""
import pytest

from lpo.core.graph import ANY, GraphIndex, GraphMatcher, OpTypePattern

from handmade import HandGraph

P = OpTypePattern


def _chain(relu=True, extra_reader=False, control=False):
    g = HandGraph()
    x = g.placeholder("x")
    w = g.variable("w", [[1.0]] * 4)
    b = g.variable("b", [0.5])
    g.op("MatMul", "mm", [x, w])
    g.op("BiasAdd", "bias", ["mm", b])
    if relu:
        g.op("Relu", "relu", ["bias"] + (["^mm"] if control else []))
    if extra_reader:
        g.op("Identity", "spy", ["bias"])
    return GraphIndex(g.mg.graph_def)


VAR = P("ReadVariableOp|Identity", optional=True, inputs=(P("VarHandleOp|VariableV2", "var"),))
MM = P("MatMul", "mm", (ANY, VAR), sole_consumer=True)
CHAIN = P("Relu", "relu", (P("BiasAdd|AddV2", "bias", (MM, ANY), optional=True, sole_consumer=True),), optional=True)


def test_op_alternatives_string_and_tuple_are_the_same():
    assert P("A|B").op == P(("A", "B")).op == ("A", "B")
    idx = _chain()
    assert [m["bias"].name for m in GraphMatcher(idx, P(("AddV2", "BiasAdd"), "bias")).match_all("bias")] == ["bias"]


def test_longest_chain_per_anchor_with_captures():
    idx = _chain()
    (m,) = GraphMatcher(idx, CHAIN).match_all("mm")
    assert {k: n.name for k, n in m.items()} == {"relu": "relu", "bias": "bias", "mm": "mm", "var": "w"}


def test_match_yields_present_before_absent():
    idx = _chain()
    got = [sorted(m) for m in GraphMatcher(idx, CHAIN).match(idx.node("relu"))]
    assert got == [["bias", "mm", "relu", "var"]]  # relu present; absent relu cannot stand on a Relu node
    got = [sorted(m) for m in GraphMatcher(idx, CHAIN).match(idx.node("mm"))]
    assert got == [["mm", "var"]]


def test_sole_consumer_stops_the_chain():
    idx = _chain(extra_reader=True)  # bias is read by relu and spy: relu is not fused
    (m,) = GraphMatcher(idx, CHAIN).match_all("mm")
    assert sorted(m) == ["bias", "mm", "var"]
    idx = _chain(control=True)  # mm has a control consumer: nothing after it is fused
    (m,) = GraphMatcher(idx, CHAIN).match_all("mm")
    assert sorted(m) == ["mm", "var"]


def test_optional_read_absent_matches_the_variable_directly():
    g = HandGraph()
    x = g.placeholder("x")
    g.variable("w", [[1.0]] * 4, resource=False)
    g.op("MatMul", "mm", [x, "w"])  # a ref variable used without its Identity
    (m,) = GraphMatcher(GraphIndex(g.mg.graph_def), MM).match_all("mm")
    assert m["var"].name == "w"


def test_inputs_where_and_accept():
    idx = _chain()
    wrong_input = P("MatMul", "mm", (P("Const"), ANY))  # input 0 is a Placeholder
    assert GraphMatcher(idx, wrong_input).match_all("mm") == []
    assert GraphMatcher(idx, P("MatMul", "mm", where=lambda n: n.attr["transpose_b"].b)).match_all("mm") == []
    too_many = P("MatMul", "mm", (ANY, ANY, ANY))
    assert GraphMatcher(idx, too_many).match_all("mm") == []
    # accept rejects the long match: the next alternative (shorter) is taken
    (m,) = GraphMatcher(idx, CHAIN).match_all("mm", accept=lambda m: "relu" not in m)
    assert sorted(m) == ["bias", "mm", "var"]


def test_alternative_patterns_in_order_and_graph_order_results():
    g = HandGraph()
    t = g.variable("t", [[1.0, 2.0]] * 3)
    ids = g.placeholder("ids", (-1,), dtype=3)
    g.op("ResourceGather", "g2", ["t", ids], dtype=1, Tindices=3)
    g.op("GatherV2", "g1", [t, ids, g.const("axis", 0)], Tparams=1, Tindices=3, Taxis=3)
    idx = GraphIndex(g.mg.graph_def)
    pats = (P("ResourceGather", "lookup", (P("VarHandleOp", "table"),)),
            P("GatherV2", "lookup", (P("ReadVariableOp", inputs=(P("*", "table"),)),)))
    found = GraphMatcher(idx, *pats).match_all("lookup")
    assert [(m["lookup"].name, m["table"].name) for m in found] == [("g2", "t"), ("g1", "t")]


def test_optional_needs_a_stand_in():
    with pytest.raises(ValueError, match="stand in"):
        P("Relu", optional=True)


def test_port_matches_the_output_an_edge_reads():
    g = HandGraph()
    x = g.placeholder("x", (-1,), dtype=3)
    g.op("Unique", "u", [x], T=3, out_idx=3)
    g.op("Identity", "values", ["u"], T=3)
    g.op("Identity", "positions", ["u:1"], T=3)
    idx = GraphIndex(g.mg.graph_def)
    second = P("Identity", "id", (P("Unique", "u", port=1),))
    assert [m["id"].name for m in GraphMatcher(idx, second).match_all("id")] == ["positions"]
    first = P("Identity", "id", (P("Unique", "u", port=0),))
    assert [m["id"].name for m in GraphMatcher(idx, first).match_all("id")] == ["values"]
    # an absent optional node hands its edge's port to its stand-in
    through = P("Identity", "id", (P("Relu", optional=True, inputs=(P("Unique", "u", port=1),)),))
    assert [m["id"].name for m in GraphMatcher(idx, through).match_all("id")] == ["positions"]
