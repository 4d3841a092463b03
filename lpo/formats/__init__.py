"""Storage forms of embedding tables (and weights): one module per form, found by a registry.

A form (``INT8:per_dim``, ``INT8:per_row``, ``INT4:per_dim``, ``INT4:per_row``, ``BF16``,
``FP16``) says how its values are quantized and dequantized in numpy, what the checkpoint
converter writes and under which names, how many bytes a table takes, which nodes
dequantize a gathered row in the graph and what AUTO's simulation assigns (the protocol:
:mod:`lpo.formats.base`). The embedding pass, the checkpoint converter, AUTO's simulation and
size accounting ask this registry; none of them switches on dtype strings. Adding a form is
one module in this package (found at first use) or one :func:`register` call.
"""
from __future__ import annotations

import importlib
import pkgutil

from lpo.errors import ConfigError

#: The names a form must define (optional: ``matches``, ``select``, ``WHOLE_ROWS``).
REQUIRED = ("NAME", "DTYPE", "SCHEME", "STORAGE", "quantize", "dequantize", "plan_var", "encode", "simulate",
            "nbytes", "build_dequant")
#: Modules of this package that are helpers, not forms.
_HELPERS = ("base", "deeprec_ev", "int4")
#: Bytes a value takes kept in float32 (the FP32 "form": no conversion).
FP32_BYTES = 4

_FORMS: dict = {}
_discovered = False


def register(form):
    """Register ``form`` (a module or object with :data:`REQUIRED`) under ``form.NAME``; return it."""
    missing = [a for a in REQUIRED if not hasattr(form, a)]
    if missing:
        raise ConfigError(f"storage form {getattr(form, 'NAME', form)!r} lacks {', '.join(missing)}")
    want = form.DTYPE if form.SCHEME == "cast" else f"{form.DTYPE}:{form.SCHEME}"
    if form.NAME != want:
        raise ConfigError(f"storage form {form.NAME!r} must be named {want!r} (DTYPE, or DTYPE:SCHEME)")
    _FORMS[form.NAME] = form
    return form


def unregister(name: str) -> None:
    """Remove the form ``name`` (a no-op when absent)."""
    _FORMS.pop(name, None)


def _discover() -> None:
    """Import every module of this package that defines a form, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _HELPERS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME"):
            register(module)


def forms() -> list:
    """Every registered form, in registration order."""
    _discover()
    return list(_FORMS.values())


def names() -> list[str]:
    """The registered form names."""
    return [f.NAME for f in forms()]


def get(name: str):
    """The form named ``name`` (``"INT8:per_row"``); ConfigError for an unknown one."""
    _discover()
    if name not in _FORMS:
        raise ConfigError(f"unknown storage form {name!r}; registered: {', '.join(_FORMS)}")
    return _FORMS[name]


def dtypes() -> tuple[str, ...]:
    """The data types the registered forms store (each once)."""
    return tuple(dict.fromkeys(f.DTYPE for f in forms()))


def of_dtype(dtype: str) -> list:
    """The forms of data type ``dtype``."""
    return [f for f in forms() if f.DTYPE == dtype]


def schemes(dtype: str) -> tuple[str, ...]:
    """The schemes of ``dtype``'s forms (none for a plain cast)."""
    return tuple(f.SCHEME for f in of_dtype(dtype) if f.SCHEME != "cast")


def of(dtype: str, scheme: str | None = None):
    """The form of ``dtype`` with ``scheme`` (its first form where ``scheme`` is None or a cast)."""
    found = of_dtype(dtype)
    if not found:
        raise ConfigError(f"no storage form stores {dtype!r}; registered: {', '.join(names())}")
    return next((f for f in found if f.SCHEME == scheme), found[0])


def for_var(vc):
    """The form a plan's VarConversion ``vc`` is stored in."""
    found = [f for f in of_dtype(vc.dtype) if getattr(f, "matches", lambda _v: True)(vc)]
    if not found:
        raise ConfigError(f"no storage form stores {vc.dtype!r} (variable {vc.key!r}); "
                          f"registered: {', '.join(names())}")
    return found[0]


def storage(dtype: str) -> int:
    """The TensorFlow DataType ``dtype``'s tables are stored as (FP32: float)."""
    from tensorflow.core.framework import types_pb2

    if dtype == "FP32":
        return types_pb2.DT_FLOAT
    return of(dtype).STORAGE


def select(dtype: str, n: int, d: int, options, table: str):
    """The form an ``[n, d]`` table asked to be ``dtype`` is stored in.

    A data type with several forms picks by the ``select(n, d, options, table)`` one of them
    defines (INT8: ``options.embedding_scheme``; INT4: the size rule); else its only form.
    """
    found = of(dtype)
    chooser = next((f.select for f in of_dtype(dtype) if hasattr(f, "select")), None)
    return get(chooser(n, d, options, table)) if chooser else found


def table_bytes(n: int, d: int, dtype: str, scheme: str | None = None) -> int:
    """Bytes one ``[n, d]`` table takes in the checkpoint at ``dtype``/``scheme`` (data only)."""
    if dtype == "FP32":
        return FP32_BYTES * int(n) * int(d)
    return of(dtype, scheme).nbytes((int(n), int(d)))
