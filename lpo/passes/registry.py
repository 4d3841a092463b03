"""Registry of graph pass families by name (like tf2onnx's rewriters).

A family is a complete plug-in for one op family. The optimizer never branches on
a family's kind; it calls, with one signature for every family:

* ``find(surgery, specs) -> list[candidate]``: the optimizable nodes of a graph.
  A candidate has ``kind`` (the family name), ``name`` (the opt_config key),
  ``shape`` and ``nbytes``.
* ``describe(candidate) -> str``: a short detail for ``lpo inspect``.
* ``plan(candidate, dtype, options) -> Conversion``: what to do with it at ``dtype``
  (``options`` is the resolved :class:`lpo.options.OptimizeOptions`). Raises
  ``ConfigError`` for a dtype the family cannot take.
* ``rewrite(surgery, conversion)``: the graph edit of one planned conversion.

and declares its properties, so the optimizer and AUTO loop over families without asking
which one they hold:

* ``label``: what the report calls a node (``Optimize <label> to INT8: <node>``);
* ``fallbacks``: the dtype a model-wide ``data_type`` gives its nodes where they cannot take it
  (dense layers and DeepRec EVs: ``{"INT4": "INT8"}``);
* ``auto_ladder``: AUTO's forms for its nodes, least accurate (smallest) first (FP32 is added);
* ``calibrates(conversion) -> bool``: whether the conversion needs calibration data;
* ``requirement(conversion) -> (dtype, mode) | None``: what it adds to the manifest's ``requires``.

A *structural* pass (:func:`register_structural`) is an exact rewrite without variables: it
changes how the float32 graph computes, never what (a single-value lookup without the
SparseTensor plumbing, lpo/passes/single_value.py; a constant interaction mask folded into
static gather indices, lpo/passes/interaction.py). It is not an opt_config node and applies
at every data type, FP32 included (``OptimizeOptions.folds`` switches them all). ``optimize()``
runs each, in registration order, on every MetaGraph before ``find``, so the families see and
convert the rewritten graph: ``fn(surgery) -> list[dict]`` edits the graph and returns one
JSON-able entry per rewritten site, keyed by ``node`` (the manifest's ``structural`` lists
them by pass; reports show ``"{title} (exact): {node}"``). With no checkpoint tensors, they
leave convert_ckpt/refresh nothing to replay: the optimized graph already holds them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


def _never(conversion) -> None:
    return None


@dataclass(frozen=True)
class PassFamily:
    """One op family's find, describe, plan and rewrite, and its declared properties."""

    name: str
    find: Callable
    describe: Callable
    plan: Callable
    rewrite: Callable
    label: str = ""
    fallbacks: dict = field(default_factory=dict)
    auto_ladder: tuple = ()
    calibrates: Callable = _never
    requirement: Callable = _never

    def dtype_for(self, data_type: str) -> str:
        """The dtype a model-wide ``data_type`` gives this family's nodes (its fallback, else itself)."""
        return self.fallbacks.get(data_type, data_type)


_PASSES: dict[str, PassFamily] = {}


def register(name: str, *, find: Callable, describe: Callable, plan: Callable, rewrite: Callable, label: str = "",
             fallbacks: dict | None = None, auto_ladder: tuple = (), calibrates: Callable = _never,
             requirement: Callable = _never) -> None:
    """Register the pass family ``name`` (one module per op family) with its properties (module docstring)."""
    _PASSES[name] = PassFamily(name, find, describe, plan, rewrite, label or name, dict(fallbacks or {}),
                               tuple(auto_ladder), calibrates, requirement)


def get(name: str) -> PassFamily:
    """Return the registered pass family ``name``."""
    return _PASSES[name]


def names() -> list[str]:
    """Return the registered family names in registration order."""
    return list(_PASSES)


@dataclass(frozen=True)
class StructuralPass:
    """One exact rewrite run before ``find``, and the head of its report lines."""

    name: str
    rewrite: Callable
    title: str

    def line(self, node: str) -> str:
        """The report line of one rewritten site, e.g. ``Fold interaction mask (exact): node``."""
        return f"{self.title} (exact): {node}"


_STRUCTURAL: dict[str, StructuralPass] = {}


def register_structural(name: str, fn: Callable, *, title: str) -> None:
    """Register the exact float32 rewrite ``fn(surgery) -> [entry]`` that runs before ``find``.

    ``title`` heads its report lines, e.g. ``Fuse single-value lookup``.
    """
    _STRUCTURAL[name] = StructuralPass(name, fn, title)


def structural() -> dict[str, StructuralPass]:
    """Return the structural passes by name, in registration order."""
    return dict(_STRUCTURAL)
