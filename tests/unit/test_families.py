"""Pass families declare their properties (lpo.passes.registry); the optimizer and AUTO read them."""
import inspect

from lpo import passes
from lpo.core import optimizer
from lpo.core.plan import Conversion
from lpo.tune import space


def test_each_family_declares_its_fallbacks_ladder_and_label():
    dense, emb, ev = passes.get("dense"), passes.get("embedding"), passes.get("ev")
    assert [f.dtype_for("INT4") for f in (dense, emb, ev)] == ["INT8", "INT4", "INT8"]
    assert [f.dtype_for("BF16") for f in (dense, emb, ev)] == ["BF16"] * 3
    assert emb.auto_ladder[0] == "INT4:per_dim" and emb.auto_ladder[-1] == "FP32"
    assert dense.auto_ladder == ("INT8:weight_only", "BF16:weight_only", "FP16:weight_only", "FP32")
    assert ev.auto_ladder == ()
    assert optimizer.NodeReport("ev", "v", "INT8").line() == "Optimize embedding variable to INT8: v"
    assert optimizer.NodeReport("dense", "mm", "BF16").line() == "Optimize dense op to BF16: mm"


def test_calibration_and_requirements_are_the_families_answers():
    dense, emb = passes.get("dense"), passes.get("embedding")
    conv = {m: Conversion("dense", "mm", "INT8", "per_channel", mode=m) for m in ("compute", "simulate",
                                                                                  "weight_only")}
    assert [dense.calibrates(conv[m]) for m in ("compute", "simulate", "weight_only")] == [True, True, False]
    assert dense.requirement(conv["compute"]) == ("INT8", "compute")
    table = Conversion("embedding", "t", "INT4", "per_row_sym8")
    assert not emb.calibrates(table) and emb.requirement(table) is None
    assert optimizer._requirements([table, conv["compute"]]) == [("INT8", "compute")]


def test_the_optimizer_and_auto_never_test_a_family_by_name():
    """(``t.kind == "ev"`` on a VarSpec, an EV variable's checkpoint key, is a variable kind, not a family.)"""
    for module in (optimizer, space):
        lines = [ln for ln in inspect.getsource(module).splitlines() if "t.kind ==" not in ln]
        src = "\n".join(lines)
        for family in passes.names():
            assert f'kind == "{family}"' not in src
        assert "AUTO_LADDERS" not in src and "dtype_for(data_type, " not in src
