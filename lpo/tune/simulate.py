"""Exact, fast evaluation of weight-only forms: the FP32 graph with its variables set to
the values the optimized graph computes from its stored low-precision ones.

A weight-only form changes only what a node's variables hold: an embedding lookup of an
INT8 table computes ``float32(q) * scale`` for the looked-up rows, a weight-only dense
layer multiplies by ``float32(q) * scale``. Assigning exactly those float32 values to the
FP32 model's variables gives the optimized model's outputs (the rewritten graph's gathers
and segment reductions add the same numbers in the same order; tests/test_tune.py checks
this against real builds). One loaded session then evaluates any mix of such forms by
re-assigning only the variables whose form changed: no rewrite, no checkpoint, no reload.

Forms that change arithmetic, not only values (static INT8 activations, 16-bit compute,
int8 kernels), are not simulable: :func:`decode` raises :class:`NotSimulable` and AUTO
evaluates them on real builds.
"""
from __future__ import annotations

import logging

import numpy as np

from lpo.options import DEFAULT_SIGNATURE, DEFAULT_TAGS

log = logging.getLogger("lpo")

#: Conversion modes whose graph computes with float32 values of the stored weights.
SIMULABLE_MODES = ("", "weight_only")


class NotSimulable(Exception):
    """A form whose effect is not just new float32 variable values."""


def decode(conversion, converted: dict) -> dict:
    """Return ``{(key, slice): float32 array}``: what the rewritten graph reads for each variable.

    ``converted`` maps (key, slice) to :func:`lpo.core.checkpoint.convert_values` outputs; each
    variable's storage form (:mod:`lpo.formats`) says what its graph computes from them.
    Raises NotSimulable for a mode or dtype with no float32 equivalent.
    """
    if conversion.mode not in SIMULABLE_MODES:
        raise NotSimulable(f"{conversion.node}: mode {conversion.mode!r}")
    from lpo import formats
    from lpo.errors import ConfigError

    out = {}
    for vc in conversion.variables:
        try:
            form = formats.for_var(vc)
        except ConfigError as e:
            raise NotSimulable(f"{conversion.node}: dtype {vc.dtype}") from e
        out[(vc.key, vc.slice)] = form.simulate(vc, converted[(vc.key, vc.slice)])
    return out


def simulable(form) -> bool:
    """True when ``form`` (a :class:`lpo.tune.space.Form`) can be evaluated by simulation."""
    if form.conversion is None:
        return True
    try:
        decode(form.conversion, form.converted)
    except NotSimulable:
        return False
    return True


class SimulatedModel:
    """The FP32 model loaded once, whose variables take the float32 view of any weight-only form.

    Args:
        model_dir: a TF1-loadable SavedModel dir (the lowered dir for TF2 models).
        var_nodes: ``{(key, slice): variable node name}`` of every variable AUTO may set.
        read: ``read(key, slice) -> FP32 value`` (the model's own checkpoint).
    """

    def __init__(self, model_dir: str, var_nodes: dict, read, *, tags=DEFAULT_TAGS, signature=DEFAULT_SIGNATURE):
        import tensorflow as tf

        from lpo.validation.runner import SignatureRunner

        self.runner = SignatureRunner(model_dir, tags=tags, signature=signature)
        self._read = read
        self._nodes = dict(var_nodes)
        self._ops: dict = {}
        self._current: dict = {}  # (key, slice) -> id of what it holds (None: FP32)
        self._held: dict = {}  # node -> the form its variables hold (absent: FP32)
        self._tf = tf

    def _assign_op(self, key):
        if key not in self._ops:
            tf = self._tf
            g = self.runner.graph
            node = self._nodes[key]
            with g.as_default():
                var = g.get_tensor_by_name(node + ":0")
                ph = tf.compat.v1.placeholder(tf.float32, shape=var.shape if var.dtype != tf.resource else None,
                                              name=f"lpo_auto/{node}/value")
                if var.dtype == tf.resource:
                    op = tf.raw_ops.AssignVariableOp(resource=var, value=ph, name=f"lpo_auto/{node}/assign")
                else:
                    op = tf.compat.v1.assign(var, ph, validate_shape=True, name=f"lpo_auto/{node}/assign").op
            self._ops[key] = (ph, op)
        return self._ops[key]

    def set(self, key, tag, value) -> None:
        """Hold ``value`` in variable ``key``; ``tag`` names it (skips the assign if already held)."""
        if self._current.get(key, None) == tag:
            return
        ph, op = self._assign_op(key)
        self.runner.session.run(op, {ph: value})
        self._current[key] = tag

    def apply(self, spaces, config: dict) -> None:
        """Give every node of ``spaces`` its form in ``config`` ({node: choice})."""
        for space in spaces:
            choice = config[space.name]
            if self._held.get(space.name, space.forms[-1].choice) == choice:
                continue
            form = space.form(choice)
            values = decode(form.conversion, form.converted) if form.conversion is not None else {}
            for key in self._keys_of(space):
                if key in values:
                    self.set(key, (space.name, form.choice), values[key])
                else:
                    self.set(key, None, self._read(*key))
            self._held[space.name] = choice

    def _keys_of(self, space):
        keys = []
        for f in space.forms + [g for v in space.faster.values() for g in v]:
            keys += [k for k in f.converted if k not in keys]
        return keys

    def predict(self, feeds) -> dict:
        """Run the signature on every batch of ``feeds``; return {output: concatenated array}."""
        out: dict = {}
        for feed in feeds:
            for k, v in self.runner.run(feed).items():
                out.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v, axis=0) for k, v in out.items()}

    def close(self) -> None:
        """Release the session."""
        self.runner.close()

    def __enter__(self) -> "SimulatedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
