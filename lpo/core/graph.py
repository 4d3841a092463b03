"""GraphDef plumbing: an index over nodes and small NodeDef builders.

Pure protobuf: nothing here executes a graph or touches tensor values.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2

class _StorageTypes(Mapping):
    """``DT[dtype]``: the TensorFlow DataType a data type's tables and weights are stored as.

    Asks the storage-form registry (:func:`lpo.formats.storage`); ``FP32`` is float.
    """

    def __getitem__(self, dtype: str) -> int:
        from lpo import formats

        if dtype != "FP32" and dtype not in formats.dtypes():
            raise KeyError(dtype)
        return formats.storage(dtype)

    def __iter__(self) -> Iterator[str]:
        from lpo import formats

        return iter(("FP32",) + formats.dtypes())

    def __len__(self) -> int:
        return sum(1 for _ in self)


DT = _StorageTypes()


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


class _UsesView(Mapping):
    """Read-only ``{source node: [consumers...]}`` view of a :class:`GraphIndex`.

    Lists are in the order a from-scratch scan of the index would give: consumers
    by when they entered the index, then by input position. A name maps to a list
    when it is a node or some node reads it; other names raise KeyError.
    """

    def __init__(self, index: "GraphIndex", control: bool):
        self._index = index
        self._control = control

    def _edges(self) -> dict:
        return self._index._ctrl if self._control else self._index._data

    def __getitem__(self, src: str) -> list:
        edges = self._edges().get(src)
        if not edges:
            if src in self._index.nodes:
                return []
            raise KeyError(src)
        return self._index._sorted(src, self._control)

    def __contains__(self, src) -> bool:
        return src in self._index.nodes or bool(self._edges().get(src))

    def __iter__(self):
        seen = set(self._index.nodes)
        yield from self._index.nodes
        for src, edges in self._edges().items():
            if edges and src not in seen:
                yield src

    def __len__(self) -> int:
        return sum(1 for _ in self)


class GraphIndex:
    """Nodes by name and their data consumers, over a GraphDef that may be edited.

    Edits go through :meth:`add`, :meth:`remove`, :meth:`replace` and
    :meth:`set_input`, which update the index incrementally: each costs time in the
    inputs of the edited node, not in the size of the graph. A NodeDef edited in
    place must be handed back with :meth:`replace` (the index keeps a snapshot of
    each node's inputs and op to undo). :meth:`to_graph_def` writes the result back
    in the original node order (new nodes appended), so output is deterministic.
    """

    def __init__(self, graph_def: graph_pb2.GraphDef):
        self._base = graph_def
        self.nodes: dict[str, node_def_pb2.NodeDef] = {}
        self.order: list[str] = []
        self._pos: dict[str, int] = {}  # position in ``order`` (kept for removed names)
        self._seq: dict[str, int] = {}  # when a node (re-)entered ``nodes``: consumer order
        self._next_seq = 0
        self._indexed: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (op, inputs) as indexed
        self._data: dict[str, dict[tuple[str, int], int]] = {}  # src -> {(consumer, input index): port}
        self._ctrl: dict[str, dict[tuple[str, int], None]] = {}  # src -> {(consumer, input index)}
        self._ops: dict[str, set[str]] = {}  # op -> names
        self._cache: dict[tuple[str, bool], list] = {}  # sorted use lists, dropped on change
        self._suffix: dict[str, int] = {}  # unique_name: the last suffix handed out per base name
        self.uses = _UsesView(self, control=False)
        self.control_uses = _UsesView(self, control=True)
        for n in graph_def.node:
            copy = node_def_pb2.NodeDef()
            copy.CopyFrom(n)
            self._enter(copy)

    # --- internals -------------------------------------------------------------
    def _enter(self, node: node_def_pb2.NodeDef) -> None:
        name = node.name
        self.nodes[name] = node
        if name not in self._pos:
            self._pos[name] = len(self.order)
            self.order.append(name)
        self._seq[name] = self._next_seq
        self._next_seq += 1
        self._index_node(name)

    def _index_node(self, name: str) -> None:
        node = self.nodes[name]
        inputs = tuple(node.input)
        op = node.op
        self._indexed[name] = (op, inputs)
        names = self._ops.get(op)
        if names is None:
            self._ops[op] = {name}
        else:
            names.add(name)
        data, ctrl, cache = self._data, self._ctrl, self._cache
        for i, inp in enumerate(inputs):
            if inp[:1] == "^":
                src = inp[1:]
                edges = ctrl.get(src)
                if edges is None:
                    ctrl[src] = {(name, i): None}
                else:
                    edges[(name, i)] = None
                if cache:
                    cache.pop((src, True), None)
                continue
            src, port, _ = parse_input(inp) if ":" in inp else (inp, 0, False)
            edges = data.get(src)
            if edges is None:
                data[src] = {(name, i): port}
            else:
                edges[(name, i)] = port
            if cache:
                cache.pop((src, False), None)

    def _unindex_node(self, name: str) -> None:
        op, inputs = self._indexed.pop(name)
        names = self._ops.get(op)
        if names is not None:
            names.discard(name)
            if not names:
                del self._ops[op]
        for i, inp in enumerate(inputs):
            src, _port, ctrl = parse_input(inp)
            table = self._ctrl if ctrl else self._data
            edges = table.get(src)
            if edges is not None:
                edges.pop((name, i), None)
                if not edges:
                    del table[src]
            self._cache.pop((src, ctrl), None)

    def _sorted(self, src: str, control: bool) -> list:
        key = (src, control)
        out = self._cache.get(key)
        if out is None:
            seq = self._seq
            if control:
                edges = sorted(self._ctrl.get(src, {}), key=lambda e: (seq[e[0]], e[1]))
                out = [c for c, _i in edges]
            else:
                data = self._data.get(src, {})
                edges = sorted(data, key=lambda e: (seq[e[0]], e[1]))
                out = [Use(c, i, data[(c, i)]) for c, i in edges]
            self._cache[key] = out
        return out

    # --- queries -------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def node(self, name: str) -> node_def_pb2.NodeDef:
        """Return the NodeDef called ``name``."""
        return self.nodes[name]

    def consumers(self, name: str) -> list[node_def_pb2.NodeDef]:
        """Return the nodes that read any data output of ``name`` (each once)."""
        if not self._data.get(name):
            return []
        seen, out = set(), []
        for u in self._sorted(name, False):
            if u.consumer not in seen:
                seen.add(u.consumer)
                out.append(self.nodes[u.consumer])
        return out

    def input_node(self, node: node_def_pb2.NodeDef, index: int) -> node_def_pb2.NodeDef:
        """Return the node producing data input ``index`` of ``node``."""
        return self.nodes[parse_input(node.input[index])[0]]

    def by_op(self, *ops: str) -> list[node_def_pb2.NodeDef]:
        """Return the nodes whose op is one of ``ops``, in graph order."""
        names = set()
        for op in ops:
            names.update(self._ops.get(op, ()))
        return [self.nodes[n] for n in sorted(names, key=self._pos.__getitem__)]

    def unique_name(self, name: str) -> str:
        """Return ``name`` or ``name_N`` so that it does not clash with a node."""
        if name not in self.nodes:
            return name
        i = self._suffix.get(name, 0) + 1
        while f"{name}_{i}" in self.nodes:
            i += 1
        self._suffix[name] = i
        return f"{name}_{i}"

    # --- edits ---------------------------------------------------------------
    def add(self, node: node_def_pb2.NodeDef) -> node_def_pb2.NodeDef:
        """Add ``node`` (its name must be new) and return it."""
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already exists")
        self._enter(node)
        return node

    def remove(self, name: str) -> node_def_pb2.NodeDef:
        """Remove node ``name``; the caller must have rewired its consumers."""
        node = self.nodes.pop(name)
        self._unindex_node(name)
        del self._seq[name]
        return node

    def replace(self, node: node_def_pb2.NodeDef) -> None:
        """Replace the node of the same name with ``node`` (keeping its position).

        Also the way to re-index a node whose inputs or op were edited in place.
        """
        if node.name not in self.nodes:
            raise ValueError(f"no node {node.name!r} to replace")
        self._unindex_node(node.name)
        self.nodes[node.name] = node
        self._index_node(node.name)

    def set_input(self, name: str, index: int, inp: str) -> None:
        """Point data input ``index`` of node ``name`` at tensor ``inp``."""
        self._unindex_node(name)
        self.nodes[name].input[index] = inp
        self._index_node(name)

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
def attr_value(value) -> attr_value_pb2.AttrValue:
    """Return ``value`` (an AttrValue, bool, int, float, str/bytes or TensorShapeProto) as an AttrValue."""
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
        n.attr[k].CopyFrom(attr_value(v))
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
