"""GraphIndex: incremental index updates equal a from-scratch rebuild (hand-built GraphDefs)."""
import random

import pytest
from tensorflow.core.framework import graph_pb2, node_def_pb2

import lpo.core.graph as graph_mod
from lpo.core.graph import GraphIndex, Use, make_node, parse_input

OPS = ("Const", "Identity", "MatMul", "AddN", "NoOp", "ReadVariableOp")


def _reference(idx: GraphIndex):
    """The index a full scan of ``idx.nodes`` gives (nodes in dict order, inputs in order)."""
    uses = {name: [] for name in idx.nodes}
    ctrl = {name: [] for name in idx.nodes}
    for n in idx.nodes.values():
        for i, inp in enumerate(n.input):
            src, port, is_ctrl = parse_input(inp)
            if is_ctrl:
                ctrl.setdefault(src, []).append(n.name)
            else:
                uses.setdefault(src, []).append(Use(n.name, i, port))
    return uses, ctrl


def _check(idx: GraphIndex) -> None:
    uses, ctrl = _reference(idx)
    assert set(idx.uses) == set(uses)
    assert set(idx.control_uses) == set(ctrl)
    for name, want in uses.items():
        assert idx.uses[name] == want, name
        assert name in idx.uses
        seen, cons = set(), []
        for u in want:
            if u.consumer not in seen:
                seen.add(u.consumer)
                cons.append(u.consumer)
        assert [c.name for c in idx.consumers(name)] == cons
    for name, want in ctrl.items():
        assert idx.control_uses[name] == want, name
        assert idx.control_uses.get(name) == want
    for op in OPS:
        want = [idx.nodes[n] for n in idx.order if n in idx.nodes and idx.nodes[n].op == op]
        assert [n.name for n in idx.by_op(op)] == [n.name for n in want]
    assert [n.name for n in idx.by_op("MatMul", "AddN")] == \
        [n for n in idx.order if n in idx.nodes and idx.nodes[n].op in ("MatMul", "AddN")]
    with pytest.raises(KeyError):
        idx.uses["never_a_node_or_input"]  # noqa: B018 - the lookup itself must raise
    assert idx.uses.get("never_a_node_or_input") is None
    assert [n.name for n in idx.to_graph_def().node] == [n for n in idx.order if n in idx.nodes]


def _random_input(rng: random.Random, names: list[str]) -> str:
    src = rng.choice(names + ["ghost", "ghost2"])  # inputs may name nodes that do not exist (yet)
    r = rng.random()
    if r < 0.2:
        return "^" + src
    if r < 0.5:
        return f"{src}:{rng.randint(0, 3)}"
    return src


def _random_node(rng: random.Random, name: str, names: list[str]) -> node_def_pb2.NodeDef:
    return make_node(rng.choice(OPS), name, [_random_input(rng, names) for _ in range(rng.randint(0, 4))])


def _base_graph(rng: random.Random, n: int) -> graph_pb2.GraphDef:
    gd = graph_pb2.GraphDef()
    names = []
    for i in range(n):
        node = _random_node(rng, f"n{i}", names or ["n0"])
        gd.node.add().CopyFrom(node)
        names.append(node.name)
    return gd


@pytest.mark.parametrize("seed", range(6))
def test_random_edit_sequences_equal_a_rebuild(seed):
    rng = random.Random(seed)
    idx = GraphIndex(_base_graph(rng, 30))
    _check(idx)
    fresh = 0
    for _step in range(150):
        names = list(idx.nodes)
        kind = rng.choice(["add", "add", "remove", "set_input", "replace", "in_place", "readd"])
        if kind == "add" or not names:
            fresh += 1
            idx.add(_random_node(rng, f"new{fresh}", names or ["n0"]))
        elif kind == "remove":
            idx.remove(rng.choice(names))
        elif kind == "readd":  # a removed name comes back (keeps its position in the output)
            gone = [n for n in idx.order if n not in idx.nodes]
            if gone:
                idx.add(_random_node(rng, rng.choice(gone), names))
        elif kind == "set_input":
            with_inputs = [n for n in names if idx.nodes[n].input]
            if with_inputs:
                name = rng.choice(with_inputs)
                idx.set_input(name, rng.randrange(len(idx.nodes[name].input)), _random_input(rng, names))
        elif kind == "replace":
            idx.replace(_random_node(rng, rng.choice(names), names))
        else:  # edit a NodeDef in place (op and inputs), then hand it back
            node = idx.node(rng.choice(names))
            node.op = rng.choice(OPS)
            node.input.append(_random_input(rng, names))
            if len(node.input) > 1 and rng.random() < 0.5:
                del node.input[0]
            idx.replace(node)
        _check(idx)


def test_duplicate_inputs_and_hub_nodes():
    gd = graph_pb2.GraphDef()
    gd.node.add().CopyFrom(make_node("Const", "hub"))
    for i in range(50):
        gd.node.add().CopyFrom(make_node("AddN", f"c{i}", ["hub", "hub:1", "^hub", "hub"]))
    idx = GraphIndex(gd)
    _check(idx)
    assert len(idx.uses["hub"]) == 150 and len(idx.consumers("hub")) == 50
    for i in range(0, 50, 2):
        idx.set_input(f"c{i}", 0, "other")
        idx.remove(f"c{i + 1}")
    _check(idx)
    assert [c.name for c in idx.consumers("hub")] == [f"c{i}" for i in range(0, 50, 2)]
    assert idx.uses["other"] == [Use(f"c{i}", 0, 0) for i in range(0, 50, 2)]


def test_unique_name_never_clashes():
    idx = GraphIndex(graph_pb2.GraphDef())
    idx.add(make_node("NoOp", "a"))
    got = []
    for _ in range(20):
        name = idx.unique_name("a")
        assert name not in idx.nodes
        idx.add(make_node("NoOp", name))
        got.append(name)
    assert got == [f"a_{i}" for i in range(1, 21)]
    assert idx.unique_name("b") == "b"
    idx.add(make_node("NoOp", "c_1"))
    idx.add(make_node("NoOp", "c"))
    assert idx.unique_name("c") == "c_2"


def test_edits_cost_the_edited_node_not_the_graph(monkeypatch):
    """An edit re-reads only the edited node's inputs (the index used to rescan every node per edit)."""
    n = 3000
    gd = graph_pb2.GraphDef()
    gd.node.add().CopyFrom(make_node("Const", "n0"))
    for i in range(1, n):
        gd.node.add().CopyFrom(make_node("Identity", f"n{i}", [f"n{i - 1}:0", f"^n{max(0, i - 2)}"]))
    idx = GraphIndex(gd)
    calls = [0]
    real = graph_mod.parse_input

    def counting(inp):
        calls[0] += 1
        return real(inp)

    monkeypatch.setattr(graph_mod, "parse_input", counting)
    for i in range(1, 101):
        idx.set_input(f"n{i}", 0, f"n{i + 5}:0")
        node = idx.remove(f"n{n - i}")
        idx.add(node)
        idx.consumers(f"n{i}")
    assert calls[0] <= 100 * 2 * 3  # each edit: the edited node's two inputs, out and in
    monkeypatch.setattr(graph_mod, "parse_input", real)
    _check(idx)
