"""``optimize(..., data_type='AUTO')``: search, confirm on unseen rows, write like any plan.

1. Split ``eval_file`` (stratified by label, shuffled by ``seed``) into tuning rows, which
   the search scores every candidate on, and confirmation rows, which it never sees.
2. Search (:mod:`lpo.tune.search`) for the smallest, then fastest, configuration whose
   loss against FP32 is within the budget. ``harm='soft_auc'`` (default): the soft-label
   ``|ΔAUC|`` (FP32 probabilities as labels) on the tuning rows plus the calibration file's
   and ``unlabeled_file``'s rows, labels vetoing only on evidence; ``harm='auc'``: the
   labelled ``|ΔAUC| <= max_auc_drop`` on the tuning rows, or, when ``eval_file`` has no
   label, p99 ``|Δprediction| <= max_output_diff``.
3. Confirm the chosen configuration, built for real, on the confirmation rows; when it
   misses there, a clearly safer one (half the harm) is confirmed instead, at most
   ``max_confirms`` times (the confirmation rows decide pass or fail only).
4. Write it with ``optimize(opt_config=<chosen>)``: the manifest holds the plan (and an
   ``auto`` summary), ``assets.extra/lpo_auto_config.json`` the chosen opt_config, reusable
   with ``--config``; ``convert_ckpt``/``refresh`` replay it like any other plan.

When no configuration other than all-FP32 meets the budget (within ``max_evals`` /
``time_budget_s``), or no confirmation passes, AUTO raises
:class:`lpo.errors.BudgetError` and writes no model: an "optimized" copy that is all FP32
would only hide the problem. The report (with ``report_dir``) is written either way.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lpo import options as opts
from lpo.errors import ConfigError

log = logging.getLogger(__name__)

#: File (in the model's assets.extra and in report_dir) holding the chosen opt_config.
CONFIG_NAME = "lpo_auto_config.json"


@dataclass
class AutoResult:
    """What the AUTO search did and chose (``OptimizeResult.auto``)."""

    budget: dict
    chosen: dict | None
    tune: dict | None
    confirm: dict | None
    rows: dict
    trials: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    sensitivity: dict = field(default_factory=dict)
    stopped: str | None = None
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    config_files: list = field(default_factory=list)
    report_files: dict = field(default_factory=dict)
    confirmations: list = field(default_factory=list)
    options: dict = field(default_factory=dict)

    @property
    def opt_config(self) -> dict | None:
        """The chosen ``{node: form}``."""
        return None if self.chosen is None else self.chosen["config"]

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        from lpo.validation.validator import _jsonable

        return _jsonable(asdict(self))


def _reader(prefix: str):
    from lpo.core.checkpoint import read_slice

    import tensorflow as tf

    cache: dict = {}

    def read(key: str, spec: str) -> np.ndarray:
        if (key, spec) not in cache:
            cache[(key, spec)] = np.array(read_slice(prefix, key, spec, tf.float32))
        return cache[(key, spec)]

    return read


def _pins(found, opt_config) -> dict:
    """Validate ``opt_config`` keys/values like optimize() does; return {node: normalized form}."""
    from lpo.core.optimizer import _assign

    cfg = opts.normalize_opt_config(opt_config)
    if not cfg:
        return {}
    _assign(found, cfg, opts.KEEP)
    return {k: str(opts.normalize_node_choice(v, f"opt_config[{k!r}]")) for k, v in cfg.items()}


def _fp32_bytes(mg) -> int:
    from lpo.core.savedmodel import variable_specs

    seen, total = set(), 0
    for s in variable_specs(mg).values():
        if (s.key, s.slice) in seen:
            continue
        seen.add((s.key, s.slice))
        total += int(np.prod(s.shape or [1])) * np.dtype(s.dtype if s.dtype != "bfloat16" else "uint16").itemsize
    return total


def auto_optimize(model_path, save_path, *, opt_config=None, calib_file=None, eval_file=None,
                  max_auc_drop=opts.AUTO_OPTIONS.max_auc_drop, auto_options=None, report_dir=None, overwrite=False,
                  allow_pickle=False, tags=None, quiet=False, **optimize_kw):
    """Search per-node forms within the accuracy budget and write the chosen plan (see the module doc)."""
    from lpo.core.optimizer import _check_output, _find, _load_model
    from lpo.core.checkpoint import check_checkpoint
    from lpo.core.savedmodel import variable_specs, variables_prefix
    from lpo.core.tf2 import lowered_model_dir
    from lpo.errors import BudgetError
    from lpo.tune.evaluate import EvalBudget, Evaluator, load_eval_data
    from lpo.tune.simulate import SimulatedModel
    from lpo.tune.space import search_space

    t_start = time.perf_counter()
    auto = opts.normalize_auto_options(auto_options, max_auc_drop=max_auc_drop)
    if eval_file is None:
        raise ConfigError("data_type='AUTO' needs eval_file (CLI --eval): an .npz of serving inputs and a 0/1 "
                          f"{auto.label_key!r} array, e.g. held-out rows (`lpo calibrate` writes the inputs)")
    tags = opts.normalize_tags(tags)
    model_path, save_path = os.path.abspath(os.fspath(model_path)), os.path.abspath(os.fspath(save_path))
    eval_file = os.fspath(eval_file)
    _check_output(save_path, model_path, overwrite)
    if report_dir is not None:
        from lpo.validation.validator import _check_report_dir

        _check_report_dir(os.fspath(report_dir), (model_path,))
    fields = set(opts.OptimizeOptions.__dataclass_fields__) - {"data_type"}
    base = opts.OptimizeOptions(**{k: v for k, v in optimize_kw.items() if k in fields}).normalized()

    # the eval rows first: a bad file fails before any work
    data = load_eval_data(eval_file, model_path, auto.label_key, tags=tags)
    _check_named_label(data, auto, auto_options, eval_file)
    result = AutoResult(budget={}, chosen=None, tune=None, confirm=None, rows={}, options=auto.to_dict())
    tune, confirm = _split(data, auto, eval_file, result)
    pool = _unlabelled_pool(tune, auto, calib_file, model_path, tags, result) if auto.harm == "soft_auc" else tune

    sm, mg = _load_model(model_path, tags)
    prefix = variables_prefix(model_path)
    found = _find(mg, prefix)
    pins = _pins(found, opt_config)
    specs = variable_specs(mg)
    check_checkpoint(prefix, list(specs.values()))
    read = _reader(prefix)
    spaces = search_space(found, read, base, pins)
    log.info("AUTO: %d nodes, %d forms in all; budget %s; %d tuning rows (%d labelled), %d confirmation rows",
             len(spaces), sum(len(s.forms) for s in spaces), _budget_text(result.budget), pool.rows, tune.rows,
             confirm.rows)
    result.nodes = [{"node": s.name, "kind": s.kind, "fp32_bytes": s.fp32_bytes, "pinned": s.pinned,
                     "forms": [{"form": f.choice, "bytes": f.nbytes} for f in s.forms],
                     "faster": {k: [g.choice for g in v] for k, v in s.faster.items()}} for s in spaces]

    work = tempfile.mkdtemp(prefix=".lpo-auto-", dir=os.path.dirname(save_path))
    try:
        with lowered_model_dir(model_path, sm) as run_dir, \
                SimulatedModel(run_dir, {(v.key, v.slice): v.node for v in specs.values()}, read, tags=tags) as sim:
            output, metric, fp32_confirm = _references(sim, pool, confirm, auto, result)

            def build(config, tag):
                dest = os.path.join(work, tag)
                from lpo.core.optimizer import optimize

                optimize(model_path, dest, opt_config=config, calib_file=calib_file, overwrite=True,
                         allow_pickle=allow_pickle, tags=tags, quiet=True, **optimize_kw)
                return dest

            ev = Evaluator(spaces, sim, pool, output, metric, _fp32_bytes(mg), build,
                           EvalBudget(auto.max_evals, auto.time_budget_s), latency_batch=auto.latency_batch,
                           latency_iters=auto.latency_iters)
            search, chosen = _search(ev, spaces, auto, result)
            _confirm(ev, search, chosen, confirm, fp32_confirm, output, metric.budget, tags, result, auto)
    except BudgetError:
        if report_dir is not None:
            result.seconds = time.perf_counter() - t_start
            _write_report(result, report_dir)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    final = _write(model_path, save_path, result, auto, calib_file=calib_file, overwrite=overwrite,
                   allow_pickle=allow_pickle, tags=tags, quiet=quiet, **optimize_kw)
    result.seconds = time.perf_counter() - t_start
    if report_dir is not None:
        _write_report(result, report_dir, final)
    final.auto = result.to_dict()
    log.info("AUTO: wrote %s (%d nodes optimized, variables %.3fx) in %.1f s", save_path, len(final.optimized),
             final.size_ratio, result.seconds)
    return final


def _check_named_label(data, auto, auto_options, eval_file) -> None:
    """A label array the user named must exist (the default one may be absent: AUTO falls back)."""
    named = (isinstance(auto_options, dict) and "label_key" in auto_options) or \
        (isinstance(auto_options, opts.AutoOptions) and auto.label_key != opts.AUTO_OPTIONS.label_key)
    if data.labels is None and named:
        from lpo.errors import DataError

        with np.load(eval_file, allow_pickle=False) as npz:
            present = list(npz.files)
        raise DataError(f"{os.path.basename(eval_file)} has no {auto.label_key!r} array (the label_key you "
                        f"named); arrays present: {', '.join(present)}")


def _split(data, auto, eval_file, result):
    """Split the eval rows and set ``result.rows``/``result.budget`` (the budget depends on the labels)."""
    from lpo.tune.evaluate import split_rows

    tune_idx, confirm_idx = split_rows(data.rows, auto.tune_fraction, auto.seed, data.labels)
    result.rows = {"eval_file": eval_file, "total": data.rows, "tune": len(tune_idx), "confirm": len(confirm_idx),
                   "seed": auto.seed}
    if auto.harm == "soft_auc":
        result.budget = {"metric": "soft_auc", "max_auc_drop": auto.max_auc_drop, "margin_sigmas": auto.margin_sigmas,
                         "labelled_confirmation": data.labels is not None}
        if data.labels is None:
            result.notes.append(f"{os.path.basename(eval_file)} has no {auto.label_key!r} array: the confirmation "
                                "rows are judged by the soft-label AUC alone")
    elif data.labels is None:
        note = (f"{os.path.basename(eval_file)} has no {auto.label_key!r} array: AUTO's budget is p99 |prediction - "
                f"FP32 prediction| <= {auto.max_output_diff:g} (max_output_diff) instead of |dAUC|")
        log.warning("AUTO: %s", note)
        result.notes.append(note)
        result.budget = {"metric": "p99_abs_diff", "max_output_diff": auto.max_output_diff}
    else:
        result.budget = {"metric": "auc", "max_auc_drop": auto.max_auc_drop, "margin_sigmas": auto.margin_sigmas}
    return data.take(tune_idx), data.take(confirm_idx)


def _unlabelled_pool(tune, auto, calib_file, model_path, tags, result):
    """The rows the soft-label search scores on: the tuning rows, then the calibration file's and ``unlabeled_file``'s.

    Labels are only those of the tuning rows (reported, not scored). A calibration file that
    is not an .npz of the serving inputs is left out (noted).
    """
    from lpo.errors import DataError
    from lpo.tune.evaluate import EvalData, load_eval_data

    parts, sources = [], {"eval_tune": tune.rows}
    for name, path in (("calib_file", calib_file), ("unlabeled_file", auto.unlabeled_file)):
        if path is None:
            continue
        try:
            extra = load_eval_data(path, model_path, auto.label_key, tags=tags)
        except DataError as e:
            if name == "unlabeled_file":
                raise
            result.notes.append(f"the soft-label search left out {name} ({e})")
            continue
        parts.append(EvalData(extra.arrays, None, path))
        sources[name] = extra.rows
    result.rows["unlabelled"] = sources
    if not parts:
        return tune
    pool = tune.concat(*parts)
    pool.labels = tune.labels  # the first rows' labels (reported only)
    return pool


def _references(sim, tune, confirm, auto, result):
    """The prediction output, the tuning rows' Metric and the FP32 predictions of the confirmation rows."""
    from lpo.tune.evaluate import Metric, prediction_vector
    from lpo.validation.validator import _pick_prediction

    first = sim.runner.run(tune.feeds()[0])
    output = _pick_prediction(first)
    if output is None:
        raise ConfigError(f"the model's serving outputs {sorted(first)} have no single-column float prediction "
                          "for AUTO to compare")
    result.budget["output"] = output
    budget = result.budget.get("max_auc_drop", result.budget.get("max_output_diff"))
    fp32_tune = prediction_vector(sim.predict(tune.feeds()), output)
    fp32_confirm = prediction_vector(sim.predict(confirm.feeds()), output)  # the reference only, not a score
    margin = auto.margin_sigmas if tune.labels is not None or auto.harm == "soft_auc" else 0.0
    return output, Metric(fp32_tune, tune.labels, budget, margin, harm=auto.harm), fp32_confirm


def _search(ev, spaces, auto, result):
    """Run :class:`lpo.tune.search.Search`; raise BudgetError when nothing but all-FP32 holds the budget."""
    from lpo.errors import BudgetError
    from lpo.tune.search import Search

    search = Search(ev, spaces, auto)
    chosen = search.run()
    result.stopped, result.sensitivity = search.stopped, search.sensitivity
    result.trials = [t.to_dict() for t in ev.trials]
    if chosen is not None:
        return search, chosen
    tried = [t for t in ev.trials if any(c != opts.KEEP for c in t.config.values())]
    best = min(tried, key=lambda t: (t.score, t.nbytes), default=None)
    hint = (f"; the closest one tried (size {best.size_ratio:.3f}x) scored {best.score:.3g}" if best is not None
            else "")
    stop = f" (stopped: {search.stopped})" if search.stopped else ""
    result.notes.append("no configuration within the budget")
    raise BudgetError(f"AUTO found no configuration other than all-FP32 within the budget "
                      f"({_budget_text(result.budget)}) in {len(ev.trials)} evaluations{stop}{hint}. Loosen the "
                      "budget, pass more eval rows, raise max_evals/time_budget_s, or keep the model FP32 "
                      "(nothing written)", result=result)


def _confirm(ev, search, chosen, confirm, fp32_confirm, output, budget, tags, result, auto) -> None:
    """Confirm the built choice on the confirmation rows: ``|ΔAUC| <= budget`` there.

    When it misses, the smallest configuration within the budget on the tuning rows whose
    harm (mean squared prediction change) is at most half the failed one's is confirmed
    instead, at most ``max_confirms`` times in all: a clearly safer choice, never a re-roll of
    a nearly equal one. The confirmation rows only decide pass or fail; the search never
    ranks by them. BudgetError when none passes.
    """
    from lpo.errors import BudgetError
    from lpo.tune.evaluate import Metric, prediction_vector, quiet_logs
    from lpo.validation.runner import SignatureRunner

    cand, tried, failed = chosen, [], set()
    while True:
        t, path = ev.build(cand.config, "confirm", "chosen configuration" if not tried else
                           f"safer configuration (half the harm) after {len(tried)} missed")
        with quiet_logs(), SignatureRunner(path, tags=tags) as runner:
            pred = np.concatenate([prediction_vector(runner.run(f), output) for f in confirm.feeds()])
        conf = _confirmation(fp32_confirm, confirm.labels, budget, pred, auto)
        tried.append({"trial": t.id, "size_ratio": t.size_ratio, "tune_loss": t.loss, "tune_score": t.score,
                      "confirm_loss": conf["loss"], "passed": conf["feasible"]})
        log.info("AUTO: configuration %d (size %.3fx, tuning loss %.3g, score %.3g): confirmation loss %.3g, %s "
                 "(budget %g)", t.id, t.size_ratio, t.loss, t.score, conf["loss"],
                 "confirmed" if conf["feasible"] else "missed", budget)
        result.trials = [x.to_dict() for x in ev.trials]
        result.confirmations = tried
        if conf["feasible"]:
            break
        failed.add(ev.key(cand.config))
        nxt = search.next_safer(t, exclude=failed)
        if nxt is None or len(tried) >= auto.max_confirms:
            raise BudgetError(
                f"AUTO's choice (size {t.size_ratio:.3f}x) met the budget on the {result.rows['tune']} tuning rows "
                f"(loss {t.loss:.3g}, score {t.score:.3g}) but not on the {result.rows['confirm']} confirmation rows "
                f"it never saw (loss {conf['loss']:.3g} > {budget:g}), after {len(tried)} confirmation(s): pass more "
                "eval rows, raise margin_sigmas or loosen the budget (nothing written)", result=result)
        cand = nxt
    if len(tried) > 1:
        result.notes.append(f"the first {len(tried) - 1} choice(s) missed the budget on the confirmation rows; AUTO "
                            "took the smallest configuration within the budget with at most half the harm (the "
                            "confirmation rows decided pass or fail only)")
    result.tune = {k: v for k, v in t.to_dict().items() if k != "config"}
    result.confirm = conf
    result.chosen = {"trial": t.id, "config": dict(t.config), "size_ratio": t.size_ratio, "nbytes": t.nbytes,
                     "latency_ratio": t.latency_ratio}


def _confirmation(fp32, labels, budget, pred, auto) -> dict:
    """Judge ``pred`` on the confirmation rows (never seen by the search).

    ``harm='auc'`` (or no labels without soft): ``|ΔAUC| <= budget`` there. ``soft_auc``: the
    soft ΔAUC there holds the budget (with ``margin_sigmas`` of its small SE), and, with labels,
    the labelled ΔAUC is not over the budget by more than ``margin_sigmas`` DeLong SEs: labels
    reject a choice only on evidence, since their noise at 1e-4 is larger than the budget.
    """
    from lpo.tune.evaluate import Metric

    if auto.harm != "soft_auc":
        return Metric(fp32, labels, budget).measure(pred)
    conf = Metric(fp32, labels, budget, auto.margin_sigmas, harm="soft_auc").measure(pred)
    if labels is not None:
        conf["labelled_ok"] = not conf.pop("labelled_veto", False)
    return conf


def _write(model_path, save_path, result, auto, **kw):
    """Write the chosen plan with ``optimize()``: the manifest's ``auto`` summary and the config JSON."""
    from lpo.core.optimizer import optimize
    from lpo.core.plan import MANIFEST_DIR

    config_text = json.dumps(result.opt_config, indent=1, sort_keys=True) + "\n"
    manifest = {"budget": result.budget, "rows": result.rows,
                "tune": {k: result.tune.get(k) for k in ("loss", "score", "se", "delta_auc", "p99_abs_diff",
                                                          "size_ratio")},
                "confirm": {k: result.confirm.get(k) for k in ("loss", "delta_auc", "se", "p99_abs_diff",
                                                                "labelled_delta_auc", "labelled_se")},
                "evaluations": len(result.trials)}
    final = optimize(model_path, save_path, opt_config=result.opt_config,
                     _auto={"manifest": manifest, "assets": {CONFIG_NAME: config_text}}, **kw)
    result.config_files.append(os.path.join(save_path, MANIFEST_DIR, CONFIG_NAME))
    if auto.config_out:
        from lpo.fsutil import atomic_output_file

        with atomic_output_file(auto.config_out, overwrite=True) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(config_text)
        result.config_files.append(os.path.abspath(auto.config_out))
    return final


def _budget_text(budget: dict) -> str:
    if budget.get("metric") == "soft_auc":
        m = f" + {budget['margin_sigmas']:g} SE" if budget.get("margin_sigmas") else ""
        return f"|dsoftAUC|{m} <= {budget['max_auc_drop']:g} (FP32 probabilities as labels)"
    if budget.get("metric") == "auc":
        m = f" + {budget['margin_sigmas']:g} SE" if budget.get("margin_sigmas") else ""
        return f"|dAUC|{m} <= {budget['max_auc_drop']:g}"
    return f"p99 |dp| <= {budget.get('max_output_diff'):g}"


def _write_report(result: AutoResult, report_dir, final=None) -> None:
    from lpo.tune.frontier import write_auto_report

    result.report_files = write_auto_report(result, report_dir, final)
