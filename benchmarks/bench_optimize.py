"""Benchmark optimize() on the sample models: one row per form against FP32, and a per-op trace.

Prints the CPU (model, vendor, the flags lpo decides on) and the oneDNN status first, then for
each sample and oneDNN setting one row per configuration: size ratio (variables bytes), ΔAUC,
max |Δp|, the p50 latency ratio at batch 512 against the FP32 original and the nodes executed per
run (FULL_TRACE, original -> optimized), all measured by ``lpo.validate`` (the one measuring code
path; the two models' runs are interleaved in one process; nodes per run from its profile,
lpo.validation.profile). Each oneDNN setting runs in its own child process, because ``TF_ENABLE_ONEDNN_OPTS``
must be set before TensorFlow is imported. Rows whose form needs oneDNN are skipped where it is off.

    python benchmarks/bench_optimize.py [--variant resource keras dcn deepfm mlperf dot] [--iters 200]
                                        [--onednn host|both|0|1] [--trace]

Samples: ``resource`` (TF1 DLRM-like, 432->256 top layer), ``keras`` (Keras 3 DLRM), ``dcn`` (Keras 3
DCN), ``deepfm`` (DeepCTR DeepFM, tf.tensordot DNN 256-128; needs deepctr), ``mlperf`` (TF1 with MLPerf
DLRM's MLP widths: bottom 13-512-256-128, top 1024-1024-512-256-1), ``dot`` (TF1, DeepRec modelzoo's DLRM
with the dot interaction: 26 hashed string columns, dim 16, bottom 512-256-64-16 with batch norm, top
512-256-1). ``FP32 folds`` is ``data_type='FP32'``: every table and layer float32, only the exact
structural passes (the interaction mask folded, single-value lookups fused). ``--trace``: instead of rows, a
per-op FULL_TRACE of the INT8 (auto) model against FP32 at batch 512: each dense layer's op time
(its QuantizeV2, int8 MatMul, scale Mul and Relu against the fused float32 MatMul+BiasAdd+Relu).
Latency numbers taken on a loaded machine are noisy: compare ratios, rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# label, optimize() keywords, needs oneDNN to run
CONFIGS = [
    ("FP32 folds", {"data_type": "FP32"}, False),
    ("INT8 auto", {"data_type": "INT8"}, False),
    ("INT8 auto ungrouped", {"data_type": "INT8", "group_tables": False}, False),  # each table its own gather
    # the graph as it was: no structural pass, no grouping (what lpo did before issue 19)
    ("INT8 auto unfused", {"data_type": "INT8", "folds": False, "group_tables": False}, False),
    ("INT8 compute", {"data_type": "INT8", "int8_dense": "compute"}, True),
    ("INT8 simulate", {"data_type": "INT8", "int8_dense": "simulate"}, False),
    ("INT8 weight-only", {"data_type": "INT8", "int8_dense": "weight_only"}, False),
    ("BF16 auto", {"data_type": "BF16"}, False),
    ("BF16 compute", {"data_type": "BF16", "dense_mode": "compute"}, False),
    ("BF16 weight-only", {"data_type": "BF16", "dense_mode": "weight_only"}, False),
    ("FP16 auto", {"data_type": "FP16"}, False),
    # INT4 tables (row-wise, fp16 scale + offset) with INT8 dense layers (issue 11)
    ("INT4 + INT8 auto", {"data_type": "INT4"}, False),
]
VARIANTS = ("resource", "keras", "dcn", "deepfm", "mlperf", "dot")


def sample_for(variant: str):
    """The cached sample of ``variant`` (model_path, calib_path, heldout_path)."""
    if variant == "keras":
        from lpo.samples.keras_models import cached_keras_sample

        return cached_keras_sample()
    if variant == "dcn":
        from lpo.samples.keras_models import cached_dcn_sample

        return cached_dcn_sample()
    if variant == "deepfm":
        from lpo.samples.keras_models import cached_deepfm_sample

        return cached_deepfm_sample()
    from lpo.samples.tf1 import cached_sample

    if variant in ("mlperf", "dot"):
        return cached_sample("resource", arch=variant)
    return cached_sample(variant)


def machine() -> dict:
    """CPU model, vendor, the flags lpo decides on, and oneDNN status of this process."""
    import platform

    from lpo.target import host

    t = host()
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "vendor": t.vendor, "flags": list(t.features), "onednn": t.onednn,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"), "cores": os.cpu_count(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "python": platform.python_version()}


def child_rows(variant: str, iters: int, out_dir: str, configs=None) -> dict:
    """Optimize and validate every config (or those labelled in ``configs``); return the machine facts and rows."""
    import logging

    logging.getLogger("lpo").setLevel(logging.WARNING)
    import lpo

    sample = sample_for(variant)
    info = machine()
    rows = []
    for label, kw, needs in CONFIGS:
        if configs and label not in configs:
            continue
        if needs and not info["onednn"]:
            rows.append({"config": label, "skipped": "needs oneDNN"})
            continue
        dest = os.path.join(out_dir, label.replace(" ", "_"))
        res = lpo.optimize(sample.model_path, dest, calib_file=sample.calib_path, quiet=True, overwrite=True, **kw)
        rep = lpo.validate(sample.model_path, dest, sample.heldout_path, batch_sizes=(512,), iters=iters,
                           warmup=10, raise_on_fail=False).to_dict()
        prof = rep["profile"]
        out = rep["prediction_output"]
        rows.append({"config": label, "forms": res.forms, "size": rep["size"]["variables_ratio"],
                     "auc_delta": rep["accuracy"]["auc_delta"], "max_dp": rep["outputs"][out]["max_abs_diff"],
                     "lat_ratio": rep["latency"][0]["p50_ratio"], "fp32_ms": rep["latency"][0]["original"]["p50_ms"],
                     "opt_ms": rep["latency"][0]["optimized"]["p50_ms"],
                     "nodes": prof["original"]["nodes_per_run"], "opt_nodes": prof["optimized"]["nodes_per_run"]})
    return {"machine": info, "rows": rows}


def _session(model: str, threads: int):
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    cfg = v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1) if threads else None
    sess = v1.Session(graph=g, config=cfg)
    with g.as_default():
        mg = v1.saved_model.load(sess, ["serve"], model)
    sig = mg.signature_def["serving_default"]
    return sess, sig


def _op_times(sess, sig, feed, runs: int) -> dict:
    """Median op time (µs) per node over ``runs`` FULL_TRACE runs."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    fetch = [v.name for v in sig.outputs.values()]
    per: dict = {}
    for i in range(runs + 5):
        md = v1.RunMetadata()
        sess.run(fetch, feed, options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE), run_metadata=md)
        if i < 5:
            continue
        seen: dict = {}
        for dev in md.step_stats.dev_stats:
            for ns in dev.node_stats:
                kernel = ns.timeline_label.split("(")[0].split("=")[-1].strip()
                key = (ns.node_name, kernel)
                seen[key] = seen.get(key, 0) + ns.op_end_rel_micros - ns.op_start_rel_micros
        for k, v in seen.items():
            per.setdefault(k, []).append(v)
    return {k: float(np.median(v)) for k, v in per.items()}


def child_trace(variant: str, runs: int, threads: int, out_dir: str) -> dict:
    """Per-layer op times of the INT8 (auto) model against FP32, from FULL_TRACE step stats."""
    import logging

    import numpy as np

    logging.getLogger("lpo").setLevel(logging.WARNING)
    import lpo

    sample = sample_for(variant)
    dest = os.path.join(out_dir, "int8")
    lpo.optimize(sample.model_path, dest, data_type="INT8", calib_file=sample.calib_path, quiet=True, overwrite=True)
    with open(os.path.join(dest, "assets.extra", "lpo_manifest.json")) as f:
        convs = [c for c in json.load(f)["conversions"] if c["kind"] == "dense"]
    data = dict(np.load(sample.heldout_path))
    sessions = [_session(m, threads) for m in (sample.model_path, dest)]
    feeds = [{sig.inputs[k].name: data[k][:512] for k in sig.inputs} for _, sig in sessions]
    times = [{}, {}]
    for rnd in range(2):  # two interleaved rounds, merged by taking the lower median (less disturbed)
        for k in ((0, 1) if rnd == 0 else (1, 0)):
            t = _op_times(sessions[k][0], sessions[k][1], feeds[k], runs)
            for key, v in t.items():
                times[k][key] = min(v, times[k].get(key, v))
    layers = []
    for c in convs:
        t = c["targets"]
        chain = {n for n in (t.get("matmul"), t.get("bias_add"), t.get("relu"), t.get("reshape")) if n}
        last = t.get("relu") or t.get("bias_add") or t.get("matmul")
        fp32 = sum(v for (name, _), v in times[0].items() if name in chain)
        mine = {(name, kern): v for (name, kern), v in times[1].items()
                if name in chain or name.startswith(t["matmul"] + "/lpo") or name.startswith(last + "/lpo")}
        int8 = sum(mine.values())
        shape = c["variables"][0]["shape"]
        layers.append({"layer": c["node"], "shape": shape, "mode": c["mode"], "fp32_us": fp32, "opt_us": int8,
                       "ratio": int8 / fp32 if fp32 else None,
                       "ops": sorted({k for _, k in mine}), "width": max(shape)})
    total = [sum(v for v in t.values()) for t in times]
    return {"machine": machine(), "layers": layers, "total_us": total, "threads": threads}


def _run_child(variant: str, setting: str, args) -> dict | None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if setting != "host":
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--iters", str(args.iters),
           "--threads", str(args.threads)] + (["--trace"] if args.trace else []) + \
        (["--configs", *args.configs] if args.configs else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{variant:<9}{setting:<6}child failed: {proc.stderr.strip().splitlines()[-3:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_machine(m: dict) -> None:
    print(f"CPU: {m['cpu']} ({m['vendor'] or 'unknown vendor'}), {m['cores']} cores, load avg {m['load']}")
    print(f"CPU flags: {' '.join(m['flags']) or 'none of ' + 'avx2/avx512/vnni/bf16/amx'}")
    print(f"oneDNN: {'on' if m['onednn'] else 'off'} (TF_ENABLE_ONEDNN_OPTS={m['TF_ENABLE_ONEDNN_OPTS']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", default=["resource", "keras", "dcn", "mlperf"], choices=VARIANTS)
    ap.add_argument("--iters", type=int, default=200, help="latency iterations (trace: traced runs)")
    ap.add_argument("--onednn", default="host", choices=("host", "both", "0", "1"),
                    help="host: this process's setting; both: a child with 0 and one with 1")
    ap.add_argument("--trace", action="store_true", help="per-op trace of each INT8 dense layer against FP32")
    ap.add_argument("--threads", type=int, default=1, help="trace: intra-op threads (0: TensorFlow's default)")
    ap.add_argument("--configs", nargs="+", default=None, choices=[c[0] for c in CONFIGS], metavar="LABEL",
                    help="only these rows, e.g. 'FP32 folds' 'INT8 auto' (default: all)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="lpo-bench-") as d:
            fn = child_trace(args.variant[0], args.iters, args.threads, d) if args.trace else \
                child_rows(args.variant[0], args.iters, d, args.configs)
            print(json.dumps(fn))
        return
    settings = {"both": ["0", "1"], "host": ["host"]}.get(args.onednn, [args.onednn])
    printed = False
    for variant in args.variant:
        for s in settings:
            res = _run_child(variant, s, args)
            if res is None:
                continue
            if not printed:
                _print_machine(res["machine"])
                printed = True
            onednn = "on" if res["machine"]["onednn"] else "off"
            if args.trace:
                print(f"\n{variant}, oneDNN {onednn}: per-op time at batch 512 ({args.iters} traced runs, "
                      f"{res['threads'] or 'default'} thread(s)); whole run {res['total_us'][0]:.0f} -> "
                      f"{res['total_us'][1]:.0f} us of op time")
                print(f"{'layer':<34}{'shape':>11}  {'form':<12}{'fp32 us':>9}{'int8 us':>9}{'ratio':>7}")
                for r in res["layers"]:
                    shape = "x".join(str(d) for d in r["shape"])
                    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
                    print(f"{r['layer'][-34:]:<34}{shape:>11}  {r['mode']:<12}{r['fp32_us']:>9.0f}{r['opt_us']:>9.0f}"
                          f"{ratio:>7}")
                continue
            print(f"\n{variant}, oneDNN {onednn}: latency = p50 at batch 512, interleaved with FP32, {args.iters} iters")
            header = (f"{'config':<18}{'size':>7}{'ΔAUC':>11}{'max|Δp|':>10}{'lat':>7}{'fp32 ms':>9}{'opt ms':>8}"
                      f"{'nodes/run':>15}  forms")
            print(header)
            print("-" * len(header))
            for r in res["rows"]:
                if "skipped" in r:
                    print(f"{r['config']:<18}  ({r['skipped']})")
                    continue
                forms = ", ".join(f"{k.split()[1]} x{v}" for k, v in r["forms"].items())
                print(f"{r['config']:<18}{r['size']:>6.3f}x{r['auc_delta']:>+11.2e}{r['max_dp']:>10.2e}"
                      f"{r['lat_ratio']:>6.2f}x{r['fp32_ms']:>9.2f}{r['opt_ms']:>8.2f}"
                      f"{str(r['nodes']) + '->' + str(r['opt_nodes']):>15}  {forms}")
    if not args.trace and {"keras", "dcn"} & set(args.variant):
        print("\nnote: a Keras export saves every variable twice and lpo's output keeps the one serving reads, "
              "so the keras/dcn size column is half the ratio to the variables serving reads (0.25x = 0.50x)")


if __name__ == "__main__":
    main()
