"""``lpo demo --pipeline kfp`` (what ``bash scripts/demo.sh`` runs): a concise console, details in logs."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

NOISE = re.compile(r"oneDNN custom operations|cuda|cpu_feature_guard|absl::InitializeLog|rebuild TensorFlow")


@pytest.mark.slow
def test_demo_output_fits_on_a_screen(tmp_path, sample_resource):
    from conftest import SAMPLE_CACHE

    out = tmp_path / "demo"
    env = dict(os.environ, LPO_CACHE_DIR=SAMPLE_CACHE)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, "-m", "lpo", "demo", "--pipeline", "kfp", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    console = (proc.stdout + proc.stderr).splitlines()
    assert len(console) <= 40, "\n".join(console)
    text = "\n".join(console)
    for dtype in ("FP32", "BF16", "FP16", "INT8"):
        assert re.search(rf"^{dtype} +\d", proc.stdout, flags=re.M), proc.stdout
    assert f"written to {out}/:" in proc.stdout
    assert "gate passed" in proc.stdout and "kfp.log" in proc.stdout and "demo.log" in proc.stdout
    assert "Optimize embedding" not in text and "executor" not in text.lower().replace("kfp executor output", "")
    assert not NOISE.search(text)
    details = (out / "demo.log").read_text()
    assert "Optimize embedding to INT8" in details  # the per-node report, in the log file
    kfp_log = (out / "kfp.log").read_text()
    assert "lpo-optimize" in kfp_log and "lpo-refresh" in kfp_log
    assert [ln for ln in kfp_log.splitlines() if NOISE.search(ln)] == []  # KFP steps: TF noise filtered
    for d in ("model_bf16", "model_fp16", "model_int8"):
        assert (out / d / "saved_model.pb").is_file()
