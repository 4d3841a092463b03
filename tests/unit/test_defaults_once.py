"""Every default is defined once, in lpo/options.py, and every wrapper reads it from there."""
import ast
import inspect
import pathlib

import pytest

from lpo import options as opts

REPO = pathlib.Path(__file__).resolve().parents[2]
#: parameter names that carry an lpo option (their default must not be a literal outside options.py)
OPTION_PARAMS = {"data_type", "embedding_scheme", "dense_mode", "int8_dense", "calib_method", "calib_batch_size",
                 "num_rows", "calib_rows", "max_auc_drop", "max_abs_diff", "max_latency_ratio", "min_size_reduction",
                 "iters", "validate_iters", "batch_sizes", "validate_batch_sizes", "warmup", "label_key",
                 "signature", "tags", "dequantize_at_load", "layout", "num_shards"}


def _literal_defaults(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults))
            pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            for arg, d in pairs:
                literal = isinstance(d, ast.Tuple) or (isinstance(d, ast.Constant) and d.value not in (None, ""))
                if arg.arg in OPTION_PARAMS and literal:
                    yield f"{path.relative_to(REPO)} {node.name}({arg.arg})", f"line {node.lineno}: {ast.unparse(d)}"
        if isinstance(node, ast.Dict):  # DAG params: {"name": Param(default, ...)}
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in OPTION_PARAMS and isinstance(v, ast.Call) and \
                        getattr(v.func, "id", "") == "Param" and v.args and isinstance(v.args[0], ast.Constant) and \
                        v.args[0].value not in (None, ""):
                    yield f"{path.relative_to(REPO)} Param({k.value})", f"line {v.lineno}: {ast.unparse(v.args[0])}"


#: same names, other settings: AUTO's speed-phase warmup is not validate's
ALLOWED = {"lpo/tune/evaluate.py latency(warmup)"}


def test_no_option_default_is_written_outside_options():
    # samples/ choose their own demo settings
    files = [p for root in ("lpo", "components", "operators", "pipelines") for p in (REPO / root).rglob("*.py")
             if p.name != "options.py" and "samples" not in p.parts]
    found = [hit for p in files for hit in _literal_defaults(p) if hit[0] not in ALLOWED]
    assert found == []


def _kfp_defaults(component) -> dict:
    params = component.component_spec.inputs or {}
    return {k: v.default for k, v in params.items() if v.default is not None}


def test_kfp_components_take_their_defaults_from_options():
    pytest.importorskip("kfp")
    from lpo.components import calibrate, optimize, pipelines, validate

    # the orchestrated pipelines' data type is PIPELINE_DATA_TYPE (they calibrate and gate), the rest the library's
    want_opt = {k: getattr(opts.OPTIMIZE, k) for k in ("embedding_scheme", "dense_mode", "int8_dense", "calib_method")}
    want_opt["data_type"] = opts.PIPELINE_DATA_TYPE
    for comp in (optimize.optimize, optimize.optimize_cli):
        assert {k: v for k, v in _kfp_defaults(comp).items() if k in want_opt} == want_opt, comp.name
    want_val = {**opts.ORCHESTRATOR_THRESHOLDS, "iters": opts.VALIDATE.iters, "batch_sizes": opts.BATCH_SIZES_TEXT}
    for comp in (validate.validate, validate.validate_cli):
        assert {k: v for k, v in _kfp_defaults(comp).items() if k in want_val} == want_val, comp.name
    assert _kfp_defaults(calibrate.calibrate)["num_rows"] == opts.CALIBRATE.num_rows
    assert _kfp_defaults(calibrate.calibrate)["seed"] == opts.CALIBRATE.seed
    assert _kfp_defaults(pipelines.optimize_pipeline)["max_abs_diff"] == opts.OFF


def test_lightweight_component_source_runs_without_lpo():
    """KFP executes the function's own source in the container: it must not need lpo to be defined."""
    pytest.importorskip("kfp")
    from kfp.dsl.component_factory import _get_function_source_definition

    from lpo.components import calibrate, optimize, refresh, validate

    for comp in (calibrate.calibrate, optimize.optimize, validate.validate, refresh.refresh):
        namespace: dict = {}
        exec("import kfp\nfrom kfp import dsl\nfrom kfp.dsl import *\nfrom typing import *\n"  # noqa: S102
             + _get_function_source_definition(comp.python_func), namespace)
        assert callable(namespace[comp.python_func.__name__])


def test_cli_library_and_operators_agree():
    import lpo
    from lpo.cli import build_parser

    sig = inspect.signature(lpo.optimize).parameters
    for k in ("data_type", "embedding_scheme", "dense_mode", "int8_dense", "calib_method", "calib_batch_size"):
        assert sig[k].default == getattr(opts.OPTIMIZE, k), k
    args = build_parser().parse_args(["optimize", "m", "o"])
    for k in ("data_type", "embedding_scheme", "dense_mode", "int8_dense", "calib_method"):
        assert getattr(args, k) == getattr(opts.OPTIMIZE, k), k
    args = build_parser().parse_args(["validate", "a", "b", "c"])
    assert (args.max_auc_drop, args.max_abs_diff, args.iters, args.batch_sizes) == (
        opts.THRESHOLDS.max_auc_drop, None, opts.VALIDATE.iters, opts.VALIDATE.batch_sizes)
    assert build_parser().parse_args(["validate", "a", "b", "c", "--max-abs-diff", "-1"]).max_abs_diff is None
    pytest.importorskip("airflow")
    from lpo.operators.operators import LpoOptimizeOperator, LpoValidateOperator

    op = inspect.signature(LpoOptimizeOperator.__init__).parameters
    assert {k: op[k].default for k in ("data_type", "embedding_scheme")} == {
        "data_type": opts.PIPELINE_DATA_TYPE, "embedding_scheme": opts.OPTIMIZE.embedding_scheme}
    from lpo.orchestration.airflow_settings import AIRFLOW

    assert AIRFLOW.data_type == opts.PIPELINE_DATA_TYPE
    val = inspect.signature(LpoValidateOperator.__init__).parameters
    assert {k: val[k].default for k in opts.Thresholds.names()} == opts.ORCHESTRATOR_THRESHOLDS
