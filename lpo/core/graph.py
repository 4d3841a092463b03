"""GraphDef plumbing: an index over nodes and small NodeDef builders.

Pure protobuf: nothing here executes a graph or touches tensor values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2, types_pb2

DT = {
    "FP32": types_pb2.DT_FLOAT,
    "BF16": types_pb2.DT_BFLOAT16,
    "FP16": types_pb2.DT_HALF,
    "INT8": types_pb2.DT_INT8,
    "INT4": types_pb2.DT_UINT8,  # stored packed, two 4-bit values a byte
}
DT_NAMES = {v: k for k, v in DT.items()}

VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable")
READ_OPS = ("ReadVariableOp", "Identity")


def parse_input(inp: str) -> tuple[str, int, bool]:
    """Split a NodeDef input string into (node name, output port, is_control)."""
    if inp.startswith("^"):
        return inp[1:], -1, True
    name, _, port = inp.partition(":")
    if port and not port.isdigit():
        from lpo.errors import ModelFormatError

        raise ModelFormatError(f"the graph has a malformed node input {inp!r} (expected 'node' or 'node:port'); "
                               "the SavedModel is corrupt: re-export it")
    return name, int(port) if port else 0, False


def tensor_ref(node: str, port: int = 0) -> str:
    """Return the NodeDef input string for output ``port`` of ``node``."""
    return node if port == 0 else f"{node}:{port}"


@dataclass
class Use:
    """One data edge: ``consumer`` reads the tensor at input position ``index``."""

    consumer: str
    index: int
    port: int


class GraphIndex:
    """Nodes by name and their data consumers, over a GraphDef that may be edited.

    Edits go through :meth:`add`, :meth:`remove` and :meth:`set_input`, which keep
    the index consistent; :meth:`to_graph_def` writes the result back in the
    original node order (new nodes appended), so output is deterministic.
    """

    def __init__(self, graph_def: graph_pb2.GraphDef):
        self._base = graph_def
        self.nodes: dict[str, node_def_pb2.NodeDef] = {}
        self.order: list[str] = []
        for n in graph_def.node:
            copy = node_def_pb2.NodeDef()
            copy.CopyFrom(n)
            self.nodes[n.name] = copy
            self.order.append(n.name)
        self._ordered = set(self.order)
        self._reindex()

    def _reindex(self) -> None:
        self.uses: dict[str, list[Use]] = {name: [] for name in self.nodes}
        self.control_uses: dict[str, list[str]] = {name: [] for name in self.nodes}
        for n in self.nodes.values():
            for i, inp in enumerate(n.input):
                src, port, ctrl = parse_input(inp)
                if ctrl:
                    self.control_uses.setdefault(src, []).append(n.name)
                else:
                    self.uses.setdefault(src, []).append(Use(n.name, i, port))

    # --- queries -------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def node(self, name: str) -> node_def_pb2.NodeDef:
        """Return the NodeDef called ``name``."""
        return self.nodes[name]

    def consumers(self, name: str) -> list[node_def_pb2.NodeDef]:
        """Return the nodes that read any data output of ``name`` (each once)."""
        seen, out = set(), []
        for u in self.uses.get(name, []):
            if u.consumer not in seen:
                seen.add(u.consumer)
                out.append(self.nodes[u.consumer])
        return out

    def input_node(self, node: node_def_pb2.NodeDef, index: int) -> node_def_pb2.NodeDef:
        """Return the node producing data input ``index`` of ``node``."""
        return self.nodes[parse_input(node.input[index])[0]]

    def by_op(self, *ops: str) -> list[node_def_pb2.NodeDef]:
        """Return the nodes whose op is one of ``ops``, in graph order."""
        return [self.nodes[n] for n in self.order if n in self.nodes and self.nodes[n].op in ops]

    def unique_name(self, name: str) -> str:
        """Return ``name`` or ``name_N`` so that it does not clash with a node."""
        if name not in self.nodes:
            return name
        i = 1
        while f"{name}_{i}" in self.nodes:
            i += 1
        return f"{name}_{i}"

    # --- edits ---------------------------------------------------------------
    def add(self, node: node_def_pb2.NodeDef) -> node_def_pb2.NodeDef:
        """Add ``node`` (its name must be new) and return it."""
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already exists")
        self.nodes[node.name] = node
        if node.name not in self._ordered:
            self._ordered.add(node.name)
            self.order.append(node.name)
        self.uses.setdefault(node.name, [])
        self.control_uses.setdefault(node.name, [])
        for i, inp in enumerate(node.input):
            src, port, ctrl = parse_input(inp)
            if ctrl:
                self.control_uses.setdefault(src, []).append(node.name)
            else:
                self.uses.setdefault(src, []).append(Use(node.name, i, port))
        return node

    def remove(self, name: str) -> node_def_pb2.NodeDef:
        """Remove node ``name``; the caller must have rewired its consumers."""
        node = self.nodes.pop(name)
        self._reindex()
        return node

    def replace(self, node: node_def_pb2.NodeDef) -> None:
        """Replace the node of the same name with ``node`` (keeping its position)."""
        if node.name not in self.nodes:
            raise ValueError(f"no node {node.name!r} to replace")
        self.nodes[node.name] = node
        self._reindex()

    def set_input(self, name: str, index: int, inp: str) -> None:
        """Point data input ``index`` of node ``name`` at tensor ``inp``."""
        self.nodes[name].input[index] = inp
        self._reindex()

    def to_graph_def(self) -> graph_pb2.GraphDef:
        """Return a new GraphDef with the edited nodes, versions and library kept."""
        out = graph_pb2.GraphDef()
        out.CopyFrom(self._base)
        del out.node[:]
        for name in self.order:
            if name in self.nodes:
                out.node.add().CopyFrom(self.nodes[name])
        return out


# --- declared patterns ----------------------------------------------------------
@dataclass(frozen=True)
class OpTypePattern:
    """A declared subgraph, matched from its root node toward its inputs.

    As TF graph_transforms' ``OpTypePattern`` and tf2onnx's ``GraphMatcher``:

    * ``op``: an op type, alternatives as ``"A|B"`` or a tuple, or ``"*"`` for any op;
    * ``name``: the label the matched node is captured under (``""``: not captured);
    * ``inputs``: patterns for the node's first data inputs, in order (``()``: any inputs);
    * ``optional``: the node may be absent; its first input pattern then matches in its place;
    * ``sole_consumer``: the node above it in the match is the only reader of its output
      (one data edge, no control edge);
    * ``where``: a predicate on the NodeDef (attrs).
    """

    op: str | tuple[str, ...]
    name: str = ""
    inputs: tuple["OpTypePattern", ...] = ()
    optional: bool = False
    sole_consumer: bool = False
    where: Callable | None = None

    def __post_init__(self):
        ops = tuple(self.op.split("|")) if isinstance(self.op, str) else tuple(self.op)
        object.__setattr__(self, "op", ops)
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if self.optional and not self.inputs:
            raise ValueError(f"optional pattern {self.name or ops} needs an input pattern to stand in for it")

    def accepts(self, node: node_def_pb2.NodeDef) -> bool:
        """True when ``node`` has an allowed op type and passes ``where``."""
        return ("*" in self.op or node.op in self.op) and (self.where is None or bool(self.where(node)))


ANY = OpTypePattern("*")

Match = dict  # label -> NodeDef


class GraphMatcher:
    """Finds the matches of declared :class:`OpTypePattern` s in a :class:`GraphIndex`."""

    def __init__(self, index: GraphIndex, *patterns: OpTypePattern):
        self.index = index
        self.patterns = patterns

    def match(self, node: node_def_pb2.NodeDef) -> Iterator[Match]:
        """Yield every match rooted at ``node``, preferred first.

        Patterns are tried in the order given; an optional node is tried present
        before absent, so the first match is the longest one.
        """
        for pattern in self.patterns:
            yield from self._match(node, pattern, None, {})

    def match_all(self, anchor: str, accept: Callable[[Match], bool] | None = None) -> list[Match]:
        """Return, in graph order of the ``anchor`` node, one match per anchor node.

        Every node is tried as a root; a match counts when ``accept(match)`` is true
        (cross-node checks the pattern cannot say). Of the accepted matches sharing an
        anchor node the one capturing most nodes is kept, so a chain is taken whole.
        """
        best: dict[str, Match] = {}
        position: dict[str, int] = {}
        for i, name in enumerate(self.index.order):
            if name not in self.index.nodes:
                continue
            position[name] = i
            for m in self.match(self.index.nodes[name]):
                if accept is None or accept(m):
                    key = m[anchor].name
                    if key not in best or len(m) > len(best[key]):
                        best[key] = m
                    break
        return sorted(best.values(), key=lambda m: position.get(m[anchor].name, len(position)))

    def _match(self, node, pattern: OpTypePattern, parent, captured: Match) -> Iterator[Match]:
        if pattern.accepts(node) and (not pattern.sole_consumer or self._sole_consumer(node, parent)):
            yield from self._match_inputs(node, pattern, 0, {**captured, **({pattern.name: node} if pattern.name
                                                                             else {})})
        if pattern.optional:
            yield from self._match(node, pattern.inputs[0], parent, captured)

    def _match_inputs(self, node, pattern: OpTypePattern, i: int, captured: Match) -> Iterator[Match]:
        if i == len(pattern.inputs):
            yield captured
            return
        data = [inp for inp in node.input if not inp.startswith("^")]
        if i >= len(data):
            return
        src = parse_input(data[i])[0]
        if src not in self.index:
            return
        for m in self._match(self.index.node(src), pattern.inputs[i], node, captured):
            yield from self._match_inputs(node, pattern, i + 1, m)

    def _sole_consumer(self, node, parent) -> bool:
        if parent is None:
            return True
        consumers = self.index.consumers(node.name)
        if len(consumers) != 1 or consumers[0].name != parent.name or self.index.control_uses.get(node.name):
            return False
        edges = [inp for inp in parent.input if not inp.startswith("^") and parse_input(inp)[0] == node.name]
        return len(edges) == 1


# --- NodeDef builders ---------------------------------------------------------
def _attr(value) -> attr_value_pb2.AttrValue:
    if isinstance(value, attr_value_pb2.AttrValue):
        return value
    a = attr_value_pb2.AttrValue()
    if isinstance(value, bool):
        a.b = value
    elif isinstance(value, int):
        a.i = value
    elif isinstance(value, float):
        a.f = value
    elif isinstance(value, (str, bytes)):
        a.s = value.encode() if isinstance(value, str) else value
    elif isinstance(value, tensor_shape_pb2.TensorShapeProto):
        a.shape.CopyFrom(value)
    else:
        raise TypeError(f"unsupported attr value {value!r}")
    return a


def dtype_attr(dtype: int) -> attr_value_pb2.AttrValue:
    """Return an AttrValue holding the DataType enum ``dtype``."""
    a = attr_value_pb2.AttrValue()
    a.type = dtype
    return a


def shape_proto(shape: Iterable[int]) -> tensor_shape_pb2.TensorShapeProto:
    """Return a TensorShapeProto for a fully known ``shape``."""
    p = tensor_shape_pb2.TensorShapeProto()
    for d in shape:
        p.dim.add().size = int(d)
    return p


def make_node(op: str, name: str, inputs: Iterable[str] = (), device: str = "", **attrs) -> node_def_pb2.NodeDef:
    """Build a NodeDef; attrs may be AttrValues, python scalars/strings or shapes."""
    n = node_def_pb2.NodeDef(op=op, name=name, device=device)
    n.input.extend(inputs)
    for k, v in sorted(attrs.items()):
        n.attr[k].CopyFrom(_attr(v))
    return n


def make_const(name: str, value: np.ndarray, device: str = "") -> node_def_pb2.NodeDef:
    """Build a Const node holding the numpy ``value`` (small values only)."""
    import tensorflow as tf

    arr = np.asarray(value)
    tensor = tf.make_tensor_proto(arr)
    n = make_node("Const", name, device=device, dtype=dtype_attr(tensor.dtype))
    n.attr["value"].tensor.CopyFrom(tensor)
    return n


def const_value(node: node_def_pb2.NodeDef):
    """Return the numpy value of a Const node, or None for other ops."""
    if node.op != "Const":
        return None
    import tensorflow as tf

    return tf.make_ndarray(node.attr["value"].tensor)


def shape_of(node: node_def_pb2.NodeDef, attr: str = "shape") -> list[int] | None:
    """Return the static shape stored in ``node.attr[attr]`` (None if unknown rank)."""
    if attr not in node.attr:
        return None
    s = node.attr[attr].shape
    if s.unknown_rank:
        return None
    return [d.size for d in s.dim]
