"""``lpo profile``: nodes per run and time per op type of a SavedModel's signature, before and after.

Each model runs in its own :class:`~lpo.validation.runner.SignatureRunner` on one batch (rows of
a data file, repeated to the batch size, or seeded synthetic inputs). ``runs`` FULL_TRACE runs
give, per op type, the nodes executed per run and the median op time per run (the step stats'
``op_end - op_start``, summed over the type's nodes; kernels as TensorFlow ran them, after
Grappler, e.g. ``_FusedMatMul``); ``runs`` more untraced runs, interleaved between the models,
give the p50 latency. Nodes lpo added (names with ``lpo_``) are counted on their own.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lpo import options as opts
from lpo.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["profile", "profile_runners", "batch_inputs", "ProfileResult", "ModelProfile", "OpTypeStats"]

#: step-stats entries that are not graph nodes
_NOT_NODES = ("_SOURCE", "_SINK")


@dataclass
class OpTypeStats:
    """One op type of one model: nodes executed per run and their median op time per run."""

    op: str
    nodes: int
    us: float

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass
class ModelProfile:
    """Where one model's run goes at one batch size."""

    model_path: str
    batch_size: int
    runs: int
    nodes_per_run: int
    op_ms: float  # median over traced runs of the summed op time
    p50_ms: float  # untraced latency
    lpo_nodes: int = 0  # nodes per run whose name lpo gave (``lpo_``)
    op_types: list[OpTypeStats] = field(default_factory=list)  # by time, largest first

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        d = asdict(self)
        d["op_types"] = [o.to_dict() for o in self.op_types]
        return d

    def by_op(self) -> dict[str, OpTypeStats]:
        """``{op type: stats}``."""
        return {o.op: o for o in self.op_types}


@dataclass
class ProfileResult:
    """:func:`profile`'s result: the model's profile and, with ``compare``, the other model's."""

    model: ModelProfile
    compare: ModelProfile | None = None
    top: int = opts.PROFILE.top
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-able dict (``rows``: the top op types table)."""
        return {"model": self.model.to_dict(), "compare": self.compare.to_dict() if self.compare else None,
                "top": self.top, "settings": self.settings, "rows": self.rows()}

    def rows(self) -> list[dict]:
        """The ``top`` op types by time (in either model), each ``{op, nodes, us[, nodes_compare, us_compare]}``."""
        return op_type_rows(self.model, self.compare, self.top)

    def summary(self) -> str:
        """The profile as a text table."""
        return profile_table(self.model, self.compare, self.top, self.settings)


def op_type_rows(a: ModelProfile, b: ModelProfile | None, top: int) -> list[dict]:
    """The ``top`` op types by the larger of their times in ``a`` and ``b``."""
    ta, tb = a.by_op(), (b.by_op() if b else {})
    ops = sorted(set(ta) | set(tb), key=lambda o: (-max(ta[o].us if o in ta else 0.0, tb[o].us if o in tb else 0.0), o))
    out = []
    for op in ops[:top]:
        row = {"op": op, "nodes": ta[op].nodes if op in ta else 0, "us": ta[op].us if op in ta else 0.0}
        if b is not None:
            row.update(nodes_compare=tb[op].nodes if op in tb else 0, us_compare=tb[op].us if op in tb else 0.0)
        out.append(row)
    return out


def profile_table(a: ModelProfile, b: ModelProfile | None, top: int, settings: dict | None = None) -> str:
    """A text table: totals, then the top op types (nodes per run, µs per run) of ``a`` [and ``b``]."""
    st = settings or {}
    head = f"lpo profile at batch {a.batch_size}: {a.runs} FULL_TRACE runs"
    if st.get("threads") is not None:
        head += f", {st['threads'] or 'default'} intra-op thread(s)"
    lines = [head, f"  model:   {a.model_path}"] + ([f"  compare: {b.model_path}"] if b else [])
    cols = ("model", "compare") if b else ("model",)
    models = (a, b) if b else (a,)
    w = 12
    lines.append(f"{'':<28}" + "".join(f"{c:>{w}}" for c in cols) + (f"{'ratio':>{w}}" if b else ""))

    def total(label, values, fmt):
        ratio = f"{values[1] / values[0]:>{w - 1}.2f}x" if b and values[0] else ""
        lines.append(f"{label:<28}" + "".join(f"{fmt(v):>{w}}" for v in values) + ratio)

    total("nodes per run", [m.nodes_per_run for m in models], lambda v: f"{v:,}")
    total("  of them added by lpo", [m.lpo_nodes for m in models], lambda v: f"{v:,}")
    total("op time per run (ms)", [m.op_ms for m in models], lambda v: f"{v:.2f}")
    total("latency p50 (ms)", [m.p50_ms for m in models], lambda v: f"{v:.2f}")
    lines.append("")
    lines.append(f"top {top} op types by time: nodes per run and µs per run")
    lines.append(f"{'op type':<28}" + "".join(f"{'nodes':>8}{'µs':>10}" for _ in cols))
    for r in op_type_rows(a, b, top):
        cells = f"{r['nodes']:>8,}{r['us']:>10.0f}"
        if b:
            cells += f"{r['nodes_compare']:>8,}{r['us_compare']:>10.0f}"
        lines.append(f"{r['op'][:27]:<28}{cells}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- inputs
def batch_inputs(specs: dict, batch_size: int, data=None, *, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch of ``batch_size`` rows for the signature inputs ``specs``.

    From ``data`` (an ``.npz`` with one array per input, as for ``lpo validate``/calibration),
    its first rows repeated to ``batch_size``; without it, seeded synthetic values: floats
    N(0, 1), integers in [0, 10), strings ``b"v0".."v99"``.
    """
    if data is not None:
        from lpo.data.calibration import load_calibration

        (first,) = load_calibration(data, specs, batch_size=batch_size, max_batches=1)
        n = len(next(iter(first.values())))
        idx = np.arange(batch_size) % n
        return {k: np.asarray(v)[idx] for k, v in first.items()}
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in specs.items():
        shape = [batch_size] + [1 if d is None else int(d) for d in (spec.shape or (None,))[1:]]
        if spec.dtype.kind == "O":
            out[name] = np.array([f"v{i}".encode() for i in rng.integers(0, 100, size=int(np.prod(shape)))],
                                 dtype=object).reshape(shape)
        elif spec.dtype.kind in "iu":
            out[name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            out[name] = rng.random(shape) < 0.5
        else:
            out[name] = rng.standard_normal(shape).astype(spec.dtype)
    return out


# --------------------------------------------------------------------------- tracing
def _op_type(ns, graph) -> str:
    """The kernel a step-stats node ran (``name = Op(...)``), or its graph op type."""
    label = ns.timeline_label
    if "=" in label:
        return label.split("=", 1)[1].split("(", 1)[0].strip()
    try:
        return graph.get_operation_by_name(ns.node_name).type
    except (KeyError, ValueError):
        return "?"


def _trace(runner, feed) -> list[tuple[str, str, int]]:
    """One FULL_TRACE run: ``(node, op type, op µs)`` per executed node."""
    md = runner.trace(feed)
    out = []
    for dev in md.step_stats.dev_stats:
        for ns in dev.node_stats:
            if ns.node_name in _NOT_NODES:
                continue
            out.append((ns.node_name, _op_type(ns, runner.graph), ns.op_end_rel_micros - ns.op_start_rel_micros))
    return out


def profile_runners(runners: list, batch: dict[str, np.ndarray], runs: int = opts.PROFILE.runs,
                    warmup: int = opts.PROFILE.warmup, *, timed: bool = True) -> list[ModelProfile]:
    """Profile loaded :class:`SignatureRunner` s on one ``batch`` (``{input name: array}``).

    The runners' traced runs and their untraced (latency) runs are interleaved, A, B then B, A.
    ``timed=False`` skips the untraced runs (``p50_ms`` is then NaN: e.g. validate measures latency itself).
    """
    runs = int(runs)
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    n = len(next(iter(batch.values())))
    for r in runners:
        for _ in range(warmup):
            r.run(batch)
    traces: list[list] = [[] for _ in runners]
    times: list[list] = [[] for _ in runners]
    arrays = [[batch[k] for k in r.input_names] for r in runners]
    for it in range(runs):
        order = range(len(runners)) if it % 2 == 0 else reversed(range(len(runners)))
        for k in order:
            traces[k].append(_trace(runners[k], batch))
            if timed:
                t0 = time.perf_counter()
                runners[k].call(*arrays[k])
                times[k].append(time.perf_counter() - t0)
    return [_summarize(r.path, n, tr, t) for r, tr, t in zip(runners, traces, times)]


def _summarize(path: str, batch_size: int, traces: list[list], times: list[float]) -> ModelProfile:
    per_type_us: dict[str, list[float]] = {}
    counts: list[int] = []
    for tr in traces:
        us: dict[str, float] = {}
        for _node, op, t in tr:
            us[op] = us.get(op, 0.0) + t
        for op in us:
            per_type_us.setdefault(op, []).append(us[op])
        counts.append(len(tr))
    last = traces[-1]
    nodes: dict[str, int] = {}
    for _node, op, _t in last:
        nodes[op] = nodes.get(op, 0) + 1
    stats = [OpTypeStats(op, nodes.get(op, 0), float(np.median(v + [0.0] * (len(traces) - len(v)))))
             for op, v in per_type_us.items()]
    stats.sort(key=lambda o: (-o.us, o.op))
    totals = [sum(t for _n, _o, t in tr) for tr in traces]
    return ModelProfile(model_path=path, batch_size=int(batch_size), runs=len(traces),
                        nodes_per_run=int(np.median(counts)), op_ms=float(np.median(totals)) / 1e3,
                        p50_ms=float(np.median(times)) * 1e3 if times else float("nan"),
                        lpo_nodes=sum(1 for node, _o, _t in last if "lpo_" in node), op_types=stats)


def _session_config(threads: int | None):
    if threads is None:
        return None
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=int(threads), inter_op_parallelism_threads=1)


def profile(model, compare=None, *, batch_size: int = opts.PROFILE.batch_size, runs: int = opts.PROFILE.runs,
            data=None, top: int = opts.PROFILE.top, threads: int | None = opts.PROFILE.threads,
            warmup: int = opts.PROFILE.warmup, tags=None, signature: str = opts.DEFAULT_SIGNATURE) -> ProfileResult:
    """Profile the ``signature`` of SavedModel ``model`` (and of ``compare``, e.g. its optimized copy).

    Args:
        model, compare: SavedModel directories; ``compare`` must take the same inputs.
        batch_size: rows per run. ``data``: an ``.npz`` of serving inputs (else synthetic inputs).
        runs: FULL_TRACE runs (and as many untraced latency runs) per model, after ``warmup``.
        top: op types in the table. ``threads``: intra-op threads (``0``: TensorFlow's default).
    Returns:
        ProfileResult (``summary()`` is the table, ``to_dict()`` JSON-able).
    """
    from lpo.core.signature import load_signature_specs
    from lpo.validation.runner import SignatureRunner

    batch_size, top = int(batch_size), int(top)
    if batch_size < 1 or top < 1:
        raise ConfigError(f"batch_size and top must be >= 1, got {batch_size} and {top}")
    tags = opts.normalize_tags(tags)
    paths = [os.fspath(model)] + ([os.fspath(compare)] if compare is not None else [])
    specs = load_signature_specs(paths[0], tags=tags, signature=signature)
    if compare is not None:
        other = load_signature_specs(paths[1], tags=tags, signature=signature)
        if set(other) != set(specs):
            raise ConfigError(f"{paths[1]} takes other inputs than {paths[0]}: {sorted(set(other) ^ set(specs))}")
    batch = batch_inputs(specs, batch_size, data)
    config = _session_config(None if threads is None or int(threads) == 0 else threads)
    runners = []
    try:
        for p in paths:
            runners.append(SignatureRunner(p, tags, signature, session_config=config, input_names=sorted(specs)))
        profiles = profile_runners(runners, batch, runs, warmup)
    finally:
        for r in runners:
            r.close()
    settings = {"batch_size": batch_size, "runs": int(runs), "threads": threads, "data": os.fspath(data) if data
                else "synthetic", "signature": signature}
    result = ProfileResult(profiles[0], profiles[1] if compare is not None else None, top, settings)
    log.info("profile %s: %d nodes per run, %.2f ms op time", paths[0], profiles[0].nodes_per_run, profiles[0].op_ms)
    return result
