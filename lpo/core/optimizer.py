"""``optimize()``, ``inspect_model()``, ``convert_ckpt()`` and ``refresh()``.

optimize = find candidates -> plan -> (INT8 dense) calibrate -> rewrite graph ->
rebuild saver -> convert the model's own checkpoint through the plan -> write
atomically. convert_ckpt/refresh replay the checkpoint half from the manifest.
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
from dataclasses import asdict, dataclass, field

from lpo import __version__
from lpo.errors import CalibrationError, CheckpointError, ConfigError, LpoError, closest
from lpo import options as opts
from lpo.fsutil import dir_bytes
from lpo.core.plan import MANIFEST_DIR, MANIFEST_NAME, Conversion, Plan, read_manifest
from lpo.core.savedmodel import (
    SAVED_MODEL_PB, VarSpec, check_servable, check_variables, copy_model_files, is_tf2, read_saved_model,
    rebuild_saver, select_meta_graph, variable_specs, variables_prefix, write_saved_model,
)

log = logging.getLogger(__name__)

ERROR_SAMPLE_BATCHES = 4
#: the ``dtype`` of a NodeReport of an exact structural rewrite
STRUCTURAL = "structural"
WARN_REL_RMSE = 0.05


@dataclass
class Candidate:
    """An optimizable node as ``lpo inspect`` lists it (its name is the opt_config key)."""

    kind: str
    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    detail: str = ""

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass
class InspectResult:
    """The optimizable nodes of a SavedModel."""

    model_path: str
    candidates: list[Candidate] = field(default_factory=list)
    #: for a model written by lpo: its data type, target CPU, ``requires`` and dense forms (manifest)
    optimized: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        d = {"model_path": self.model_path, "candidates": [c.to_dict() for c in self.candidates]}
        if self.optimized:
            d["optimized"] = self.optimized
        return d


@dataclass
class NodeReport:
    """One optimized node."""

    kind: str
    node: str
    dtype: str
    #: a grouped table: its group (lpo/passes/grouping.py)
    group: str = ""

    def line(self) -> str:
        """The seed's report line, e.g. ``Optimize embedding to INT8: emb`` (a structural pass's own line,
        e.g. ``Fold interaction mask (exact): node``)."""
        from lpo import passes

        if self.dtype == STRUCTURAL:
            return passes.structural()[self.kind].line(self.node)
        return f"Optimize {passes.get(self.kind).label} to {self.dtype}: {self.node}" + (
            f" (in {self.group})" if self.group else "")


@dataclass
class OptimizeResult:
    """What optimize() wrote."""

    save_path: str
    data_type: str
    optimized: list[NodeReport]
    variables_bytes_before: int
    variables_bytes_after: int
    total_bytes_before: int
    total_bytes_after: int
    kept_fp32: list[str] = field(default_factory=list)
    requires: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    #: how many dense layers got each form, e.g. ``{"INT8 compute": 2, "INT8 weight_only": 1}``
    forms: dict = field(default_factory=dict)
    #: data_type='AUTO' only: the search's result (lpo.tune.AutoResult.to_dict())
    auto: dict | None = None
    #: the nodes the exact structural passes rewrote (e.g. fused single-value lookups), before ``optimized``
    fused: list[NodeReport] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        """Variables bytes after / before."""
        return self.variables_bytes_after / max(1, self.variables_bytes_before)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        d = asdict(self)
        d["optimized"] = [asdict(n) for n in self.optimized]
        d["fused"] = [asdict(n) for n in self.fused]
        d["size_ratio"] = self.size_ratio
        return d


@dataclass
class ConvertResult:
    """What convert_ckpt() wrote."""

    save_prefix: str
    tensors_converted: int
    tensors_copied: int
    bytes_read: int
    bytes_written: int
    shard: int | None = None  # a sharded run: which shard of num_shards
    num_shards: int | None = None
    skipped: bool = False  # the shard was already converted (a re-run finds it complete)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass
class MergeResult:
    """What merge_ckpt() wrote."""

    save_prefix: str
    num_shards: int
    tensors: int
    files_linked: int
    files_copied: int
    source_bytes: int

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass
class RefreshResult:
    """What refresh() wrote."""

    save_path: str
    checkpoint: str
    convert: ConvertResult

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {"save_path": self.save_path, "checkpoint": self.checkpoint, "convert": self.convert.to_dict()}


def _load_model(model_path, tags):
    model_path = os.fspath(model_path)
    sm = read_saved_model(model_path)
    mg = select_meta_graph(sm, tags)
    check_servable(mg, model_path)
    check_variables(model_path)
    if is_tf2(mg):  # lowered to a flat TF1-style graph with the tables kept as variables (lpo/core/tf2.py)
        from lpo.core.tf2 import lower_tf2

        sm = lower_tf2(sm, tags, model_path)
        mg = select_meta_graph(sm, tags)
    return sm, mg


def _find(mg, prefix=None) -> list:
    """Return every pass family's candidates in ``mg`` (``prefix``: the model's checkpoint, for EVs)."""
    from lpo import passes
    from lpo.passes.surgery import Surgery

    surgery = Surgery(mg)
    surgery.checkpoint_prefix = prefix  # lets a family read what only the checkpoint knows (EV row counts)
    specs = variable_specs(mg, surgery.index)
    found = []
    for family in passes.names():
        found.extend(passes.get(family).find(surgery, specs))
    return found


def _restructure(sm, enabled: bool) -> dict[str, list]:
    """Run every structural pass on each MetaGraph of ``sm`` (in place); return their entries by pass.

    These rewrites are exact float32 edits (``lpo.passes.registry.structural``), done before
    ``find`` so that the precision passes see, and convert, the rewritten graph. The entries
    of a SavedModel with several MetaGraphs are merged (one per rewritten node).
    """
    from lpo.passes import registry
    from lpo.passes.surgery import Surgery

    done: dict[str, dict] = {}
    if not enabled:
        return {}
    for mg in sm.meta_graphs:
        surgery = Surgery(mg)
        for name, structural_pass in registry.structural().items():
            for entry in structural_pass.rewrite(surgery):
                done.setdefault(name, {}).setdefault(entry["node"], entry)
        mg.CopyFrom(surgery.finish())
    for name, entries in done.items():
        log.info("%s: %d sites rewritten (exact)", name, len(entries))
    return {name: list(entries.values()) for name, entries in done.items()}


def _as_candidate(c) -> Candidate:
    from lpo import passes

    return Candidate(c.kind, c.name, list(c.shape), "float32", c.nbytes, passes.get(c.kind).describe(c))


def inspect_model(model_path, tags=None) -> InspectResult:
    """List the optimizable nodes of a SavedModel (the valid opt_config keys)."""
    _sm, mg = _load_model(model_path, tags)
    found = _find(mg, variables_prefix(os.fspath(model_path)))
    return InspectResult(os.fspath(model_path), [_as_candidate(c) for c in found], _optimized_info(model_path))


def _optimized_info(model_path) -> dict:
    """What the manifest of an lpo-optimized model says about where it runs; {} for other models."""
    from lpo.core.plan import manifest_path

    if not os.path.isfile(manifest_path(os.fspath(model_path))):
        return {}
    try:
        plan = read_manifest(os.fspath(model_path))
    except Exception:  # noqa: BLE001 - a corrupt manifest is reported by the commands that need it
        return {}
    from lpo.target import runtime_report

    from lpo import passes

    return {"data_type": plan.data_type, "target": plan.target, "requires": plan.requires,
            "forms": _forms(plan.conversions), "here": runtime_report(plan.requires),
            "groups": {c.node: passes.get(c.kind).describe(c) for c in plan.conversions if _members(c)}}


def _assign(found, opt_config, data_type) -> dict[str, opts.NodeChoice]:
    """Return each node to optimize with its dtype (and scheme, from ``opt_config``)."""
    if opt_config is None:
        if data_type == opts.KEEP:  # FP32: every node kept, only the exact structural passes apply
            return {}
        from lpo import passes

        return {c.name: opts.NodeChoice(passes.get(c.kind).dtype_for(data_type)) for c in found}
    if not isinstance(opt_config, dict):
        raise ConfigError(
            f"opt_config must be a dict mapping node names to {'/'.join(opts.DATA_TYPES)}, "
            f"got {type(opt_config).__name__}")
    names = [c.name for c in found]
    out = {}
    for key, value in opt_config.items():
        if key not in names:
            near = closest(str(key), names)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise ConfigError(f"opt_config key {key!r} matches no optimizable node{hint}. "
                              "Run `lpo inspect MODEL` for the valid names")
        node = opts.normalize_node_choice(value, f"opt_config[{key!r}]")
        if node.dtype != opts.KEEP:
            out[key] = node
    return out


def _plan_node(cand, node: opts.NodeChoice, options) -> Conversion:
    """Plan one candidate; a variant in its opt_config value must be what the plan uses."""
    from lpo import passes

    conv = passes.get(cand.kind).plan(cand, node.dtype, opts.node_options(options, node))
    if node.variant is not None and node.variant not in (conv.scheme, conv.mode):
        raise ConfigError(f"opt_config[{cand.name!r}] = {str(node)!r}: {node.variant} does not apply to this "
                          f"{cand.kind} node (its {node.dtype} form uses scheme {conv.scheme!r}"
                          f"{f', mode {conv.mode!r}' if conv.mode else ''}); drop the variant or pick one of "
                          f"this node's kind")
    return conv


def _calibrate(model_path, tags, convs: list[Conversion], calib_file, *, allow_pickle, batch_size, method,
               max_batches, compact=None, weights=None,
               dequantize_at_load=opts.OPTIMIZE.dequantize_at_load) -> None:
    """Fill ``activation_range`` of static INT8 dense conversions from calibration data.

    ``compact`` = ``(original model path, SavedModel, MetaGraph, tables)``: run the model
    without loading its tables (lpo.core.calibrate.CompactRunner: memory follows the
    calibration data and the largest table); without it, or when the graph does not allow
    it, the whole model is loaded. ``weights(conversion)``: the layer's float32 weight, to
    measure its output error (``calib_error['output_rel_rmse']``).
    """
    from lpo.data.calibration import load_calibration
    from lpo.core.calibrate import gate_activations, layer_output_error
    from lpo.numerics.observers import activation_error, make_observer
    from lpo.validation.runner import SignatureRunner
    from lpo.core.signature import load_signature_specs

    specs = load_signature_specs(model_path, tags=opts.normalize_tags(tags))
    batches = load_calibration(calib_file, specs, batch_size=batch_size, allow_pickle=allow_pickle,
                               max_batches=max_batches)
    observers = [make_observer(method) for _ in convs]
    tensors = [c.targets["activation"] for c in convs]
    tensors = [t if ":" in t else t + ":0" for t in tensors]
    kept = [[] for _ in convs]  # the first few batches, to report each layer's quantization error

    def observe(values_per_batch):
        for i, values in enumerate(values_per_batch):
            for obs, keep, value in zip(observers, kept, values):
                obs.update(value)
                if i < ERROR_SAMPLE_BATCHES:
                    keep.append(value)

    runner = None
    if compact is not None and compact[3]:
        from lpo.core.calibrate import CompactRunner

        src, sm, mg, tables = compact
        try:
            runner = CompactRunner(src, sm, mg, tables, batches, tags=opts.normalize_tags(tags))
        except (ValueError, KeyError, LpoError) as e:  # a graph shape it does not handle: load everything
            log.warning("Calibrating with the whole model loaded (%s)", e)
    if runner is not None:
        with runner:
            observe(runner.fetch(tensors))
    else:
        with SignatureRunner(model_path, tags=opts.normalize_tags(tags)) as full:
            observe(full.fetch(batch, tensors) for batch in batches)
    log.info("Calibrated %d dense layers on %d batches (%s)", len(convs), len(batches), method)
    for c, obs, keep in zip(convs, observers, kept):
        lo, hi = obs.range()
        c.activation_range = [float(lo), float(hi)]
        c.calib_method = method
        x = np.concatenate([k.reshape(-1) for k in keep])
        c.calib_error = activation_error(x, lo, hi)
        if weights is not None:
            c.calib_error["output_rel_rmse"] = layer_output_error(c, x, weights(c), lo, hi)
        log.info("  %s: input range [%.4g, %.4g], %.3f%% clipped, relative RMS error %.2f%% (input), %s (output)",
                 c.node, lo, hi, 100 * c.calib_error["clipped"], 100 * c.calib_error["rel_rmse"],
                 "%.2f%%" % (100 * c.calib_error["output_rel_rmse"]) if "output_rel_rmse" in c.calib_error else "-")
    gate_activations(convs, dequantize_at_load)


def _requirements(convs) -> list[tuple[str, str]]:
    """The ``(dtype, mode)`` each conversion's family says it needs of the serving CPU."""
    from lpo import passes

    return [r for r in (passes.get(c.kind).requirement(c) for c in convs) if r is not None]


def _forms(convs) -> dict:
    out: dict = {}
    for dtype, mode in _requirements(convs):
        key = f"{dtype} {mode}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _log_forms(convs, tgt) -> None:
    forms = _forms(convs)
    if forms:
        log.info("Target %s: dense layers %s", tgt.describe(), ", ".join(f"{k} x{v}" for k, v in forms.items()))


def _check_output(save_path, model_path, overwrite):
    from lpo.fsutil import check_not_inside, check_parent_writable

    check_not_inside(save_path, model_path)
    check_parent_writable(save_path)
    if not overwrite and os.path.isdir(save_path) and os.listdir(save_path):
        from lpo.errors import OutputExistsError

        raise OutputExistsError(f"output {save_path} exists and is not empty; pass overwrite=True "
                                "(CLI --overwrite) to replace it, or choose another path")
    if os.path.exists(save_path) and not os.path.isdir(save_path):
        raise ConfigError(f"output {save_path} is a file; pass a directory path for the SavedModel")


def _rewrite_all(sm, plan: Plan):
    """Apply ``plan`` to every MetaGraph of ``sm`` and rebuild their savers (in place)."""
    from lpo import passes
    from lpo.passes.surgery import Surgery

    for mg in sm.meta_graphs:
        source = type(mg)()
        source.CopyFrom(mg)
        surgery = Surgery(mg)
        for conv in plan.conversions:
            passes.get(conv.kind).rewrite(surgery, conv)
        mg.CopyFrom(rebuild_saver(surgery.finish(), source=source))


def _target_specs(mg) -> list[VarSpec]:
    from lpo.core.deeprec import ev_var_specs

    return list(variable_specs(mg).values()) + ev_var_specs(mg)


def _verify_written(prefix: str, targets: list[VarSpec]) -> None:
    """Check that the written checkpoint holds every variable the new graph restores."""
    from lpo.core.checkpoint import open_reader

    reader = open_reader(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    for t in targets:
        key = t.key + "-values" if t.kind == "ev" else t.key  # an EV: its converted values
        got = dtypes.get(key)
        if got is None or got.name != t.dtype:
            from lpo.errors import InternalError

            raise InternalError(f"written checkpoint has {t.key!r} as {got}, the graph restores {t.dtype}")


def optimize(model_path, save_path, opt_config=None, data_type=opts.OPTIMIZE.data_type, calib_file=None, *,
             overwrite=False, allow_pickle=False, tags=None, embedding_scheme=opts.OPTIMIZE.embedding_scheme,
             dense_mode=opts.OPTIMIZE.dense_mode, int8_dense=opts.OPTIMIZE.int8_dense,
             calib_method=opts.OPTIMIZE.calib_method, calib_batch_size=opts.OPTIMIZE.calib_batch_size,
             calib_max_batches=None, target=opts.OPTIMIZE.target,
             dequantize_at_load=opts.OPTIMIZE.dequantize_at_load, quiet=False, eval_file=None,
             max_auc_drop=opts.AUTO_OPTIONS.max_auc_drop, auto_options=None, report_dir=None,
             folds=opts.OPTIMIZE.folds, group_tables=opts.OPTIMIZE.group_tables, _auto=None) -> OptimizeResult:
    """Write at ``save_path`` a SavedModel whose embeddings and dense layers run in low precision.

    Args:
        model_path: FP32 SavedModel directory (never written to).
        save_path: output directory; must not exist or be empty unless ``overwrite``.
        opt_config: ``{node name: 'BF16'|'FP16'|'INT8'|'INT4'|'FP32'}`` (names from ``inspect_model``);
            unlisted nodes stay FP32. A table's value may name its scheme: ``'INT8:per_row'``,
            ``'INT4:per_dim'`` or ``{'dtype': 'INT8', 'scheme': 'per_row'}``. Without it, every
            optimizable node gets ``data_type``.
        data_type: default dtype, case-insensitive. ``INT4``: INT4 embedding tables (row-wise
            4-bit with float16 scale and offset; per_dim or INT8 per_dim where that is smaller,
            e.g. D < 8) and INT8 dense layers (``int8_dense`` decides their form).
        calib_file: ``.npz`` (or legacy pickled ``.npy`` with ``allow_pickle``) of serving inputs;
            required when a dense layer goes to INT8 in a calibrated form (``compute``/``simulate``).
        embedding_scheme: INT8 table scales ``per_dim`` (one float32 per column) or ``per_row``
            (one float16 per row, times a float32 power-of-two base per table).
        dense_mode: BF16/FP16 dense layers: ``auto`` (default: ``compute`` where the target runs
            bf16 MatMuls faster than float32, else ``weight_only``), ``weight_only`` (16-bit
            weights, float32 MatMul) or ``compute`` (16-bit MatMul/BiasAdd/Relu).
        int8_dense: INT8 dense layers: ``auto`` (default: ``compute`` on oneDNN targets for layers
            big enough to pay, ``weight_only`` for smaller ones; ``simulate`` without oneDNN),
            ``compute`` (real int8 kernels, need oneDNN where the model runs), ``simulate``
            (calibrated 8-bit numerics with float kernels, runs everywhere; old name ``static``)
            or ``weight_only``. One layer's form: ``opt_config`` value ``'INT8:compute'``.
        calib_method: activation range search: ``l2`` (default), ``minmax`` or ``percentile``.
        target: the serving CPU: ``host`` (default: this machine and its oneDNN setting) or a
            preset of :data:`lpo.options.TARGETS` (``portable``, ``avx2``, ``avx512_vnni``,
            ``avx512_bf16``, ``amx``, ...). It decides what ``auto`` means; the manifest records
            it and what the output requires (``requires``: oneDNN, CPU features).
        dequantize_at_load: for ``weight_only``/``simulate`` dense layers, dequantize the (small)
            dense weights once when the model loads into a float32 local variable, instead
            of on every call. The file keeps only low-precision weights.
        eval_file, max_auc_drop, auto_options, report_dir: ``data_type='AUTO'`` only: search
            per-node forms for the smallest, then fastest, model whose ``|ΔAUC|`` vs FP32 on
            ``eval_file`` (serving inputs + label, .npz) stays within ``max_auc_drop`` (AUTO's
            budget, default 1e-4; not the validation gate). ``opt_config`` then pins nodes.
            ``auto_options``: :class:`lpo.options.AutoOptions` fields (seed, max_evals, ...);
            ``report_dir``: the frontier report (HTML/Markdown/JSON). See :mod:`lpo.tune`.
        folds: apply the exact structural passes at every data type (``data_type='FP32'`` applies
            only them), before finding the optimizable nodes: a constant interaction mask folded into
            static gather indices (:mod:`lpo.passes.interaction`), a feature column fed one value per
            row looked up without the SparseTensor plumbing (:mod:`lpo.passes.single_value`). The
            manifest's ``structural`` lists the rewritten sites. False keeps the graph's structure.
        group_tables: concatenate the tables of one dim and storage form whose every lookup is a
            single-value lookup into one variable, read by one gather and one dequantization
            (lpo/passes/grouping.py; FP32 tables too, exactly). The manifest maps each table to its group.

    Returns:
        OptimizeResult with the optimized nodes and the bytes before and after.
    """
    if isinstance(data_type, str) and data_type.strip().upper() == opts.AUTO:
        from lpo.tune import auto_optimize

        return auto_optimize(model_path, save_path, opt_config=opt_config, calib_file=calib_file,
                             eval_file=eval_file, max_auc_drop=max_auc_drop, auto_options=auto_options,
                             report_dir=report_dir, overwrite=overwrite, allow_pickle=allow_pickle, tags=tags,
                             embedding_scheme=embedding_scheme, dense_mode=dense_mode, int8_dense=int8_dense,
                             calib_method=calib_method, calib_batch_size=calib_batch_size,
                             calib_max_batches=calib_max_batches, dequantize_at_load=dequantize_at_load, quiet=quiet,
                             target=target)
    if _auto is None and (eval_file is not None or report_dir is not None or auto_options is not None):
        raise ConfigError("eval_file, auto_options and report_dir are for data_type='AUTO' only; use `lpo validate` "
                          "to measure an optimized model")
    options = opts.OptimizeOptions(
        data_type=data_type, embedding_scheme=embedding_scheme, dense_mode=dense_mode, int8_dense=int8_dense,
        calib_method=calib_method, calib_batch_size=calib_batch_size,
        dequantize_at_load=dequantize_at_load, target=target, folds=bool(folds),
        group_tables=bool(group_tables)).normalized()
    opt_config = opts.normalize_opt_config(opt_config)
    model_path, save_path = os.path.abspath(os.fspath(model_path)), os.path.abspath(os.fspath(save_path))
    _check_output(save_path, model_path, overwrite)
    sm, mg = _load_model(model_path, tags)
    structural = _restructure(sm, options.folds)
    found, convs = _plan_conversions(model_path, mg, opt_config, options)
    _calibrate_static(model_path, sm, tags, convs, calib_file, options, allow_pickle=allow_pickle,
                      max_batches=calib_max_batches, found=found)
    from lpo.target import get_target, requirements

    tgt = get_target(options.target)
    plan = Plan(data_type=opts.AUTO if _auto else options.data_type, conversions=convs, lpo_version=__version__,
                requires=requirements(_requirements(convs), tgt),
                target=tgt.to_dict(), options={**options.plan_options(), "opt_config": opt_config},
                structural=structural)
    if _auto:  # the final write of data_type='AUTO' (lpo.tune): its summary and chosen opt_config
        plan.options["auto"] = _auto["manifest"]
    _log_forms(convs, tgt)
    _rewrite_all(sm, plan)
    _write_optimized(model_path, save_path, sm, plan, tags, overwrite=overwrite, quiet=quiet,
                     assets=(_auto or {}).get("assets"))
    return _optimize_result(model_path, save_path, found, plan)


def _plan_conversions(model_path, mg, opt_config, options: opts.OptimizeOptions):
    """Find the candidates of ``mg``, check the model's checkpoint, and plan each assigned one."""
    from lpo.core.checkpoint import check_checkpoint

    found = _find(mg, variables_prefix(model_path))
    assigned = _assign(found, opt_config, options.data_type)
    check_checkpoint(variables_prefix(model_path), _target_specs(mg))  # fail fast, before any work
    convs = [_plan_node(c, assigned[c.name], options) for c in found if c.name in assigned]
    if options.group_tables:
        from lpo.passes.grouping import plan_groups
        from lpo.passes.surgery import Surgery

        convs = plan_groups(Surgery(mg), found, convs, fp32=options.data_type == opts.KEEP)
    return found, convs


def _calibrate_static(model_path, sm, tags, convs: list[Conversion], calib_file, options: opts.OptimizeOptions, *,
                      allow_pickle, max_batches, found=()) -> None:
    """Calibrate the INT8 dense conversions of ``convs`` that quantize activations (no-op when none do)."""
    from lpo import passes

    static = [c for c in convs if passes.get(c.kind).calibrates(c)]
    if not static:
        return
    from lpo.core.deeprec import check_runnable

    check_runnable(select_meta_graph(sm, tags), model_path, "INT8 dense calibration (int8_dense compute/simulate) runs "
                   "the model", "Pass int8_dense='weight_only' (CLI --int8-dense weight_only), or keep its dense layers "
                   "out of INT8 in opt_config, to optimize it here")
    if calib_file is None:
        raise CalibrationError(
            f"INT8 dense layers need calibration data ({len(static)} layers, e.g. {static[0].node}); "
            "pass calib_file (CLI --calib, make one with `lpo calibrate`), or use int8_dense='weight_only'")
    from lpo.core.tf2 import lowered_model_dir

    with lowered_model_dir(model_path, sm) as calib_model:
        tables = [c for c in found if getattr(c, "lookups", None) and getattr(c, "parts", None)]
        _calibrate(calib_model, tags, static, calib_file, allow_pickle=allow_pickle,
                   batch_size=options.calib_batch_size, method=options.calib_method, max_batches=max_batches,
                   compact=(model_path, sm, select_meta_graph(sm, tags), tables),
                   weights=_weight_reader(model_path), dequantize_at_load=options.dequantize_at_load)


def _weight_reader(model_path):
    """``read(conversion)``: the float32 weight of a dense conversion, from the model's checkpoint."""
    from lpo.core.checkpoint import read_slice

    prefix = variables_prefix(model_path)
    return lambda c: np.asarray(read_slice(prefix, c.variables[0].key, c.variables[0].slice, "float32"))


def _write_optimized(model_path, save_path, sm, plan: Plan, tags, *, overwrite, quiet, assets=None) -> None:
    """Write the rewritten ``sm``, the model's other files, the manifest and the converted checkpoint."""
    from lpo.core.checkpoint import convert_checkpoint
    from lpo.fsutil import atomic_output_dir

    targets = _target_specs(select_meta_graph(sm, tags))
    with atomic_output_dir(save_path, overwrite=overwrite, needed=_output_bytes(model_path, sm, targets)) as tmp:
        tmp = os.fspath(tmp)
        write_saved_model(sm, tmp)
        copy_model_files(model_path, tmp, skip_extra={MANIFEST_NAME})
        os.makedirs(os.path.join(tmp, MANIFEST_DIR), exist_ok=True)
        with open(os.path.join(tmp, MANIFEST_DIR, MANIFEST_NAME), "w", encoding="utf-8") as f:
            f.write(plan.dumps())
        for name, text in (assets or {}).items():  # e.g. AUTO's chosen opt_config
            with open(os.path.join(tmp, MANIFEST_DIR, name), "w", encoding="utf-8") as f:
                f.write(text)
        os.makedirs(os.path.join(tmp, "variables"), exist_ok=True)
        work = os.path.join(tmp, ".lpo-shards")
        os.makedirs(work)
        convert_checkpoint(variables_prefix(model_path), variables_prefix(tmp), plan, targets, work_dir=work,
                           quiet=quiet)
        shutil.rmtree(work)
        _verify_written(variables_prefix(tmp), targets)


def _output_bytes(model_path, sm, targets: list[VarSpec]) -> int:
    """A lower bound of the optimized model's bytes: its graph, the model's other files, the converted variables."""
    import tensorflow as tf

    variables = sum(int(np.prod(t.shape)) * tf.as_dtype(t.dtype).size for t in targets)
    others = dir_bytes(model_path) - dir_bytes(os.path.join(model_path, "variables"))
    pb = os.path.join(model_path, SAVED_MODEL_PB)
    return variables + sm.ByteSize() + max(0, others - (os.path.getsize(pb) if os.path.isfile(pb) else 0))


def _members(conv: Conversion) -> list[str]:
    """The tables a conversion stands for when it holds several (a group of tables); else []."""
    return list((conv.targets or {}).get("tables", ()))


def _reports(conv: Conversion) -> list[NodeReport]:
    """A conversion's report lines: a low-precision group's one per member table, an FP32 group's one."""
    if _members(conv) and conv.dtype != opts.KEEP:
        return [NodeReport("embedding", t, conv.dtype, group=conv.node) for t in _members(conv)]
    return [NodeReport(conv.kind, conv.node, conv.dtype)]


def _optimize_result(model_path, save_path, found, plan: Plan) -> OptimizeResult:
    """Measure the written model and log the seed's report lines."""
    optimized = [n for c in plan.conversions for n in _reports(c)]
    fused = [NodeReport(name, e["node"], STRUCTURAL) for name, entries in plan.structural.items() for e in entries]
    done = {n.node for n in optimized}
    result = OptimizeResult(
        save_path=save_path, data_type=plan.data_type, optimized=optimized,
        variables_bytes_before=dir_bytes(os.path.join(model_path, "variables")),
        variables_bytes_after=dir_bytes(os.path.join(save_path, "variables")),
        total_bytes_before=dir_bytes(model_path), total_bytes_after=dir_bytes(save_path),
        kept_fp32=[c.name for c in found if c.name not in done], requires=plan.requires, target=plan.target,
        forms=_forms(plan.conversions), fused=fused)
    log.info("Optimization Result:")
    for n in fused + optimized:
        log.info("%s", n.line())
    log.info("Variables: %.1f MB -> %.1f MB (%.3fx)", result.variables_bytes_before / 1e6,
             result.variables_bytes_after / 1e6, result.size_ratio)
    return result


def _opt_model(opt_model_path):
    opt_model_path = os.path.abspath(os.fspath(opt_model_path))
    sm = read_saved_model(opt_model_path)
    plan = read_manifest(opt_model_path)
    return opt_model_path, sm, plan


def _all_targets(sm) -> list[VarSpec]:
    seen, out = set(), []
    for mg in sm.meta_graphs:
        for t in _target_specs(mg):
            if (t.key, t.slice) not in seen:
                seen.add((t.key, t.slice))
                out.append(t)
    return out


def _convert_into(ckpt_prefix, dst_prefix, sm, plan, work_dir, quiet) -> ConvertResult:
    from lpo.core.checkpoint import convert_checkpoint

    targets = _all_targets(sm)
    stats = convert_checkpoint(ckpt_prefix, dst_prefix, plan, targets, work_dir=work_dir, quiet=quiet)
    _verify_written(dst_prefix, targets)
    return ConvertResult(dst_prefix, stats.tensors_converted, stats.tensors_copied, stats.bytes_read,
                         stats.bytes_written)


def convert_ckpt(ckpt_prefix, save_prefix, opt_model_path, *, shard=None, num_shards=None, overwrite=False,
                 quiet=False) -> ConvertResult:
    """Convert a new FP32 checkpoint into the variables of an already optimized model.

    Replays the plan stored in ``opt_model_path`` (its manifest): converted variables
    get the same dtype and scheme, INT8 dense layers keep the calibration ranges of
    the first run (they live in the graph). Writes ``save_prefix.index`` and
    ``save_prefix.data-*`` only when everything succeeded; a missing directory of
    ``save_prefix`` is created (it appears complete, with the checkpoint in it).

    With ``shard=i, num_shards=n`` only shard ``i``'s deterministic, size-balanced share
    of the tensors is converted, into a shard checkpoint at ``save_prefix`` that
    :func:`merge_ckpt` combines with the others. Re-running a shard that is already
    complete at ``save_prefix`` does nothing (``skipped=True``).
    """
    from lpo.core.shards import check_shard_args
    from lpo.fsutil import atomic_checkpoint

    sharding = check_shard_args(shard, num_shards)
    ckpt_prefix, save_prefix = os.path.abspath(os.fspath(ckpt_prefix)), os.path.abspath(os.fspath(save_prefix))
    if ckpt_prefix == save_prefix:
        raise ConfigError(f"save_prefix equals ckpt_prefix ({ckpt_prefix}); choose a different prefix")
    opt_model_path, sm, plan = _opt_model(opt_model_path)
    if sharding is not None:
        return _convert_shard(ckpt_prefix, save_prefix, sm, plan, *sharding, overwrite=overwrite, quiet=quiet)
    needed = dir_bytes(os.path.join(opt_model_path, "variables"))
    with atomic_checkpoint(save_prefix, overwrite=overwrite, needed=needed) as tmp_prefix:
        work = os.path.join(os.path.dirname(tmp_prefix), ".lpo-work")
        os.makedirs(work)
        result = _convert_into(ckpt_prefix, tmp_prefix, sm, plan, work, quiet)
        shutil.rmtree(work)
    result.save_prefix = save_prefix
    log.info("Converted %d tensors, copied %d, into %s", result.tensors_converted, result.tensors_copied,
             save_prefix)
    return result


def _convert_shard(ckpt_prefix, save_prefix, sm, plan, shard, num_shards, *, overwrite, quiet) -> ConvertResult:
    """convert_ckpt of one shard: its units, its record, idempotent when already complete."""
    from lpo.core import shards as sh
    from lpo.core.checkpoint import ConvertStats, check_checkpoint, convert_checkpoint, open_reader
    from lpo.fsutil import atomic_checkpoint

    targets = _all_targets(sm)
    check_checkpoint(ckpt_prefix, targets, plan)
    reader = open_reader(ckpt_prefix)
    all_units = sh.units(targets, plan, reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map())
    mine = sh.assign(all_units, num_shards)[shard]
    outputs = [list(o) for u in mine for o in u.outputs]
    record = sh.ShardRecord(shard=shard, num_shards=num_shards, plan_digest=sh.plan_digest(plan),
                            source_digest=sh.source_digest(ckpt_prefix), units_digest=sh.units_digest(all_units),
                            total_outputs=sum(len(u.outputs) for u in all_units), outputs=outputs,
                            source_bytes=sum(u.nbytes for u in mine))
    if os.path.isfile(sh.record_path(save_prefix)):
        try:
            done = sh.read_record(save_prefix)
            sh.check_index(save_prefix, done)
        except CheckpointError:
            done = None
        if done is not None and sh.matches(done, record):
            log.info("Shard %d of %d is already converted at %s; nothing to do", shard, num_shards, save_prefix)
            return ConvertResult(save_prefix, 0, 0, 0, 0, shard=shard, num_shards=num_shards, skipped=True)
    wanted = {tuple(o) for o in outputs}
    stats = ConvertStats()
    with atomic_checkpoint(save_prefix, overwrite=overwrite, require_index=bool(mine)) as tmp_prefix:
        if mine:  # an empty shard (more shards than tensors) is its record alone
            work = os.path.join(os.path.dirname(tmp_prefix), ".lpo-work")
            os.makedirs(work)
            stats = convert_checkpoint(ckpt_prefix, tmp_prefix, plan, targets, work_dir=work, quiet=quiet,
                                       select={(u.key, u.slice) for u in mine})
            shutil.rmtree(work)
            done = {(u.key, u.slice) for u in mine}
            _verify_written(tmp_prefix, [t for t in targets if (t.key, t.slice) in done or (t.key, t.slice) in wanted])
        sh.write_record(tmp_prefix, record)
    log.info("Converted shard %d of %d (%d tensors, %.1f MB of the source) into %s", shard, num_shards,
             len(mine), record.source_bytes / 1e6, save_prefix)
    return ConvertResult(save_prefix, stats.tensors_converted, stats.tensors_copied, stats.bytes_read,
                         stats.bytes_written, shard=shard, num_shards=num_shards)


def merge_ckpt(shard_prefixes, save_prefix, *, overwrite=False) -> MergeResult:
    """Merge the shard checkpoints of one sharded ``convert_ckpt`` into the checkpoint ``save_prefix``.

    Fails clearly (CheckpointError) unless the shards come from one conversion (same
    optimized model, same source checkpoint, same ``num_shards``), every shard is
    present and complete, and every planned tensor is in exactly one shard. The result
    equals the unsharded conversion tensor for tensor; ``refresh`` takes it as its
    checkpoint. The shards are left as they are (their files are hard-linked, or copied
    across file systems), so a merge can be re-run.
    """
    from lpo.core.shards import merge_shards
    from lpo.fsutil import atomic_checkpoint

    if isinstance(shard_prefixes, (str, os.PathLike)):
        shard_prefixes = [shard_prefixes]
    prefixes = [os.path.abspath(os.fspath(p)) for p in shard_prefixes]
    save_prefix = os.path.abspath(os.fspath(save_prefix))
    if save_prefix in prefixes:
        raise ConfigError(f"save_prefix {save_prefix} is one of the shards; choose a different prefix")
    with atomic_checkpoint(save_prefix, overwrite=overwrite) as tmp_prefix:
        stats = merge_shards(prefixes, tmp_prefix)
    log.info("Merged %d shards into %s", stats.num_shards, save_prefix)
    return MergeResult(save_prefix, stats.num_shards, stats.tensors, stats.linked_files, stats.copied_files,
                       stats.source_bytes)


def _is_converted(ckpt_prefix: str, targets: list[VarSpec], plan: Plan) -> bool:
    """True when ``ckpt_prefix`` already holds the optimized model's variables (e.g. merged shards)."""
    from lpo.core.checkpoint import open_reader

    convs = plan.var_conversions()
    if not convs:
        return False
    dtypes = open_reader(ckpt_prefix).get_variable_to_dtype_map()
    keys = [(t.key + "-values" if t.kind == "ev" else t.key, t.dtype) for t in targets]  # an EV: its values
    return all(k in dtypes and dtypes[k].name == dt for k, dt in keys)


def _take_converted(ckpt_prefix: str, dst_prefix: str, targets: list[VarSpec]) -> ConvertResult:
    """Hard-link (or copy) an already converted checkpoint's files to ``dst_prefix``."""
    from lpo.fsutil import checkpoint_files, link_or_copy

    _verify_written(ckpt_prefix, targets)
    nbytes = 0
    base = os.path.basename(ckpt_prefix)
    for f in checkpoint_files(ckpt_prefix):
        suffix = f.name[len(base):]
        if suffix == ".index" or suffix.startswith(".data-"):
            link_or_copy(f, dst_prefix + suffix)
            nbytes += f.stat().st_size
    log.info("%s is already converted: its files were taken as they are", ckpt_prefix)
    return ConvertResult(dst_prefix, 0, len(targets), nbytes, nbytes)


def refresh(opt_model_path, ckpt_prefix, save_path, *, overwrite=False, quiet=False) -> RefreshResult:
    """Write a servable SavedModel: the optimized graph plus a converted new checkpoint.

    ``ckpt_prefix`` is a new FP32 checkpoint, converted by the model's plan, or one that
    already holds the optimized variables (the output of :func:`merge_ckpt`), whose
    files are then taken as they are (hard-linked, or copied across file systems).
    """
    from lpo.fsutil import atomic_output_dir

    opt_model_path, sm, plan = _opt_model(opt_model_path)
    save_path = os.path.abspath(os.fspath(save_path))
    ckpt_prefix = os.path.abspath(os.fspath(ckpt_prefix))
    _check_output(save_path, opt_model_path, overwrite)
    with atomic_output_dir(save_path, overwrite=overwrite, needed=dir_bytes(opt_model_path)) as tmp:
        tmp = os.fspath(tmp)
        write_saved_model(sm, tmp)
        copy_model_files(opt_model_path, tmp)
        os.makedirs(os.path.join(tmp, "variables"))
        targets = _all_targets(sm)
        if _is_converted(ckpt_prefix, targets, plan):  # e.g. merge_ckpt's output: take it as it is
            conv = _take_converted(ckpt_prefix, variables_prefix(tmp), targets)
        else:
            work = os.path.join(tmp, ".lpo-shards")
            os.makedirs(work)
            conv = _convert_into(ckpt_prefix, variables_prefix(tmp), sm, plan, work, quiet)
            shutil.rmtree(work)
    conv.save_prefix = variables_prefix(save_path)
    log.info("Refreshed %s from %s", save_path, ckpt_prefix)
    return RefreshResult(save_path, ckpt_prefix, conv)


__all__ = ["optimize", "inspect_model", "convert_ckpt", "merge_ckpt", "refresh", "OptimizeResult", "InspectResult",
           "ConvertResult", "MergeResult", "RefreshResult", "Candidate", "NodeReport", "CheckpointError"]
