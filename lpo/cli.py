"""The ``lpo`` command line.

Each subcommand is a thin wrapper around the public API in :mod:`lpo`, which is
imported lazily inside the handler so that ``lpo --help`` and argument errors
are fast and never load TensorFlow.

Errors: an :class:`~lpo.errors.LpoError` prints one line ``lpo: error: ...``
and exits with its ``exit_code`` (2 for user errors, 3 for a failed
validation, 4 for a full disk); anything else prints one ``lpo: internal error: ...`` line and
exits 1. ``--debug`` shows the full traceback. Usage errors exit 2.
"""
from __future__ import annotations

import os

# Before anything can import TensorFlow: keep its C++ INFO/WARNING noise out.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Callable, Optional, Sequence  # noqa: E402

from lpo import options as opts  # noqa: E402
from lpo.errors import LpoError, ValidationFailed, closest  # noqa: E402
from lpo.orchestration.airflow_settings import AIRFLOW  # noqa: E402

# --------------------------------------------------------------------------- helpers


def _choice(options: Sequence[str], upper: bool = False) -> Callable[[str], str]:
    """argparse ``type=`` for a case-insensitive choice with a did-you-mean hint."""
    canon = {o.lower(): o for o in options}

    def parse(text: str) -> str:
        key = text.strip().lower().replace("-", "_")
        if key in canon:
            return canon[key]
        hint = closest(text.upper() if upper else text.lower(), list(options), n=1)
        msg = f"invalid choice {text!r} (choose from {', '.join(options)})"
        if hint:
            msg += f"; did you mean {hint[0]}?"
        raise argparse.ArgumentTypeError(msg)

    parse.__name__ = "choice"
    return parse


def _int8_dense(text: str) -> str:
    try:
        return opts.normalize_int8_dense(text)
    except LpoError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _threshold(text: str) -> Optional[float]:
    try:
        return opts.optional_threshold(text)
    except LpoError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        return opts.normalize_batch_sizes(text)
    except LpoError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _columns(text: str) -> list[str]:
    cols = [c.strip() for c in text.split(",") if c.strip()]
    if not cols:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return cols


def _mapping(text: str) -> tuple[str, str]:
    col, sep, name = text.partition("=")
    if not sep or not col.strip() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected COLUMN=INPUT, got {text!r}")
    return col.strip(), name.strip()


def _to_dict(result: Any) -> Any:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    return result


def _emit(result: Any, as_json: bool) -> None:
    """Print a result: JSON, its ``summary()``, or its scalar fields."""
    if result is None:
        return
    if as_json:
        print(json.dumps(_to_dict(result), indent=2, sort_keys=False, default=str))
        return
    summary = getattr(result, "summary", None)
    if callable(summary):
        text = summary()
        if text:
            print(text)
        return
    data = _to_dict(result)
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                print(f"{key}: {value}")
    else:
        print(data)


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    try:
        return "x".join("?" if d is None or d == -1 else str(d) for d in shape) or "scalar"
    except TypeError:
        return str(shape)


def _import_lpo():
    import lpo  # noqa: PLC0415 - lazy on purpose

    return lpo


# --------------------------------------------------------------------------- handlers


def cmd_inspect(args: argparse.Namespace) -> int:
    """``lpo inspect``: list the optimizable nodes of a SavedModel."""
    lpo = _import_lpo()
    result = lpo.inspect_model(args.model, tags=args.tags)
    if args.json:
        _emit(result, True)
        return 0
    rows = [(c.kind, c.name, _fmt_shape(c.shape), str(c.dtype), int(c.nbytes))
            for c in result.candidates]
    header = ("KIND", "NAME", "SHAPE", "DTYPE", "BYTES")
    widths = [max([len(header[i])] + [len(str(r[i])) for r in rows]) for i in range(5)]
    print("  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        print("  ".join(str(v).ljust(w) if i < 4 else str(v).rjust(w)
                        for i, (v, w) in enumerate(zip(r, widths))))
    total = sum(r[4] for r in rows)
    print(f"{len(rows)} candidate(s), {total} bytes")
    if getattr(result, "optimized", None):
        _print_optimized(result.optimized)
    return 0


def _print_optimized(info: dict) -> None:
    """The manifest of an optimized model: target CPU, requirements, dense forms, and this machine."""
    tgt, req, here = info.get("target") or {}, info.get("requires") or {}, info.get("here") or {}
    print(f"optimized by lpo: {info.get('data_type')}; dense forms: "
          + (", ".join(f"{k} x{v}" for k, v in (info.get("forms") or {}).items()) or "none"))
    if tgt:
        print(f"target: {tgt.get('name')} (oneDNN {'on' if tgt.get('onednn') else 'off'}; "
              f"{' '.join(tgt.get('cpu_features') or []) or 'no listed features'})")
    if req:
        onednn = "yes (TF_ENABLE_ONEDNN_OPTS=1 where it is off by default)" if req.get("onednn") else "no"
        print(f"requires: oneDNN {onednn}; CPU features {', '.join(req.get('cpu_features') or []) or 'none'}")
    else:
        print("requires: nothing special (runs on any CPU and TensorFlow build)")
    for name, line in (info.get("groups") or {}).items():
        print(f"group {name}: {line}")
    for p in here.get("problems") or []:
        print(f"here: {p}")


def cmd_optimize(args: argparse.Namespace) -> int:
    """``lpo optimize``: write a low-precision copy of a SavedModel."""
    opt_config = opts.load_opt_config(args.config) if args.config else None
    if args.data_type != opts.AUTO and (args.eval is not None or args.report_dir is not None
                                        or args.save_config is not None):
        from lpo.errors import ConfigError

        raise ConfigError("--eval, --report-dir and --save-config are for --data-type auto")
    from lpo.orchestration.steps import optimize_step

    result = optimize_step(
        args.model, args.out, opt_config=opt_config, data_type=args.data_type,
        calib_file=args.calib, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
        tags=args.tags, embedding_scheme=args.embedding_scheme, dense_mode=args.dense_mode,
        int8_dense=args.int8_dense, calib_method=args.calib_method, target=args.target, quiet=args.quiet,
        eval_file=args.eval, max_auc_drop=args.max_auc_drop, report_dir=args.report_dir,
        max_output_diff=args.max_output_diff, label_key=args.label_key, margin_sigmas=args.margin_sigmas,
        harm=getattr(args, "harm", None), unlabeled_file=getattr(args, "unlabeled_file", None),
        tune_fraction=args.tune_fraction, seed=args.seed, max_evals=args.max_evals,
        time_budget_s=args.time_budget, max_builds=args.max_builds, config_out=args.save_config,
        folds=args.folds, group_tables=args.group_tables, as_dict=False)
    if getattr(result, "auto", None) and not args.json:
        a = result.auto
        print(json.dumps(a["chosen"]["config"], indent=1, sort_keys=True))
        conf = a["confirm"]
        what = {"auc": "|dAUC|", "soft_auc": "|dsoftAUC|"}.get(a["budget"]["metric"], "p99 |dp|")
        print(f"AUTO: size {result.size_ratio:.3f}x of FP32 variables; {what} {a['tune']['loss']:.3g} on "
              f"{a['rows']['tune']} tuning rows, {conf['loss']:.3g} on {a['rows']['confirm']} rows it never saw "
              f"(budget {a['budget'].get('max_auc_drop', a['budget'].get('max_output_diff')):g}); "
              f"{len(a['trials'])} configurations in {a['seconds']:.1f} s")
        for path in a["config_files"]:
            print(f"opt_config written to {path} (reuse it with --config)")
        for name in ("html",):
            if a["report_files"].get(name):
                print(f"report: {a['report_files'][name]}")
    _emit(result, args.json)
    return 0


def cmd_convert_ckpt(args: argparse.Namespace) -> int:
    """``lpo convert-ckpt``: convert an FP32 checkpoint for an optimized model."""
    from lpo.orchestration.steps import convert_step

    result = convert_step(args.ckpt_prefix, args.save_prefix, args.opt_model, shard=args.shard,
                          num_shards=args.num_shards, overwrite=args.overwrite, quiet=args.quiet, as_dict=False)
    _emit(result, args.json)
    return 0


def cmd_merge_ckpt(args: argparse.Namespace) -> int:
    """``lpo merge-ckpt``: merge the shard checkpoints of a sharded convert-ckpt."""
    lpo = _import_lpo()
    result = lpo.merge_ckpt(args.shard_prefixes, args.save_prefix, overwrite=args.overwrite)
    _emit(result, args.json)
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """``lpo refresh``: rebuild an optimized model with a new FP32 checkpoint."""
    lpo = _import_lpo()
    result = lpo.refresh(args.opt_model, args.new_ckpt, args.out, overwrite=args.overwrite,
                         quiet=args.quiet)
    _emit(result, args.json)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``lpo calibrate``: sample calibration rows from a data source."""
    from lpo.orchestration.steps import calibrate_step

    result = calibrate_step(args.source, args.out, args.model, num_rows=args.rows, seed=args.seed,
                            data_format=args.format, columns=args.columns, mapping=args.map,
                            legacy_npy=args.legacy_npy, overwrite=args.overwrite, as_dict=False)
    _emit(result, args.json)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``lpo validate``: compare an optimized model with its original."""
    from lpo.orchestration.steps import validate_step

    try:
        report = validate_step(
            args.original, args.optimized, args.data, max_auc_drop=args.max_auc_drop,
            max_abs_diff=args.max_abs_diff, max_latency_ratio=args.max_latency_ratio,
            min_size_reduction=args.min_size_reduction, report_dir=args.report_dir,
            batch_sizes=args.batch_sizes, iters=args.iters,
            warmup=args.warmup, max_rows=args.max_rows, raise_on_fail=True, as_dict=False)
    except ValidationFailed as e:
        if e.report is not None:
            _emit(e.report, args.json)
        raise
    _emit(report, args.json)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """``lpo profile``: nodes per run and time per op type of a model (and of another to compare)."""
    lpo = _import_lpo()
    _emit(lpo.profile(args.model, args.compare, batch_size=args.batch, runs=args.runs, data=args.data, top=args.top,
                      threads=args.threads, tags=args.tags, signature=args.signature), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``lpo demo``: build the sample model, optimize, validate and report."""
    from lpo.samples import demo  # noqa: PLC0415

    result = demo.run_demo(out=args.out, keep=args.keep, quiet=args.quiet,
                           pipeline=None if args.pipeline == "none" else args.pipeline,
                           verbose=bool(args.verbose or args.debug))
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    _emit(result, getattr(args, "json", False))
    return 0


def cmd_samples_model(args: argparse.Namespace) -> int:
    """``lpo samples model``: write the sample FP32 SavedModel (and its data)."""
    from lpo.samples.files import write_sample  # noqa: PLC0415

    _emit(write_sample(args.out, args.data, variant=args.variant, overwrite=args.overwrite, arch=args.arch), args.json)
    return 0


def cmd_samples_checkpoint(args: argparse.Namespace) -> int:
    """``lpo samples checkpoint``: write a perturbed "retrained" checkpoint of a model."""
    from lpo.samples.files import write_checkpoint  # noqa: PLC0415

    _emit(write_checkpoint(args.model, args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite),
          args.json)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """``lpo publish``: copy a model into a serving directory atomically."""
    from lpo.orchestration import publish_model, run_key  # noqa: PLC0415

    out = publish_model(args.model, args.serving_dir, args.version or run_key(), layout=args.layout)
    if args.json:
        _emit(out, True)
    else:
        print(f"published {out['published']}" + (f" (current -> versions/{out['version']})" if out["current"] else "")
              + (" (unchanged)" if out["unchanged"] else ""))
    return 0


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_FORMATTER = argparse.RawDescriptionHelpFormatter


def _global_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("global options")
    g.add_argument("--debug", action="store_true", default=d(False),
                   help="show full tracebacks and debug logs")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False),
                   help="only warnings and errors; no progress bars")
    g.add_argument("-v", "--verbose", action="count", default=d(0),
                   help="more log output (-v: debug logs)")


def _add_choice(p: argparse.ArgumentParser, flag: str, options: Sequence[str], default: Optional[str], help_: str,
                upper: bool = False) -> None:
    """Add a case-insensitive choice option (``help_`` may use ``%(default)s``)."""
    p.add_argument(flag, type=_choice(options, upper=upper), default=default,
                   metavar="{" + ",".join(options) + "}", help=help_)


def _add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="SavedModel directory")
    p.add_argument("--tags", type=_tags, default=list(opts.DEFAULT_TAGS),
                   help="MetaGraph tags, comma-separated (default: serve)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="FP32 SavedModel directory (read only)")
    p.add_argument("out", metavar="OUT", help="output SavedModel directory")
    _add_choice(p, "--data-type", opts.DATA_TYPES + (opts.AUTO,), opts.OPTIMIZE.data_type,
                "target precision, case-insensitive; INT4: INT4 embedding tables with INT8 dense layers; FP32: "
                "every table and layer kept float32, only the exact structural passes (e.g. a constant interaction "
                "mask folded); AUTO "
                "searches per-node forms for the smallest model within --max-auc-drop on --eval rows "
                "(default: %(default)s)", upper=True)
    p.add_argument("--config", metavar="OPT_JSON",
                   help='JSON object mapping node names to data types, e.g. {"emb/C1": "INT8"}; a table '
                        'may name its scheme: "INT8:per_row", "INT4:per_dim"')
    p.add_argument("--calib", metavar="FILE",
                   help="calibration data (.npz; a legacy pickled .npy needs --allow-pickle); "
                        "required for INT8 dense layers in static mode")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading a legacy pickled .npy calibration file (runs pickle: "
                        "only for files you trust)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--tags", type=_tags, default=None, help="MetaGraph tags, comma-separated "
                   "(default: serve)")
    _add_choice(p, "--embedding-scheme", opts.EMBEDDING_SCHEMES, opts.OPTIMIZE.embedding_scheme,
                "INT8 embedding scale granularity (default: %(default)s; INT4 tables are per_row "
                "where that is smaller than INT8 per_dim)")
    _add_choice(p, "--dense-mode", opts.DENSE_MODES, opts.OPTIMIZE.dense_mode,
                "BF16/FP16 dense layers: auto (16-bit arithmetic where the target CPU runs it faster "
                "than float32: AMX, AMD Zen 4; else weight only), weight_only (16-bit weights, float32 "
                "MatMul) or compute (16-bit MatMul) (default: %(default)s)")
    p.add_argument("--int8-dense", type=_int8_dense, default=opts.OPTIMIZE.int8_dense,
                   metavar="{" + ",".join(opts.INT8_DENSE_MODES) + "}",
                   help="INT8 dense form: auto (real int8 kernels on oneDNN targets for layers big enough "
                        "to pay, else as before), compute (int8 kernels; the model then needs oneDNN), "
                        "simulate (calibrated 8-bit numerics with float kernels that run everywhere; "
                        "old name: static) or weight_only (int8 weights, float activations, no --calib) "
                        "(default: %(default)s)")
    _add_choice(p, "--target", opts.TARGET_NAMES, opts.OPTIMIZE.target,
                "the CPU the model will serve on: host (this machine and its oneDNN setting) or a "
                "preset; it decides what 'auto' means and is recorded with the model's "
                "requirements (default: %(default)s)")
    _add_choice(p, "--calib-method", opts.CALIB_METHODS, opts.OPTIMIZE.calib_method,
                "activation range method for calibrated INT8 (default: %(default)s)")
    p.add_argument("--no-folds", dest="folds", action="store_false", default=opts.OPTIMIZE.folds,
                   help="keep the graph's structure: skip the exact rewrites run before the precision passes "
                        "(a constant interaction mask folded into static gather indices; a feature column fed one "
                        "value per row looks its row up without the SparseTensor plumbing)")
    p.add_argument("--group-tables", action=argparse.BooleanOptionalAction, default=opts.OPTIMIZE.group_tables,
                   help="concatenate the tables of one dim and form read by single-value lookups into one "
                        "variable, read by one gather (off by default: it does not compose with INT4 offsets and "
                        "AUTO yet)")
    a = p.add_argument_group("AUTO (--data-type auto)",
                             "Search each node's form (INT4/INT8/16-bit/FP32) for the smallest, then fastest, "
                             "model whose |dAUC| vs FP32 on --eval rows stays within --max-auc-drop. --config pins "
                             "nodes. The chosen opt_config is printed, stored in OUT and reusable with --config.")
    a.add_argument("--eval", metavar="FILE", help=".npz of serving inputs and a 0/1 label array (like `lpo "
                   "validate`'s data); part of it tunes, the rest confirms")
    a.add_argument("--max-auc-drop", type=_float, default=opts.AUTO_OPTIONS.max_auc_drop, metavar="X",
                   help="AUTO's budget: largest |AUC - AUC(FP32)| on --eval rows (default: %(default)g; not the "
                        "`lpo validate` gate)")
    a.add_argument("--margin-sigmas", type=_float, default=None, metavar="Z",
                   help="the search needs |dAUC| + Z standard errors within the budget on the tuning rows "
                        f"(default: {opts.AUTO_OPTIONS.margin_sigmas:g})")
    a.add_argument("--harm", choices=opts.AUTO_HARMS, default=None,
                   help="what the search bounds: soft_auc (expected dAUC with FP32's probabilities as labels, on "
                        "unlabelled rows: no label noise) or auc (labelled dAUC of the tuning rows) (default: "
                        f"{opts.AUTO_OPTIONS.harm})")
    a.add_argument("--unlabeled-file", metavar="FILE", default=None,
                   help=".npz of more serving inputs (no label needed) for the soft_auc estimate")
    a.add_argument("--max-output-diff", type=_float, default=None, metavar="X",
                   help="budget used when --eval has no label: p99 |prediction - FP32 prediction| "
                        f"(default: {opts.AUTO_OPTIONS.max_output_diff:g})")
    a.add_argument("--label-key", default=None, metavar="NAME",
                   help=f"label array of --eval (default: {opts.AUTO_OPTIONS.label_key})")
    a.add_argument("--tune-fraction", type=_float, default=None, metavar="F",
                   help=f"fraction of --eval rows the search sees (default: {opts.AUTO_OPTIONS.tune_fraction:g})")
    a.add_argument("--seed", type=int, default=None, help=f"row split seed (default: {opts.AUTO_OPTIONS.seed})")
    a.add_argument("--max-evals", type=_positive_int, default=None, metavar="N",
                   help=f"most configurations evaluated (default: {opts.AUTO_OPTIONS.max_evals})")
    a.add_argument("--time-budget", type=_float, default=None, metavar="SECONDS",
                   help="stop the search after this many seconds (default: no limit)")
    a.add_argument("--max-builds", type=int, default=None, metavar="N",
                   help=f"most real builds in the speed phase (default: {opts.AUTO_OPTIONS.max_builds})")
    a.add_argument("--report-dir", metavar="DIR",
                   help="write the AUTO report (every configuration tried: size, dAUC, latency) as HTML/Markdown/JSON")
    a.add_argument("--save-config", metavar="OPT_JSON", help="also write the chosen opt_config JSON here")
    _add_json(p)


def _convert_ckpt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt_prefix", metavar="CKPT_PREFIX", help="FP32 checkpoint prefix")
    p.add_argument("save_prefix", metavar="SAVE_PREFIX", help="output checkpoint prefix")
    p.add_argument("opt_model", metavar="OPT_MODEL", help="optimized SavedModel (has the plan)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing SAVE_PREFIX")
    p.add_argument("--shard", type=int, default=None, metavar="I",
                   help="convert only shard I (0-based) of --num-shards: a deterministic, size-balanced "
                        "share of the tensors, merged afterwards with `lpo merge-ckpt`")
    p.add_argument("--num-shards", type=int, default=None, metavar="N", help="number of shards (with --shard)")
    _add_json(p)


def _merge_ckpt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("save_prefix", metavar="SAVE_PREFIX", help="output checkpoint prefix")
    p.add_argument("shard_prefixes", metavar="SHARD_PREFIX", nargs="+",
                   help="the shard checkpoints written by `lpo convert-ckpt --shard I --num-shards N`, all of them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing SAVE_PREFIX")
    _add_json(p)


def _refresh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("opt_model", metavar="OPT_MODEL", help="optimized SavedModel")
    p.add_argument("new_ckpt", metavar="NEW_CKPT", help="new FP32 checkpoint prefix (or one merge-ckpt wrote: "
                   "already converted, taken as it is)")
    p.add_argument("out", metavar="OUT", help="output SavedModel directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    _add_json(p)


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="data file (or glob)")
    p.add_argument("out", metavar="OUT", help="output calibration file (.npz)")
    p.add_argument("--model", required=True, help="SavedModel whose serving inputs to match")
    p.add_argument("--rows", type=_positive_int, default=opts.CALIBRATE.num_rows,
                   help="rows to sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: library's)")
    _add_choice(p, "--format", opts.DATA_FORMATS, None, "data format (default: from the file extension)")
    p.add_argument("--columns", type=_columns, default=None,
                   help="column names for headerless CSV/TSV, comma-separated")
    p.add_argument("--map", type=_mapping, action="append", default=[], metavar="COL=INPUT",
                   help="map a data column to a serving input name (repeatable)")
    p.add_argument("--legacy-npy", action="store_true",
                   help="also write the legacy pickled .npy list-of-feed-dicts format")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_json(p)


_THRESHOLD_HELP = {
    "max_auc_drop": "largest allowed AUC drop, absolute, when DATA has labels",
    "max_abs_diff": "largest allowed absolute difference of predictions",
    "max_latency_ratio": "largest allowed optimized/original p50 latency ratio at the largest batch",
    "min_size_reduction": "smallest required size reduction as a fraction, 0.5 = half the size",
}


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("original", metavar="ORIGINAL", help="FP32 SavedModel")
    p.add_argument("optimized", metavar="OPTIMIZED", help="optimized SavedModel")
    p.add_argument("data", metavar="DATA",
                   help="held-out data: .npz with one array per serving input (+ 'label')")
    p.add_argument("--report-dir", default=None, help="write report.md/report.html/report.json here")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=opts.VALIDATE.batch_sizes, metavar="B,B,..",
                   help="batch sizes for latency (default: "
                        f"{','.join(str(b) for b in opts.VALIDATE.batch_sizes)})")
    p.add_argument("--iters", type=_positive_int, default=opts.VALIDATE.iters,
                   help="timed runs per model and batch size (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=opts.VALIDATE.warmup, help="untimed runs first (default: %(default)s)")
    p.add_argument("--max-rows", type=int, default=None, help="use at most this many rows of DATA for accuracy")
    for name in opts.Thresholds.names():
        default = getattr(opts.THRESHOLDS, name)
        shown = "not checked" if default is None else "%(default)s"
        p.add_argument("--" + name.replace("_", "-"), type=_threshold, default=default, metavar="X",
                       help=f"{_THRESHOLD_HELP[name]}; negative: not checked (default: {shown})")
    _add_json(p, "the report")


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="SavedModel directory")
    p.add_argument("--compare", metavar="OTHER", default=None,
                   help="a second SavedModel with the same inputs (e.g. MODEL optimized), profiled interleaved")
    p.add_argument("--batch", type=_positive_int, default=opts.PROFILE.batch_size, metavar="N",
                   help="rows per run (default: %(default)s)")
    p.add_argument("--runs", type=_positive_int, default=opts.PROFILE.runs,
                   help="FULL_TRACE runs per model (default: %(default)s)")
    p.add_argument("--data", metavar="NPZ", default=None,
                   help="serving inputs (.npz, e.g. calibration or held-out data); default: synthetic inputs")
    p.add_argument("--top", type=_positive_int, default=opts.PROFILE.top,
                   help="op types in the table (default: %(default)s)")
    p.add_argument("--threads", type=int, default=opts.PROFILE.threads,
                   help="intra-op threads, 0: TensorFlow's default (default: %(default)s)")
    p.add_argument("--signature", default=opts.DEFAULT_SIGNATURE, help="signature to run (default: %(default)s)")
    p.add_argument("--tags", type=_tags, default=None, help="MetaGraph tags, comma-separated (default: serve)")
    _add_json(p, "the profile")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output directory for the optimized models and HTML reports "
                   "(default: a new directory under the system temp dir, printed at the end)")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pipeline", choices=("none", "kfp"), default="none",
                   help="also run the KFP optimize and refresh pipelines locally (kfp.local)")
    _add_json(p)


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="SavedModel directory to publish")
    p.add_argument("serving_dir", metavar="SERVING_DIR", help="serving directory")
    p.add_argument("--version", default="", help="version name (default: now, as YYYYMMDDHHMMSS UTC)")
    _add_choice(p, "--layout", opts.PUBLISH_LAYOUTS, AIRFLOW.layout, "serving layout (default: %(default)s)")
    _add_json(p)


def _sample_archs():
    from lpo.samples.tf1 import ARCHS  # noqa: PLC0415

    return ARCHS


def _samples_args(p: argparse.ArgumentParser) -> None:
    samples = p.add_subparsers(dest="samples_command", metavar="SAMPLE", parser_class=_Parser)
    samples.required = True
    q = samples.add_parser("model", help="write the sample FP32 SavedModel (built once, ~30 s, then cached)",
                           description="Write the bundled sample recommendation model (a DLRM-like TF1 "
                                       "SavedModel) to OUT; with --data DIR also DIR/calibration.csv and "
                                       "DIR/heldout.npz.", formatter_class=_FORMATTER)
    _global_flags(q, suppress=True)
    q.set_defaults(func=cmd_samples_model)
    q.add_argument("out", metavar="OUT", help="output SavedModel directory")
    q.add_argument("--data", metavar="DIR", default=None,
                   help="also write calibration.csv and heldout.npz into DIR")
    q.add_argument("--variant", choices=("resource", "ref", "partitioned"), default="resource",
                   help="embedding variable kind (default: %(default)s)")
    q.add_argument("--arch", choices=tuple(_sample_archs()), default="small",
                   help="model: small (DLRM-like), mlperf (MLPerf DLRM's MLP widths) or dot (DeepRec modelzoo's "
                        "DLRM with the dot interaction) (default: %(default)s)")
    q.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_json(q)
    q = samples.add_parser("checkpoint", help='write a perturbed "retrained" checkpoint of a model',
                           description="Write OUT (a V2 checkpoint prefix): MODEL's variables, each float "
                                       "tensor moved by SCALE x its RMS x N(0,1) noise, like a new training "
                                       "checkpoint. Use it with lpo refresh or the refresh pipelines.",
                           formatter_class=_FORMATTER)
    _global_flags(q, suppress=True)
    q.set_defaults(func=cmd_samples_checkpoint)
    q.add_argument("model", metavar="MODEL", help="FP32 SavedModel directory (or checkpoint prefix)")
    q.add_argument("out", metavar="OUT", help="output checkpoint prefix, e.g. ckpts/run1/model.ckpt-100")
    q.add_argument("--seed", type=int, default=1, help="noise seed (default: %(default)s)")
    q.add_argument("--scale", type=_float, default=0.01, help="noise size relative to each tensor's RMS "
                   "(default: %(default)s)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    _add_json(q)


#: (name, handler, one-line help, description, argument builder) of each subcommand, in --help order
_COMMANDS = (
    ("inspect", cmd_inspect, "list the embedding tables and dense layers lpo can optimize", "", _inspect_args),
    ("optimize", cmd_optimize, "write a BF16/FP16/INT8 copy of a SavedModel",
     "Write a low-precision copy of MODEL to OUT. MODEL is never modified; OUT must "
     "not exist or be empty unless --overwrite is given, and is written atomically.", _optimize_args),
    ("convert-ckpt", cmd_convert_ckpt, "convert a new FP32 checkpoint for an already optimized model",
     "Replay the optimized model's plan on a new FP32 checkpoint (CKPT_PREFIX) and write "
     "the converted checkpoint to SAVE_PREFIX (its directory is created if missing). With "
     "--shard I --num-shards N, convert only shard I's share, to be merged by merge-ckpt.", _convert_ckpt_args),
    ("merge-ckpt", cmd_merge_ckpt, "merge the shards of a sharded convert-ckpt into one checkpoint",
     "Check that SHARD_PREFIX... are every shard of one sharded convert-ckpt run and merge them "
     "into SAVE_PREFIX (equal to the unsharded conversion; refresh takes it as NEW_CKPT). The "
     "shards are left as they are.", _merge_ckpt_args),
    ("refresh", cmd_refresh, "rebuild an optimized model with a new FP32 checkpoint",
     "Write OUT: a copy of OPT_MODEL whose variables come from NEW_CKPT, converted "
     "exactly as a fresh optimization would.", _refresh_args),
    ("calibrate", cmd_calibrate, "sample a calibration .npz from CSV/TSV/TFRecord/npz data",
     "Reservoir-sample N rows from SOURCE and write them to OUT as one array per "
     "serving input of --model.", _calibrate_args),
    ("validate", cmd_validate, "compare an optimized model with its original",
     "Run ORIGINAL and OPTIMIZED on DATA and check accuracy, latency and size. Exits 3 "
     "if a threshold is breached. WARNING: a SavedModel is a program; validating an "
     "untrusted SavedModel executes its graph.", _validate_args),
    ("profile", cmd_profile, "show nodes per run and time per op type (before/after with --compare)",
     "Run MODEL's signature with FULL_TRACE on one batch and print the nodes executed per run, the op "
     "time and latency, and the top op types by time; with --compare OTHER, both side by side "
     "(runs interleaved). WARNING: a SavedModel is a program; profiling one executes its graph.", _profile_args),
    ("demo", cmd_demo, "build the sample model, optimize it, validate it and report",
     "End-to-end demo on the bundled sample recommendation model. Prints one line per step and "
     "a summary table; lpo's detailed log and the KFP executor output go to OUT/demo.log and "
     "OUT/kfp.log (-v: to the console instead).", _demo_args),
    ("publish", cmd_publish, "copy a validated model into a serving directory atomically",
     "Copy MODEL to SERVING_DIR/versions/VERSION and switch the SERVING_DIR/current symlink "
     "(layout current), or to SERVING_DIR/VERSION (layout tf_serving, numeric versions). The copy "
     "is fsynced before it becomes visible; a reader sees the old model or the new one, never neither.",
     _publish_args),
    ("samples", None, "write the sample model, its data, or a retrained checkpoint to try lpo",
     "Sample inputs for trying lpo and its pipelines without writing Python.", _samples_args),
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``lpo`` argument parser (all subcommands)."""
    parser = _Parser(
        prog="lpo", formatter_class=_FORMATTER,
        description="Low-precision optimizer for TensorFlow recommendation SavedModels: "
                    "stores (and where it pays, computes) embedding tables and dense layers "
                    "in BF16, FP16 or INT8 (embedding tables also INT4).",
        epilog="Exit status: 0 ok, 1 internal error, 2 user error, 3 validation failed, "
               "4 not enough disk space for an output.")
    parser.add_argument("--version", action="version", version=f"lpo {_version()}")
    _global_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, func, help_, description, add_args in _COMMANDS:
        p = sub.add_parser(name, help=help_, description=description or help_, formatter_class=_FORMATTER)
        _global_flags(p, suppress=True)
        p.set_defaults(func=func)
        add_args(p)
    return parser


def _version() -> str:
    from lpo import __version__  # noqa: PLC0415

    return __version__


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``lpo`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from lpo.log import configure_logging, filter_native_stderr  # noqa: PLC0415

    level = logging.DEBUG if (args.debug or args.verbose) else logging.INFO
    configure_logging(level, quiet=args.quiet)
    # TF's native start-up noise is dropped unless debugging.
    native = contextlib.nullcontext() if args.debug else filter_native_stderr()
    try:
        with native:
            return int(args.func(args) or 0)
    except LpoError as e:
        if args.debug:
            traceback.print_exc()
        print(f"lpo: error: {_one_line(e) or type(e).__name__}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("lpo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"lpo: internal error: {type(e).__name__}: {_one_line(e)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
