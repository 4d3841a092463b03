"""Registry of graph pass families by name (like tf2onnx's rewriters)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PassFamily:
    """A family of rewrites: ``find`` candidates, ``rewrite`` one planned conversion."""

    name: str
    find: Callable
    rewrite: Callable


_PASSES: dict[str, PassFamily] = {}


def register(name: str, *, find: Callable, rewrite: Callable) -> None:
    """Register the pass family ``name`` (one module per op family)."""
    _PASSES[name] = PassFamily(name, find, rewrite)


def get(name: str) -> PassFamily:
    """Return the registered pass family ``name``."""
    return _PASSES[name]


def names() -> list[str]:
    """Return the registered family names in registration order."""
    return list(_PASSES)
