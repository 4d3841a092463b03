"""What AUTO measures: eval data and its split, accuracy against FP32, size, built models' latency.

Every candidate configuration is a plan (``{node: form}`` plus the model-wide options).
:class:`Evaluator` scores one on the tuning rows, by simulation when every form is
weight-only (:mod:`lpo.tune.simulate`) and otherwise on a real build (``lpo.optimize``
into a scratch directory, loaded with the one :class:`~lpo.validation.runner.SignatureRunner`).
Built candidates also get a latency: p50 at one batch size, interleaved with FP32.
All model runs go through this module, so bounded-memory evaluation has one place to hook in.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lpo.errors import DataError
from lpo.options import DEFAULT_SIGNATURE, DEFAULT_TAGS

log = logging.getLogger(__name__)

#: Rows per session.run when predicting.
PREDICT_CHUNK = 4096
#: Each split (tuning and confirmation) needs at least this many rows.
MIN_SPLIT_ROWS = 100


# --------------------------------------------------------------------------- data
@dataclass
class EvalData:
    """Serving inputs (``arrays``) and optional 0/1 ``labels`` of some eval rows."""

    arrays: dict
    labels: np.ndarray | None
    source: str = ""

    @property
    def rows(self) -> int:
        """Number of rows."""
        return len(next(iter(self.arrays.values())))

    def take(self, idx) -> "EvalData":
        """The rows ``idx``."""
        return EvalData({k: v[idx] for k, v in self.arrays.items()},
                        None if self.labels is None else self.labels[idx], self.source)

    def concat(self, *others: "EvalData") -> "EvalData":
        """These rows followed by ``others``' (their labels are dropped unless every part has some)."""
        parts = (self,) + others
        arrays = {k: np.concatenate([np.asarray(p.arrays[k]) for p in parts]) for k in self.arrays}
        labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
        return EvalData(arrays, labels, self.source)

    def feeds(self, chunk: int = PREDICT_CHUNK) -> list[dict]:
        """The rows as feed dicts of at most ``chunk`` rows."""
        return [{k: v[s:s + chunk] for k, v in self.arrays.items()} for s in range(0, self.rows, chunk)]


def _labels(npz, key: str, n: int, where: str) -> np.ndarray:
    y = np.asarray(npz[key])
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: label {key!r} must be numeric 0/1 values, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: label {key!r} must be one value per row (shape [{n}]), got shape {list(y.shape)}")
    if y.shape[0] != n:
        raise DataError(f"{where}: label {key!r} has {y.shape[0]} rows, the inputs have {n}")
    y = y.astype(np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise DataError(f"{where}: label {key!r} must hold only 0 and 1 (clicks); {int(bad.sum())} of {n} rows "
                        f"do not, e.g. {y[bad][0]!r}")
    if y.min() == y.max():
        raise DataError(f"{where}: label {key!r} has only {'positives' if y[0] else 'negatives'}; AUC needs both "
                        "classes: use rows with clicks and non-clicks")
    return y


def load_eval_data(path, model_dir: str, label_key: str, *, tags=DEFAULT_TAGS,
                   signature=DEFAULT_SIGNATURE) -> EvalData:
    """Read ``path`` (.npz of serving inputs plus ``label_key``); labels are None when it is absent.

    Raises DataError for a missing or unreadable file, missing inputs and a bad label.
    """
    from lpo.core.signature import load_signature_specs
    from lpo.validation.validator import _load_data

    path = os.fspath(path)
    specs = load_signature_specs(model_dir, tags=tags, signature=signature)
    arrays, _none, n = _load_data(path, specs, None, None)
    where = os.path.basename(path)
    with np.load(path, allow_pickle=False) as npz:
        labels = _labels(npz, label_key, n, where) if label_key in npz.files else None
    return EvalData(arrays, labels, path)


def split_rows(n: int, fraction: float, seed: int, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Split rows 0..n-1 into (tuning, confirmation) index arrays, shuffled by ``seed``, each sorted.

    With ``labels`` the split is stratified, so both parts keep the click rate.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in (0.0, 1.0)]
    tune, confirm = [], []
    for g in groups:
        g = g[rng.permutation(len(g))]
        k = int(round(fraction * len(g)))
        tune.append(g[:k])
        confirm.append(g[k:])
    tune, confirm = np.sort(np.concatenate(tune)), np.sort(np.concatenate(confirm))
    for name, part in (("tuning", tune), ("confirmation", confirm)):
        if len(part) < MIN_SPLIT_ROWS:
            raise DataError(f"eval data has {n} rows: the {name} split gets {len(part)}, fewer than "
                            f"{MIN_SPLIT_ROWS}; pass more rows (thousands: an AUC budget of 1e-4 needs them) or "
                            "change tune_fraction")
        if labels is not None and len(set(labels[part].tolist())) < 2:
            raise DataError(f"eval data: the {name} split has one class only; pass more rows with both labels")
    return tune, confirm


# --------------------------------------------------------------------------- accuracy
def prediction_vector(outputs: dict, name: str) -> np.ndarray:
    """The prediction output ``name`` as a float64 vector (first column)."""
    a = np.asarray(outputs[name])
    return a.reshape(a.shape[0], -1)[:, 0].astype(np.float64)


class Metric:
    """Accuracy of predictions against the FP32 ones on the same rows.

    ``harm='soft_auc'`` (AUTO's default): the loss is ``|ΔsoftAUC|``, the expected AUC change
    with the FP32 probabilities as soft labels (:func:`lpo.validation.metrics.soft_auc`): it
    needs no labels and has no label noise, so it is precise on a few thousand rows; its SE is
    a jackknife over the rows. ``labels`` (of the first rows, when given) can only veto: a
    configuration whose labelled ``|ΔAUC|`` exceeds the budget by more than ``margin_sigmas``
    DeLong SEs is not feasible (evidence that it is over, beyond label noise).

    ``harm='auc'`` with labels: the loss is ``|ΔAUC|``; SE is the paired DeLong standard error,
    dominated by label noise at the 1e-4 level. Without labels (and not soft): the p99 of
    ``|prediction - FP32 prediction|``. The search scores ``loss + margin_sigmas * SE``.
    """

    def __init__(self, fp32: np.ndarray, labels, budget: float, margin_sigmas: float = 0.0, *,
                 harm: str = "auc"):
        from lpo.validation.metrics import auc

        self.fp32, self.labels, self.budget, self.margin_sigmas = fp32, labels, budget, margin_sigmas
        self.kind = "soft_auc" if harm == "soft_auc" else "auc" if labels is not None else "p99_abs_diff"
        n = 0 if labels is None else len(labels)
        self.auc_fp32 = auc(labels, fp32[:n]) if labels is not None else None

    def measure(self, pred: np.ndarray) -> dict:
        """``{loss, score, feasible, delta_auc, se, auc, mse, p99_abs_diff, max_abs_diff}`` of ``pred``.

        ``mse`` (mean squared prediction change) is the smooth, roughly additive harm the
        search uses to rank forms; ``score`` is what the budget bounds. For ``soft_auc``,
        ``delta_auc``/``se`` are the soft ones and ``labelled_delta_auc``/``labelled_se`` the
        labelled rows' (None without labels).
        """
        from lpo.validation.metrics import auc_delta, soft_auc_delta

        d = np.abs(pred - self.fp32)
        out = {"p99_abs_diff": float(np.percentile(d, 99)), "max_abs_diff": float(d.max()),
               "mse": float(np.mean(d * d)), "delta_auc": None, "se": None, "auc": None}
        labelled = None
        if self.labels is not None:
            n = len(self.labels)
            labelled = auc_delta(self.labels, self.fp32[:n], pred[:n])
        if self.kind == "soft_auc":
            delta, se = soft_auc_delta(self.fp32, pred)
            out.update(delta_auc=delta, se=se, loss=abs(delta), score=abs(delta) + self.margin_sigmas * se,
                       labelled_delta_auc=None if labelled is None else labelled[0],
                       labelled_se=None if labelled is None else labelled[1])
            if labelled is not None and abs(labelled[0]) - self.margin_sigmas * labelled[1] > self.budget:
                out["labelled_veto"] = True
        elif labelled is not None:
            delta, se = labelled
            out.update(delta_auc=delta, se=se, auc=self.auc_fp32 + delta, loss=abs(delta))
            out["score"] = out["loss"] + self.margin_sigmas * se
        else:
            out["loss"] = out["score"] = out["p99_abs_diff"]
        out["feasible"] = bool(math.isfinite(out["score"]) and out["score"] <= self.budget
                               and not out.get("labelled_veto"))
        return out


_LOSS_NAMES = {"auc": "|dAUC|", "soft_auc": "|dsoftAUC|", "p99_abs_diff": "p99|dp|"}


# --------------------------------------------------------------------------- latency
def latency(fp32_runner, runner, data: EvalData, batch: int, iters: int, warmup: int = 3) -> dict:
    """p50 of ``runner`` against ``fp32_runner`` at ``batch`` rows, interleaved (as ``lpo validate``)."""
    from lpo.validation.validator import _latency

    entry = _latency([fp32_runner, runner], data.arrays, data.rows, [batch], warmup, iters)[0]
    return {"batch_size": batch, "fp32_p50_ms": entry["original"]["p50_ms"],
            "p50_ms": entry["optimized"]["p50_ms"], "p50_ratio": entry["p50_ratio"]}


@contextlib.contextmanager
def quiet_logs():
    """Keep the inner optimize/load logs of candidate builds out of AUTO's progress (warnings pass)."""
    loggers = [logging.getLogger(n) for n in ("lpo", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# --------------------------------------------------------------------------- trials
@dataclass
class Trial:
    """One evaluated configuration."""

    id: int
    phase: str
    how: str  # "simulated" or "built"
    config: dict
    nbytes: int
    size_ratio: float
    loss: float
    feasible: bool
    score: float = float("nan")
    se: float | None = None
    delta_auc: float | None = None
    p99_abs_diff: float | None = None
    max_abs_diff: float | None = None
    mse: float | None = None
    latency: dict | None = None
    change: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def latency_ratio(self) -> float | None:
        """p50 latency / FP32 p50 (built trials only)."""
        return None if self.latency is None else self.latency["p50_ratio"]

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        d = asdict(self)
        d["latency_ratio"] = self.latency_ratio
        return d


class EvalBudget:
    """Stops the search after ``max_evals`` evaluations or ``time_budget_s`` seconds."""

    def __init__(self, max_evals: int, time_budget_s: float | None):
        self.max_evals, self.time_budget_s = max_evals, time_budget_s
        self.start, self.used = time.perf_counter(), 0

    def left(self) -> bool:
        """True while another evaluation may run."""
        if self.used >= self.max_evals:
            return False
        return self.time_budget_s is None or time.perf_counter() - self.start < self.time_budget_s

    def why(self) -> str:
        """Which limit stopped the search."""
        if self.used >= self.max_evals:
            return f"max_evals={self.max_evals} reached"
        return f"time_budget_s={self.time_budget_s:g} reached"


class Evaluator:
    """Scores configurations on the tuning rows; keeps every trial (the frontier's points).

    Args:
        spaces: the nodes' ladders (:func:`lpo.tune.space.search_space`).
        sim: the :class:`~lpo.tune.simulate.SimulatedModel` (FP32 graph, settable variables).
        tune: the tuning rows; ``output``: the prediction output name.
        metric: :class:`Metric` built on the FP32 predictions of ``tune``.
        fp32_bytes: bytes of every variable of the FP32 model (the size denominator).
        build: ``build(config, tag) -> SavedModel dir`` (a real ``lpo.optimize``).
        budget: :class:`EvalBudget`.
    """

    def __init__(self, spaces, sim, tune: EvalData, output: str, metric: Metric, fp32_bytes: int, build,
                 budget: EvalBudget, *, latency_batch: int = 512, latency_iters: int = 30):
        self.spaces = {s.name: s for s in spaces}
        self.order = [s.name for s in spaces]
        self.sim, self.tune, self.output, self.metric = sim, tune, output, metric
        self.fp32_bytes = fp32_bytes
        self.other_bytes = fp32_bytes - sum(s.fp32_bytes for s in spaces)
        self._build, self.budget = build, budget
        self.latency_batch, self.latency_iters = latency_batch, latency_iters
        self.trials: list[Trial] = []
        self._sim_cache: dict = {}
        self._built: dict = {}  # config key -> (trial, model dir)
        self._feeds = tune.feeds()

    # ---- helpers
    def key(self, config: dict) -> tuple:
        """A hashable key of ``config``."""
        return tuple(config[n] for n in self.order)

    def nbytes(self, config: dict) -> int:
        """Stored variable bytes of ``config``."""
        return self.other_bytes + sum(self.spaces[n].form(config[n]).nbytes for n in self.order)

    def simulable(self, config: dict) -> bool:
        """True when every form of ``config`` is weight-only."""
        from lpo.tune.simulate import simulable

        return all(simulable(self.spaces[n].form(config[n])) for n in self.order)

    def _trial(self, phase, how, config, scores, change, t0, latency=None) -> Trial:
        nbytes = self.nbytes(config)
        t = Trial(id=len(self.trials), phase=phase, how=how, config=dict(config), nbytes=nbytes,
                  size_ratio=nbytes / max(1, self.fp32_bytes), loss=scores["loss"], feasible=scores["feasible"],
                  score=scores["score"], se=scores["se"], delta_auc=scores["delta_auc"],
                  p99_abs_diff=scores["p99_abs_diff"], max_abs_diff=scores["max_abs_diff"], mse=scores["mse"],
                  latency=latency, change=change,
                  seconds=time.perf_counter() - t0,
                  extra={k: scores[k] for k in ("labelled_delta_auc", "labelled_se", "labelled_veto")
                         if scores.get(k) is not None})
        self.trials.append(t)
        self.budget.used += 1
        lat = f", latency {t.latency_ratio:.2f}x" if t.latency_ratio is not None else ""
        se = f" (+{self.metric.margin_sigmas:g} SE {t.se:.1e})" if t.se is not None else ""
        log.info("AUTO %3d %-11s %-9s size %.3fx  %s %.2e%s %s%s  %s", t.id, phase, how, t.size_ratio,
                 _LOSS_NAMES[self.metric.kind], t.loss, se,
                 "ok" if t.feasible else "over", lat, change)
        return t

    # ---- evaluation
    def simulate(self, config: dict, phase: str, change: str = "") -> Trial:
        """Score a weight-only ``config`` by simulation (cached)."""
        k = self.key(config)
        if k in self._sim_cache:
            return self._sim_cache[k]
        t0 = time.perf_counter()
        self.sim.apply([self.spaces[n] for n in self.order], config)
        pred = prediction_vector(self.sim.predict(self._feeds), self.output)
        t = self._trial(phase, "simulated", config, self.metric.measure(pred), change, t0)
        self._sim_cache[k] = t
        return t

    def build(self, config: dict, phase: str, change: str = "") -> tuple[Trial, str]:
        """Build ``config`` for real, score it and time it (cached); return (trial, model dir)."""
        from lpo.validation.runner import SignatureRunner

        k = self.key(config)
        if k in self._built:
            return self._built[k]
        t0 = time.perf_counter()
        with quiet_logs():
            path = self._build(config, f"c{len(self.trials):03d}")
            with SignatureRunner(path) as runner:
                pred = np.concatenate([prediction_vector(runner.run(f), self.output) for f in self._feeds])
                lat = latency(self.sim.runner, runner, self.tune, self.latency_batch, self.latency_iters)
        t = self._trial(phase, "built", config, self.metric.measure(pred), change, t0, latency=lat)
        self._built[k] = (t, path)
        return t, path

    def speedup(self, base: dict, other: dict) -> float:
        """p50 of built ``other`` / p50 of built ``base``, interleaved A/B (both already built)."""
        from lpo.validation.runner import SignatureRunner

        with quiet_logs(), SignatureRunner(self._built[self.key(base)][1]) as a, \
                SignatureRunner(self._built[self.key(other)][1]) as b:
            return latency(a, b, self.tune, self.latency_batch, 2 * self.latency_iters)["p50_ratio"]

    def evaluate(self, config: dict, phase: str, change: str = "") -> Trial:
        """Score ``config``: simulated when possible, else built."""
        if self.simulable(config):
            return self.simulate(config, phase, change)
        return self.build(config, phase, change)[0]


__all__ = ["EvalData", "load_eval_data", "split_rows", "Metric", "latency", "Trial", "EvalBudget", "Evaluator",
           "prediction_vector"]
