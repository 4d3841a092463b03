"""Benchmark optimize() on the sample model: one row per dtype against FP32.

Prints size ratio (variables bytes), AUC delta, max |Δp| and batch-512 p50
latency ratio vs the FP32 original, all measured by ``lpo.validate`` (the one
measuring code path; the two models' runs are interleaved in one process). Each
oneDNN setting runs in its own child process, because ``TF_ENABLE_ONEDNN_OPTS``
must be set before TensorFlow is imported.

    python benchmarks/bench_optimize.py [--variant resource keras] [--iters 200] [--onednn both|0|1]

``resource``/``ref``/``partitioned`` are the TF1-graph sample models; ``keras`` is the
Keras 3 ``model.export()`` sample (a TF2 SavedModel, lowered by lpo).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CONFIGS = [
    ("BF16", {"data_type": "BF16"}),
    ("FP16", {"data_type": "FP16"}),
    ("INT8", {"data_type": "INT8"}),
    ("INT8 w-only dense", {"data_type": "INT8", "int8_dense": "weight_only"}),
    ("BF16 compute", {"data_type": "BF16", "dense_mode": "compute"}),
    # INT4 tables (row-wise, fp16 scale + offset) with INT8 dense layers (issue 11)
    ("INT4 + INT8 static", {"data_type": "INT4"}),
    ("INT4 + INT8 w-only", {"data_type": "INT4", "int8_dense": "weight_only"}),
]


def child(variant: str, iters: int, out_dir: str) -> list[dict]:
    """Optimize and validate every config; return one dict per row."""
    import logging

    logging.getLogger("lpo").setLevel(logging.WARNING)
    import lpo
    from lpo.samples.tf1 import cached_sample

    if variant == "keras":
        from lpo.samples.keras_models import cached_keras_sample

        sample = cached_keras_sample()
    else:
        sample = cached_sample(variant)
    rows = []
    for label, kw in CONFIGS:
        dest = os.path.join(out_dir, label.replace(" ", "_"))
        lpo.optimize(sample.model_path, dest, calib_file=sample.calib_path, quiet=True, overwrite=True, **kw)
        rep = lpo.validate(sample.model_path, dest, sample.heldout_path, batch_sizes=(512,), iters=iters,
                           warmup=10, raise_on_fail=False).to_dict()
        out = rep["prediction_output"]
        rows.append({"config": label, "size": rep["size"]["variables_ratio"],
                     "auc_delta": rep["accuracy"]["auc_delta"],
                     "max_dp": rep["outputs"][out]["max_abs_diff"],
                     "lat_ratio": rep["latency"][0]["p50_ratio"],
                     "fp32_ms": rep["latency"][0]["original"]["p50_ms"],
                     "opt_ms": rep["latency"][0]["optimized"]["p50_ms"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", default=["resource", "keras"],
                    choices=("resource", "ref", "partitioned", "keras"))
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--onednn", default="both", choices=("both", "0", "1"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="lpo-bench-") as d:
            print(json.dumps(child(args.variant[0], args.iters, d)))
        return
    settings = ["0", "1"] if args.onednn == "both" else [args.onednn]
    print(f"latency = p50 at batch 512, interleaved with FP32, {args.iters} iters")
    header = f"{'model':<10}{'oneDNN':<7}{'config':<19}{'size':>7}{'ΔAUC':>11}{'max|Δp|':>10}{'lat':>7}{'fp32 ms':>9}{'opt ms':>8}"
    print(header)
    print("-" * len(header))
    for variant in args.variant:
        for s in settings:
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=s, TF_CPP_MIN_LOG_LEVEL="3")
            proc = subprocess.run([sys.executable, __file__, "--child", "--variant", variant,
                                   "--iters", str(args.iters)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{variant:<10}{s:<7}child failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            for r in json.loads(proc.stdout.strip().splitlines()[-1]):
                print(f"{variant:<10}{s:<7}{r['config']:<19}{r['size']:>6.3f}x{r['auc_delta']:>+11.2e}{r['max_dp']:>10.2e}"
                      f"{r['lat_ratio']:>6.2f}x{r['fp32_ms']:>9.2f}{r['opt_ms']:>8.2f}")
    if "keras" in args.variant:
        print("note: a Keras export saves every variable twice and lpo's output keeps the one serving reads, "
              "so the keras size column is half the ratio to the variables serving reads (BF16 0.25x = 0.50x)")


if __name__ == "__main__":
    main()
