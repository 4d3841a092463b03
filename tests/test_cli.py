"""Tests of the ``lpo`` command line.

The first part needs no core: argument parsing, error lines and exit codes,
and the wiring to the public API (checked with stand-in functions). The tests
at the end (``test_core_*``) run the real ``lpo optimize``/``inspect`` on the
sample model and need the core (lpo.optimize & co.).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lpo
from lpo import cli
from lpo import options as opts
from lpo.errors import ConfigError, ValidationFailed
from lpo.fsutil import tree_checksum

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["inspect", "optimize", "convert-ckpt", "refresh", "calibrate", "validate", "profile", "demo", "publish",
               "samples"]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m lpo ARGS`` in a subprocess (repo on PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "lpo", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- subprocess


def test_top_level_help_subprocess():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for name in SUBCOMMANDS:
        assert name in r.stdout
    assert "--debug" in r.stdout and "--quiet" in r.stdout


def test_bad_data_type_one_line_exit_2():
    r = run_cli("optimize", "model", "out", "--data-type", "bf17")
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "BF16" in lines[0] and "bf17" in lines[0]


def test_config_not_an_object_exit_2(tmp_path):
    cfg = tmp_path / "opt.json"
    cfg.write_text('["emb/C1", "INT8"]')
    r = run_cli("optimize", str(tmp_path / "model"), str(tmp_path / "out"), "--config", str(cfg))
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("lpo: error: "), r.stderr
    assert "JSON object" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "opt.json"
    cfg.write_text("42")
    r = run_cli("--debug", "optimize", "m", str(tmp_path / "out"), "--config", str(cfg))
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr
    assert "ConfigError" in r.stderr
    assert error_lines(r.stderr)[-1].startswith("lpo: error: ")


def test_debug_flag_after_subcommand(tmp_path):
    cfg = tmp_path / "opt.json"
    cfg.write_text("{")
    r = run_cli("optimize", "m", str(tmp_path / "out"), "--config", str(cfg), "--debug")
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "not valid JSON" in r.stderr


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([name, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lpo {name}")
    assert "--debug" in out


def test_validate_help_documents_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["validate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-auc-drop X largest allowed AUC drop" in out
    assert "(default: 0.001)" in out
    assert out.count("(default: not checked)") == 3


@pytest.mark.parametrize("argv", [
    [],
    ["nosuchcommand"],
    ["optimize", "only-model"],
    ["optimize", "m", "o", "--embedding-scheme", "per_col"],
    ["calibrate", "src", "out.npz"],  # --model is required
    ["calibrate", "src", "out.npz", "--model", "m", "--rows", "0"],
    ["calibrate", "src", "out.npz", "--model", "m", "--map", "nomapping"],
    ["validate", "a", "b", "c", "--max-auc-drop", "lots"],
])
def test_usage_errors_exit_2_one_line(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1, err


def test_config_invalid_json_and_missing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{'single': 'quotes'}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        opts.load_opt_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        opts.load_opt_config(str(tmp_path / "missing.json"))
    good = tmp_path / "good.json"
    good.write_text('{"emb/C1": "INT8"}')
    assert opts.load_opt_config(str(good)) == {"emb/C1": "INT8"}


@pytest.fixture
def fake_api(monkeypatch):
    """Replace the public API with recorders; returns the list of calls."""
    class Calls(list):
        pass

    calls = Calls()

    def recorder(name, result=None):
        def fn(*args, **kwargs):
            calls.append((name, args, kwargs))
            if isinstance(result, BaseException):
                raise result
            return result
        return fn

    def install(name, result=None):
        # setitem on the module dict: getattr would trigger lpo's lazy import of the core
        monkeypatch.setitem(vars(lpo), name, recorder(name, result))

    calls.install = install  # type: ignore[attr-defined]
    return calls


@dataclass
class _Result:
    output: str = "out"
    saved_bytes: int = 10
    details: list = field(default_factory=lambda: [1, 2])

    def to_dict(self):
        return {"output": self.output, "saved_bytes": self.saved_bytes, "details": self.details}


def test_optimize_wiring(fake_api, tmp_path, capsys):
    fake_api.install("optimize", _Result())
    cfg = tmp_path / "opt.json"
    cfg.write_text('{"emb/C1": "int8"}')
    rc = cli.main(["optimize", "m", "o", "--data-type", "int8", "--config", str(cfg),
                   "--calib", "c.npz", "--allow-pickle", "--overwrite", "--embedding-scheme",
                   "PER_ROW", "--dense-mode", "weight_only", "--int8-dense", "weight-only",
                   "--calib-method", "minmax", "--tags", "serve,gpu", "--target", "AVX2", "--no-folds", "-q"])
    assert rc == 0
    [(name, args, kwargs)] = fake_api
    assert name == "optimize" and args == ("m", "o")
    assert kwargs == dict(opt_config={"emb/C1": "int8"}, data_type="INT8", calib_file="c.npz",
                          overwrite=True, allow_pickle=True, tags=["serve", "gpu"],
                          embedding_scheme="per_row", dense_mode="weight_only",
                          int8_dense="weight_only", calib_method="minmax", target="avx2", quiet=True, folds=False,
                          group_tables=False)
    out = capsys.readouterr().out
    assert "output: out" in out and "saved_bytes: 10" in out
    assert cli.main(["optimize", "m", "o", "--int8-dense", "static"]) == 0  # the old name of simulate
    assert fake_api[-1][2]["int8_dense"] == "simulate"
    assert cli.main(["optimize", "m", "o", "--group-tables"]) == 0
    assert fake_api[-1][2]["group_tables"] is True
    assert cli.main(["optimize", "m", "o", "--no-group-tables"]) == 0
    assert fake_api[-1][2]["group_tables"] is False


def test_optimize_defaults_and_json(fake_api, capsys):
    fake_api.install("optimize", _Result())
    assert cli.main(["optimize", "m", "o", "--json"]) == 0
    kwargs = fake_api[0][2]
    assert kwargs["data_type"] == "BF16" and kwargs["opt_config"] is None
    assert kwargs["overwrite"] is False and kwargs["allow_pickle"] is False
    assert kwargs["embedding_scheme"] == "per_dim" and kwargs["calib_method"] == opts.OPTIMIZE.calib_method
    assert kwargs["folds"] is True
    assert json.loads(capsys.readouterr().out) == _Result().to_dict()


def test_inspect_table_and_json(fake_api, capsys):
    Cand = types.SimpleNamespace
    result = types.SimpleNamespace(
        candidates=[Cand(kind="embedding", name="emb/C1", shape=(1000, 16), dtype="float32",
                         nbytes=64000),
                    Cand(kind="dense", name="mlp/MatMul", shape=[32, 1], dtype="float32",
                         nbytes=128)],
        to_dict=lambda: {"candidates": [{"name": "emb/C1"}]})
    fake_api.install("inspect_model", result)
    assert cli.main(["inspect", "m"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["KIND", "NAME", "SHAPE", "DTYPE", "BYTES"]
    assert out[1].split() == ["embedding", "emb/C1", "1000x16", "float32", "64000"]
    assert out[2].split() == ["dense", "mlp/MatMul", "32x1", "float32", "128"]
    assert "2 candidate(s)" in out[3]
    assert fake_api[0][2] == {"tags": ["serve"]}
    assert cli.main(["inspect", "m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"candidates": [{"name": "emb/C1"}]}


def test_convert_refresh_calibrate_validate_wiring(fake_api, capsys):
    for name in ("convert_ckpt", "merge_ckpt", "refresh", "make_calibration", "validate"):
        fake_api.install(name, _Result())
    assert cli.main(["convert-ckpt", "ck", "save", "opt"]) == 0
    assert cli.main(["convert-ckpt", "ck", "save1", "opt", "--shard", "1", "--num-shards", "4"]) == 0
    assert cli.main(["merge-ckpt", "merged", "s0", "s1", "--overwrite"]) == 0
    assert cli.main(["refresh", "opt", "ck", "out", "--overwrite"]) == 0
    assert cli.main(["calibrate", "data.csv", "c.npz", "--model", "m", "--rows", "64", "--seed",
                     "3", "--format", "CSV", "--columns", "a,b", "--map", "a=C1", "--map",
                     "b = C2", "--legacy-npy"]) == 0
    assert cli.main(["validate", "orig", "opt", "held.npz", "--report-dir", "rep",
                     "--max-abs-diff", "0.05"]) == 0
    calls = [(args, kwargs) for name, args, kwargs in fake_api if name == "convert_ckpt"]
    assert calls == [(("ck", "save", "opt"), {"shard": None, "num_shards": None, "overwrite": False, "quiet": False}),
                     (("ck", "save1", "opt"), {"shard": 1, "num_shards": 4, "overwrite": False, "quiet": False})]
    got = {name: (args, kwargs) for name, args, kwargs in fake_api}
    assert got["merge_ckpt"] == ((["s0", "s1"], "merged"), {"overwrite": True})
    assert got["refresh"] == (("opt", "ck", "out"), {"overwrite": True, "quiet": False})
    assert got["make_calibration"] == (("data.csv", "c.npz", "m"), dict(
        num_rows=64, seed=3, format="csv", columns=["a", "b"], mapping={"a": "C1", "b": "C2"},
        legacy_npy=True, overwrite=False))
    assert got["validate"] == (("orig", "opt", "held.npz"), dict(
        max_auc_drop=0.001, max_abs_diff=0.05, max_latency_ratio=None,
        min_size_reduction=None, report_dir="rep", batch_sizes=(1, 64, 512), iters=50, warmup=5,
        max_rows=None, raise_on_fail=True))


def test_validation_failed_exit_3_prints_report(fake_api, capsys):
    report = types.SimpleNamespace(summary=lambda: "AUC drop 0.01 > 0.001")
    fake_api.install("validate", ValidationFailed("1 threshold breached: max_auc_drop",
                                                  report=report))
    assert cli.main(["validate", "a", "b", "c"]) == 3
    cap = capsys.readouterr()
    assert "AUC drop 0.01" in cap.out
    assert error_lines(cap.err) == ["lpo: error: 1 threshold breached: max_auc_drop"]


def test_lpo_error_one_line(fake_api, capsys):
    fake_api.install("inspect_model", ConfigError("no such model: m\nchoose another"))
    assert cli.main(["inspect", "m"]) == 2
    assert error_lines(capsys.readouterr().err) == ["lpo: error: no such model: m choose another"]


def test_internal_error_one_line_exit_1(fake_api, capsys):
    fake_api.install("inspect_model", RuntimeError("boom"))
    assert cli.main(["inspect", "m"]) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [
        "lpo: internal error: RuntimeError: boom (run with --debug for the traceback)"]


def test_internal_error_debug_reraises(fake_api):
    fake_api.install("inspect_model", RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "inspect", "m"])


def test_demo_wiring(monkeypatch, capsys):
    seen = {}

    def run_demo(**kwargs):
        seen.update(kwargs)
        return _Result(output="demo-out")

    import lpo.samples

    monkeypatch.setitem(vars(lpo.samples), "demo", types.SimpleNamespace(run_demo=run_demo))
    assert cli.main(["demo", "--out", "d", "--keep"]) == 0
    assert seen == {"out": "d", "keep": True, "quiet": False, "pipeline": None, "verbose": False}
    seen.clear()
    assert cli.main(["demo", "--out", "d", "--pipeline", "kfp"]) == 0
    assert seen["pipeline"] == "kfp"
    assert "output: demo-out" in capsys.readouterr().out


def test_cli_import_is_light_and_sets_tf_log_level():
    """``lpo --help`` must not load TensorFlow; TF's C++ logs default to level 2."""
    code = ("import os, sys, lpo.cli; lpo.cli.build_parser(); "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert r.stdout.split() == ["2", "False"], r.stderr


# --------------------------------------------------------------------------- needs the core
# These run the real pipeline on the sample model (fixture from tests/conftest.py).


def test_core_inspect_json(sample_resource):
    r = run_cli("inspect", sample_resource.model_path, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    cands = data["candidates"]
    kinds = {c["kind"] for c in cands}
    assert {"embedding", "dense"} <= kinds
    for c in cands:
        assert {"kind", "name", "shape", "dtype", "nbytes"} <= set(c)
    r = run_cli("inspect", sample_resource.model_path)
    assert r.returncode == 0 and "embedding" in r.stdout


def test_core_optimize_bf16_leaves_input_untouched(sample_resource, tmp_path):
    model = sample_resource.model_path
    before = tree_checksum(model)
    out = tmp_path / "opt"
    r = run_cli("optimize", model, str(out), "--data-type", "bf16", "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)
    assert (out / "saved_model.pb").is_file()
    assert (out / "assets.extra" / "lpo_manifest.json").is_file()
    assert tree_checksum(model) == before
    assert not list(tmp_path.glob(".opt.lpo-tmp-*"))


def test_core_optimize_refuses_nonempty_out(sample_resource, tmp_path):
    out = tmp_path / "opt"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = run_cli("optimize", sample_resource.model_path, str(out), "--data-type", "BF16")
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert lines[-1].startswith("lpo: error: ") and "--overwrite" in lines[-1]
    assert "Traceback" not in r.stderr
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_core_optimize_out_inside_model_refused(sample_resource):
    model = sample_resource.model_path
    before = tree_checksum(model)
    r = run_cli("optimize", model, os.path.join(model, "opt"), "--data-type", "BF16")
    assert r.returncode == 2
    assert error_lines(r.stderr)[-1].startswith("lpo: error: ")
    assert tree_checksum(model) == before


def test_core_optimize_int8_with_calib(sample_resource, tmp_path):
    out = tmp_path / "opt8"
    r = run_cli("optimize", sample_resource.model_path, str(out), "--data-type", "INT8",
                "--calib", sample_resource.calib_path, "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "assets.extra" / "lpo_manifest.json").read_text())
    assert manifest["data_type"] == "INT8" and manifest["conversions"]


@pytest.mark.slow
def test_core_missing_model_is_user_error(tmp_path):
    r = run_cli("optimize", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert len(error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_optimize_defaults_match_the_library():
    """`lpo optimize` with no options builds the same model as lpo.optimize() with none."""
    import inspect

    from lpo.core.optimizer import optimize

    defaults = {k: p.default for k, p in inspect.signature(optimize).parameters.items()}
    args = cli.build_parser().parse_args(["optimize", "m", "o"])
    for opt in ("embedding_scheme", "dense_mode", "int8_dense", "calib_method", "target"):
        assert getattr(args, opt) == defaults[opt], opt
