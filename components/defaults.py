"""Component parameter defaults, taken from :mod:`lpo.options` (where each is defined once).

KFP runs a lightweight (``@dsl.component``) component's own source text in the
container, with only kfp's names imported: a default written there as
``OPTIMIZE.data_type`` would fail at ``def`` time. So such a component declares its
defaulted parameters keyword-only and without a default, and :func:`with_defaults`
sets them (``__kwdefaults__``) before ``@dsl.component`` reads the signature. KFP
stores them in the component spec, and the backend (or ``kfp.local``) passes them
to the step. Pipelines and container components run on the host when compiled:
they take their defaults from :mod:`lpo.options` directly.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable


def with_defaults(*sources, **named) -> Callable:
    """Give each keyword-only parameter without a default its default.

    ``named`` maps a parameter to its default; a parameter not in it takes the field of
    the same name of the first dataclass instance in ``sources`` (e.g. ``OPTIMIZE``) that
    has one. A keyword-only parameter left without a default is a TypeError at import.
    """
    fields = {}
    for src in reversed(sources):
        fields.update(dataclasses.asdict(src))
    fields.update(named)

    def apply(func: Callable) -> Callable:
        kwdefaults = dict(func.__kwdefaults__ or {})
        for p in inspect.signature(func).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                if p.name not in fields:
                    raise TypeError(f"{func.__name__}: no default for {p.name!r} in lpo.options")
                kwdefaults[p.name] = fields[p.name]
        func.__kwdefaults__ = kwdefaults
        return func

    return apply
