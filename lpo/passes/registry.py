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
