"""AUTO's search space: for each optimizable node, the forms it may take, smallest first.

A form is an opt_config value (``"INT8:per_row"``, ``"FP32"``). Each node's ladder comes
from :data:`lpo.options.AUTO_LADDERS` for its kind, keeping only forms that

* this lpo has (a dtype with no registered storage form, :func:`lpo.options.node_dtypes`, is skipped),
* the node's pass plans and whose checkpoint conversion succeeds on the node's own
  values (e.g. FP16 where a weight exceeds 65504 is dropped, BF16 then takes its place),
* are strictly smaller than the next form kept above them (a D=1 table skips INT8
  per_row: 3 bytes per row against 2 at FP16),
* are weight-only, so the size search can score them by exact simulation
  (:mod:`lpo.tune.simulate`); faster forms of the same size are tried on real builds.

Sizes are exact: the bytes the checkpoint converter writes for that form.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lpo import options as opts
from lpo.core.checkpoint import convert_values
from lpo.core.plan import Conversion
from lpo.errors import LpoError

log = logging.getLogger("lpo")


@dataclass
class Form:
    """One form of one node: its plan, its stored bytes and (when simulable) its float32 view."""

    choice: str
    conversion: Conversion | None
    nbytes: int
    #: the converter's outputs per (key, slice) of the FP32 source, for simulation
    converted: dict = field(default_factory=dict, repr=False)
    #: squared error of the values the graph computes against FP32, summed (simulable forms)
    weight_error: float | None = None


@dataclass
class NodeSpace:
    """A node's ladder: ``forms[0]`` is the smallest, ``forms[-1]`` is FP32.

    ``faster`` maps a ladder form to same-size forms that may run faster (speed phase).
    """

    name: str
    kind: str
    fp32_bytes: int
    forms: list[Form]
    faster: dict = field(default_factory=dict)
    pinned: bool = False

    @property
    def top(self) -> int:
        """Index of the FP32 form."""
        return len(self.forms) - 1

    def form(self, choice: str) -> Form:
        """The ladder or faster form named ``choice``."""
        for f in self.forms + [g for alts in self.faster.values() for g in alts]:
            if f.choice == choice:
                return f
        raise KeyError(choice)


def _known(choice: str) -> bool:
    dtype = choice.split(opts.VARIANT_SEP, 1)[0]
    return dtype in opts.node_dtypes()


def _form(cand, choice: str, options, read) -> Form:
    """Plan ``cand`` as ``choice`` and convert its FP32 values; raise LpoError when it cannot be."""
    from lpo.core.optimizer import _plan_node

    node = opts.normalize_node_choice(choice, f"AUTO form of {cand.name!r}")
    if node.dtype == opts.KEEP:
        return Form(choice, None, 0)
    conv = _plan_node(cand, node, options)
    converted, nbytes = {}, 0
    for vc in conv.variables:
        outs = convert_values(vc, read(vc.key, vc.slice), f"{cand.name} ({choice})")
        converted[(vc.key, vc.slice)] = outs
        nbytes += sum(int(np.asarray(a).nbytes) for _k, _s, a in outs)
    return Form(choice, conv, nbytes, converted)


def _weight_error(form: Form, read) -> float:
    """Sum of squared differences between ``form``'s float32 view and the FP32 values."""
    from lpo.tune.simulate import decode

    if form.conversion is None:
        return 0.0
    total = 0.0
    for key, value in decode(form.conversion, form.converted).items():
        d = value.astype(np.float64) - read(*key).astype(np.float64)
        total += float(np.sum(d * d))
    return total


def _try(cand, choice, options, read) -> Form | None:
    if not _known(choice):
        return None
    try:
        return _form(cand, choice, options, read)
    except LpoError as e:
        log.debug("AUTO: %s cannot be %s: %s", cand.name, choice, e)
        return None


def runs_natively(choice: str, options) -> bool:
    """True when the target CPU has native kernels for the compute form ``choice`` (speed phase only).

    Uses lpo.target (the target CPU notion); without it, no compute form is offered.
    """
    try:
        from lpo.target import get_target
    except ImportError:
        return False
    target = get_target(getattr(options, "target", None))
    dtype = choice.split(opts.VARIANT_SEP, 1)[0]
    return bool(target.int8_compute if dtype == "INT8" else target.bf16_compute)


def node_space(cand, read, options, *, pinned: str | None = None, ladder=None, faster=None) -> NodeSpace:
    """Build the ladder of candidate ``cand``; ``read(key, slice)`` returns an FP32 checkpoint value.

    ``pinned`` (an opt_config value) fixes the node to one form. ``ladder``/``faster``
    override :data:`~lpo.options.AUTO_LADDERS`/:data:`~lpo.options.AUTO_FASTER`. Each form's
    ``nbytes`` counts every variable any of the node's forms converts (at FP32 where this
    form leaves it), so forms of one node compare directly.
    """
    if pinned is not None:
        choice = str(opts.normalize_node_choice(pinned, f"opt_config[{cand.name!r}]"))
        kept, alts = [_form(cand, choice, options, read)], {}
    else:
        ladder = list(ladder or opts.AUTO_LADDERS.get(cand.kind, (opts.KEEP,)))
        if opts.KEEP not in ladder:
            ladder.append(opts.KEEP)
        from lpo.tune.simulate import simulable

        forms = [f for f in (_try(cand, c, options, read) for c in ladder) if f is not None]
        # the size search scores by exact simulation: a form it cannot simulate is not offered there
        forms = [f for f in forms if simulable(f) or log.debug("AUTO: %s: %s is not simulable", cand.name, f.choice)]
        for f in forms:
            f.weight_error = _weight_error(f, read)
        faster = opts.AUTO_FASTER if faster is None else faster
        alts = {f.choice: [g for g in (_try(cand, c, options, read) for c in faster.get(f.choice, ())
                                       if runs_natively(c, options)) if g]
                for f in forms}
        alts = {k: v for k, v in alts.items() if v}
        kept = forms
    every = [f for f in kept] + [g for v in alts.values() for g in v]
    touched = {k for f in every for k in f.converted}
    fp32 = {k: int(read(*k).nbytes) for k in touched}
    for f in every:
        f.nbytes += sum(n for k, n in fp32.items() if k not in f.converted)
    if pinned is None:  # from FP32 down: keep a form only if it is strictly smaller than the last kept
        out: list[Form] = []
        for f in reversed(kept):
            if not out or f.nbytes < out[-1].nbytes:
                out.append(f)
        kept = list(reversed(out))
        alts = {k: v for k, v in alts.items() if k in {f.choice for f in kept}}
    return NodeSpace(cand.name, cand.kind, sum(fp32.values()), kept, alts, pinned=pinned is not None)


def search_space(found, read, options, pinned: dict | None = None) -> list[NodeSpace]:
    """The ladders of every candidate in ``found`` (``read(key, slice)``: FP32 checkpoint values)."""
    pinned = pinned or {}
    return [node_space(c, read, options, pinned=pinned.get(c.name)) for c in found]
