"""The step functions pack AUTO and threshold arguments once; the CLI, KFP components and operators call them."""
import ast
import pathlib

import pytest

from lpo import options as opts
from lpo.errors import ConfigError
from lpo.orchestration import steps

REPO = pathlib.Path(__file__).resolve().parents[2]
#: the library calls a step function makes: a caller making one itself packs its own arguments
STEP_CALLS = {"optimize", "validate", "make_calibration", "convert_ckpt"}


def test_auto_arguments_are_empty_unless_auto():
    assert steps.auto_arguments("INT8", eval_file="e.npz", auto_options='{"seed": 3}', max_evals=5) == {}
    assert steps.is_auto(" auto ") and not steps.is_auto("INT8")


def test_auto_arguments_merge_options_json_and_overrides():
    got = steps.auto_arguments("auto", eval_file="e.npz", max_auc_drop="0.002",
                               auto_options='{"seed": 3, "max_evals": 9}', report_dir="", max_evals=5, label_key=None)
    assert got == {"eval_file": "e.npz", "max_auc_drop": 0.002, "auto_options": {"seed": 3, "max_evals": 5},
                   "report_dir": None}
    # no options, no overrides: None, which the library reads as AutoOptions' defaults
    got = steps.auto_arguments("AUTO", eval_file="", auto_options="")
    assert got == {"eval_file": None, "max_auc_drop": opts.AUTO_OPTIONS.max_auc_drop, "auto_options": None,
                   "report_dir": None}
    assert opts.normalize_auto_options({"seed": 3, "max_evals": 5}).max_evals == 5


@pytest.mark.parametrize("kwargs,message", [
    ({"max_auc_drop": "a lot"}, "max_auc_drop must be a number"),
    ({"auto_options": "{not json"}, "auto_options must be a JSON object"),
])
def test_auto_arguments_reject_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        steps.auto_arguments("AUTO", eval_file="e.npz", **kwargs)


def test_rendered_values_are_normalized():
    assert [steps.optional(v) for v in (None, "", "  ", "x", 0)] == [None, None, None, "x", 0]
    assert [steps.flag(v) for v in ("True", " yes", "0", "off", "", 1, False)] == [
        True, True, False, False, False, True, False]
    assert steps.integer("n", "12") == 12 and steps.integer("seed", 0, minimum=0) == 0
    for bad in ("1.5x", None, 0):
        with pytest.raises(ConfigError, match="n must be"):
            steps.integer("n", bad)
    assert steps.json_arg("x", ' {"a": 1} ') == {"a": 1} and steps.json_arg("x", "") is None
    assert steps.jsonable({"p": pathlib.Path("/a"), "t": (1, 2)}) == {"p": "/a", "t": [1, 2]}


def _library_calls(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "lpo" and \
                node.func.attr in STEP_CALLS:
            yield f"{path.relative_to(REPO)}:{node.lineno} lpo.{node.func.attr}"


def test_cli_components_and_operators_call_the_step_functions():
    files = [REPO / "lpo" / "cli.py", *sorted((REPO / "components").glob("*.py")),
             *sorted((REPO / "operators").glob("*.py"))]
    assert [hit for f in files for hit in _library_calls(f)] == []
    users = {f.relative_to(REPO).as_posix() for f in files if "orchestration.steps import" in f.read_text()}
    assert {"lpo/cli.py", "components/optimize.py", "components/validate.py", "components/calibrate.py",
            "components/convert_shard.py", "operators/optimize.py", "operators/validate.py",
            "operators/calibrate.py", "operators/shards.py"} <= users
