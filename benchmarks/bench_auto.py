"""Benchmark AUTO (``data_type='AUTO'``) on the sample models at several budgets.

The sample's held-out rows are split once: the first ``--eval-rows`` go to AUTO as
``eval_file`` (it tunes on part of them and confirms on the rest); the remaining rows are
never given to AUTO, and ``lpo.validate`` measures on them: ΔAUC vs FP32, the size of the
variables (bytes written / FP32 bytes) and the p50 latency ratio at batch 512 (interleaved
with FP32 in one process). Search wall time is AUTO's own, from start to written model.

    python benchmarks/bench_auto.py [--variant resource keras] [--budgets 1e-4 5e-4] [--iters 100]

Latency numbers depend on the machine's load; the CPU flags and the oneDNN setting are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    keep = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return " ".join(f for f in keep if f in flags)


def run(variant: str, budgets, eval_rows: int, iters: int, work: str, auto_options: dict) -> list[dict]:
    import logging

    import numpy as np

    logging.getLogger("lpo").setLevel(logging.WARNING)
    import lpo

    if variant == "keras":
        from lpo.samples.keras_models import cached_keras_sample

        sample = cached_keras_sample()
    elif variant == "dcn":
        from lpo.samples.keras_models import cached_dcn_sample

        sample = cached_dcn_sample()
    else:
        from lpo.samples.tf1 import cached_sample

        sample = cached_sample(variant)
    data = dict(np.load(sample.heldout_path))
    n = len(data["label"])
    if eval_rows >= n:
        raise SystemExit(f"--eval-rows {eval_rows} leaves no unseen rows of the {n} held-out rows")
    ev, unseen = os.path.join(work, f"{variant}-eval.npz"), os.path.join(work, f"{variant}-unseen.npz")
    np.savez(ev, **{k: v[:eval_rows] for k, v in data.items()})
    np.savez(unseen, **{k: v[eval_rows:] for k, v in data.items()})
    rows = []
    for budget in budgets:
        dest = os.path.join(work, f"{variant}-{budget:g}")
        t0 = time.perf_counter()
        try:
            res = lpo.optimize(sample.model_path, dest, data_type="AUTO", calib_file=sample.calib_path, eval_file=ev,
                               max_auc_drop=budget, auto_options=auto_options, overwrite=True, quiet=True)
        except lpo.BudgetError as e:
            rows.append({"variant": variant, "budget": budget, "error": str(e).split(";")[0]})
            continue
        wall = time.perf_counter() - t0
        rep = lpo.validate(sample.model_path, dest, unseen, batch_sizes=(512,), iters=iters, warmup=10,
                           raise_on_fail=False).to_dict()
        forms = {}
        for form in res.auto["chosen"]["config"].values():
            forms[form] = forms.get(form, 0) + 1
        rows.append({"variant": variant, "budget": budget, "size": rep["size"]["variables_ratio"],
                     "auc_delta_unseen": rep["accuracy"]["auc_delta"], "unseen_rows": n - eval_rows,
                     "confirm_loss": res.auto["confirm"]["loss"], "lat_ratio": rep["latency"][0]["p50_ratio"],
                     "search_s": wall, "evals": len(res.auto["trials"]), "forms": forms})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", default=["resource", "keras", "dcn"],
                    choices=("resource", "ref", "partitioned", "keras", "dcn"))
    ap.add_argument("--budgets", nargs="+", type=float, default=[1e-4, 5e-4])
    ap.add_argument("--eval-rows", type=int, default=None,
                    help="rows given to AUTO (default: half the sample's held-out rows)")
    ap.add_argument("--iters", type=int, default=100, help="latency iterations (batch 512)")
    ap.add_argument("--auto-options", default="{}", help="JSON of lpo.options.AutoOptions fields")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lpo-bench-auto-") as work:
        for variant in args.variant:
            eval_rows = args.eval_rows or (10000 if variant not in ("keras", "dcn") else 5000)
            rows += run(variant, args.budgets, eval_rows, args.iters, work, json.loads(args.auto_options))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TF default)")
    print(f"CPU flags: {_cpu()}; TF_ENABLE_ONEDNN_OPTS={onednn}")
    print("size = variables bytes / FP32; dAUC on rows AUTO never saw; latency = p50 at batch 512 vs FP32")
    header = f"{'model':<10}{'budget':>8}{'size':>8}{'dAUC unseen':>13}{'rows':>7}{'lat':>7}{'search s':>10}{'evals':>7}  forms"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<10}{r['budget']:>8.0e}  {r['error']}")
            continue
        forms = ", ".join(f"{k} x{v}" for k, v in sorted(r["forms"].items()))
        print(f"{r['variant']:<10}{r['budget']:>8.0e}{r['size']:>7.3f}x{r['auc_delta_unseen']:>+13.2e}"
              f"{r['unseen_rows']:>7}{r['lat_ratio']:>6.2f}x{r['search_s']:>10.1f}{r['evals']:>7}  {forms}")
    if {"keras", "dcn"} & set(args.variant):
        print("note: a Keras export saves every variable twice and lpo's output keeps the one serving reads, "
              "so the keras/dcn size column is half the ratio to the variables serving reads")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
