"""Large-model benchmark: optimize and convert_ckpt a ~2.5 GB DLRM-like model with bounded memory.

Builds (or reuses from ``--cache-dir``) a TF1-graph SavedModel with 26 embedding tables
(rows proportional to the Criteo Kaggle cardinalities, dimension 16, float32, summing to
``--gb`` GB) and a small MLP, then measures, each in its own child process:

* ``tf-baseline``: import TensorFlow and lpo and run one op (the RSS every step pays anyway);
* ``plain-rw``: ``tf.train.load_checkpoint`` + ``get_tensor`` of every tensor + ``SaveV2``
  per tensor (+ ``MergeV2Checkpoints``): the cost of just reading and writing the bytes;
* ``optimize-bf16``, ``optimize-int8`` (``int8_dense='weight_only'``);
* ``optimize-int8-static``: INT8 with static calibration on a random 1024-row calibration file
  (the calibration runs the model without its tables: lpo.core.calibrate);
* ``convert-ckpt-int8``, ``convert-ckpt-bf16``: replay those plans on the FP32 checkpoint;
* sharded INT8 conversion with ``--shards`` 1,2,4: each shard and the merge in its own child
  (wall time, peak RSS), the merged checkpoint compared with the unsharded one tensor by
  tensor, and a 2 TB extrapolation over ``--workers`` from the per-shard throughput.

Peak RSS comes from ``os.wait4`` (the rusage of that child alone); wall time is the work
inside the child, after its imports. MB/s is FP32 checkpoint bytes / wall time.

How the model is built without a 2.5 GB session or protobuf: the graph (variables with
never-run initializers, a sharded V2 ``Saver``, a serving signature) is exported with
``export_meta_graph`` into a hand-assembled ``SavedModel`` proto, and the checkpoint is
written tensor by tensor (random values, ``SaveV2`` one shard per tensor, then
``MergeV2Checkpoints``), so the build peaks at about one table.

Usage: ``python benchmarks/bench_large.py [--gb 2.5] [--quick] [--cache-dir DIR] [--keep]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

# Criteo Kaggle (DLRM) categorical cardinalities: the table sizes are proportional to these.
CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
DIM = 16
NUM_DENSE = 13
BUILD_VERSION = 1
GB = 1e9


def table_rows(gb: float) -> list[int]:
    """Rows of each of the 26 tables so that they total about ``gb`` GB of float32."""
    factor = gb * GB / (sum(CRITEO) * DIM * 4)
    return [max(4, int(round(c * factor))) for c in CRITEO]


# ----------------------------------------------------------------------------- build
def _build_graph(rows: list[int]):
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        dense = v1.placeholder(tf.float32, [None, NUM_DENSE], name="dense")
        ids = [v1.placeholder(tf.int64, [None], name=f"C{i + 1}") for i in range(len(rows))]
        with v1.variable_scope("dlrm", use_resource=True):
            embs = []
            with v1.variable_scope("embeddings"):
                for i, n in enumerate(rows):
                    table = v1.get_variable(f"C{i + 1}", [n, DIM], tf.float32, initializer=v1.zeros_initializer())
                    embs.append(tf.nn.embedding_lookup(table, ids[i]))
            x = dense
            for scope, units in (("bottom_mlp", (64, DIM)), ("top_mlp", (256, 64, 1))):
                if scope == "top_mlp":
                    x = tf.concat([x] + embs, axis=1, name="interaction")
                with v1.variable_scope(scope):
                    for j, u in enumerate(units):
                        with v1.variable_scope(f"layer{j}"):
                            k = v1.get_variable("kernel", [int(x.shape[-1]), u], tf.float32,
                                                initializer=v1.glorot_uniform_initializer())
                            b = v1.get_variable("bias", [u], tf.float32, initializer=v1.zeros_initializer())
                            x = tf.nn.bias_add(tf.matmul(x, k), b)
                            if not (scope == "top_mlp" and j == len(units) - 1):
                                x = tf.nn.relu(x)
        probs = tf.sigmoid(tf.reshape(x, [-1]), name="probabilities")
        saver = v1.train.Saver(sharded=True, allow_empty=True, write_version=v1.train.SaverDef.V2)
        sig = v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"dense": dense, **{f"C{i + 1}": t for i, t in enumerate(ids)}},
            outputs={"probabilities": probs})
        mg = v1.train.export_meta_graph(graph=g, saver_def=saver.as_saver_def(), clear_devices=True)
        shapes = {v.op.name: v.shape.as_list() for v in v1.global_variables()}
    mg.meta_info_def.tags.append("serve")
    mg.signature_def["serving_default"].CopyFrom(sig)
    return mg, shapes


def build(model_dir: str, gb: float, seed: int = 0) -> dict:
    """Write the SavedModel at ``model_dir`` (atomically); return its facts."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    rows = table_rows(gb)
    mg, shapes = _build_graph(rows)
    tmp = model_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "variables", "shards"))
    sm = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    sm.meta_graphs.add().CopyFrom(mg)
    with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
        f.write(sm.SerializeToString(deterministic=True))
    rng = np.random.default_rng(seed)
    shards = []
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        value = rng.standard_normal(shape, dtype=np.float32)
        value *= np.float32(0.05)
        prefix = os.path.join(tmp, "variables", "shards", f"s{i:03d}")
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[name], shape_and_slices=[""], tensors=[value])
        shards.append(prefix)
        del value
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shards,
                                  destination_prefix=os.path.join(tmp, "variables", "variables"),
                                  delete_old_dirs=True)
    shutil.rmtree(os.path.join(tmp, "variables", "shards"), ignore_errors=True)
    sizes = {k: int(np.prod(s)) * 4 for k, s in shapes.items()}
    facts = {"version": BUILD_VERSION, "gb": gb, "rows": rows, "dim": DIM, "fp32_bytes": sum(sizes.values()),
             "largest_bytes": max(sizes.values()), "num_variables": len(sizes)}
    with open(os.path.join(tmp, "bench.json"), "w") as f:
        json.dump(facts, f, indent=1)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.rename(tmp, model_dir)
    return facts


def cached_model(cache_dir: str, gb: float) -> tuple[str, dict]:
    """Return (model dir, facts), building the model once per size."""
    model_dir = os.path.join(cache_dir, f"model-{gb:g}gb-v{BUILD_VERSION}")
    meta = os.path.join(model_dir, "bench.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            return model_dir, json.load(f)
    os.makedirs(cache_dir, exist_ok=True)
    return model_dir, _run_child(["build", model_dir, str(gb)])[0]


# ----------------------------------------------------------------------------- child steps
def _plain_rw(src: str, dst: str) -> None:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(src)
    shards = []
    for i, key in enumerate(sorted(reader.get_variable_to_shape_map())):
        value = reader.get_tensor(key)
        prefix = f"{dst}_shard{i:03d}"
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[key], shape_and_slices=[""], tensors=[value])
        shards.append(prefix)
        del value
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shards, destination_prefix=dst, delete_old_dirs=False)


def _same_checkpoint(a: str, b: str) -> bool:
    """True when checkpoints ``a`` and ``b`` hold the same keys, dtypes, shapes and bytes (one tensor at a time)."""
    import numpy as np
    import tensorflow as tf

    ra, rb = tf.train.load_checkpoint(a), tf.train.load_checkpoint(b)
    if ra.get_variable_to_shape_map() != rb.get_variable_to_shape_map() or \
            ra.get_variable_to_dtype_map() != rb.get_variable_to_dtype_map():
        return False
    for key in sorted(ra.get_variable_to_shape_map()):
        x, y = np.ascontiguousarray(ra.get_tensor(key)), np.ascontiguousarray(rb.get_tensor(key))
        if x.tobytes() != y.tobytes():
            return False
    return True


def write_calibration(path: str, rows: list[int], n: int = 1024, seed: int = 0) -> None:
    """Write a calibration .npz for the benchmark model: ``dense`` and one id column per table."""
    import numpy as np

    rng = np.random.default_rng(seed)
    data = {"dense": rng.standard_normal((n, NUM_DENSE), dtype=np.float32)}
    for i, r in enumerate(rows):
        data[f"C{i + 1}"] = rng.integers(0, r, n, dtype=np.int64)
    np.savez(path, **data)


def child_main(argv: list[str]) -> None:
    """Run one measured step (in a child process) and print its JSON result last."""
    step = argv[0]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.constant(1.0).numpy()  # eager context up: part of the TF baseline
    import lpo.core.checkpoint  # noqa: F401 - lpo's imports too (numpy, ml_dtypes): every step pays them
    t0 = time.perf_counter()
    out = {}
    if step == "build":
        out = build(argv[1], float(argv[2]))
    elif step == "plain-rw":
        _plain_rw(argv[1], argv[2])
    elif step == "optimize-int8-static":
        import lpo

        lpo.optimize(argv[1], argv[2], data_type="INT8", calib_file=argv[3], quiet=True)
    elif step.startswith("optimize"):
        import lpo

        dt = step.split("-")[1].upper()
        lpo.optimize(argv[1], argv[2], data_type=dt, int8_dense="weight_only", quiet=True)
    elif step == "shard":
        import lpo

        out = lpo.convert_ckpt(argv[1], argv[2], argv[3], shard=int(argv[4]), num_shards=int(argv[5]),
                               quiet=True).to_dict()
    elif step == "merge":
        import lpo

        out = lpo.merge_ckpt(argv[3:], argv[2]).to_dict()
    elif step == "compare":
        out = {"equal": _same_checkpoint(argv[1], argv[2])}
    elif step.startswith("convert-ckpt"):
        import lpo

        lpo.convert_ckpt(argv[1], argv[2], argv[3], quiet=True)
    elif step.startswith("refresh"):
        import lpo

        lpo.refresh(argv[1], argv[2], argv[3], quiet=True)
    elif step != "tf-baseline":
        raise SystemExit(f"unknown step {step}")
    out = {"result": out, "work_s": time.perf_counter() - t0}
    print("BENCH_RESULT " + json.dumps(out), flush=True)


def _run_child(args: list[str]) -> tuple[dict, float, int]:
    """Run a step in a child; return (its result, work seconds, peak RSS bytes)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()  # TF's native start-up noise included: shown only on failure
    _pid, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"step {args[0]} failed with exit code {p.returncode}:\n{out[-3000:]}")
    line = [x for x in out.splitlines() if x.startswith("BENCH_RESULT ")][-1]
    res = json.loads(line[len("BENCH_RESULT "):])
    return res["result"], res["work_s"], usage.ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def _rm_prefix(prefix: str) -> None:
    d, base = os.path.split(prefix)
    for f in os.listdir(d):
        if f.startswith(base + ".") or f.startswith(base + "_shard"):
            os.remove(os.path.join(d, f))


# ----------------------------------------------------------------------------- sharded conversion
def _sharded(args, run: str, src: str, opt: dict, rows: list, fp32: int) -> list[dict]:
    """Time INT8 conversion in N shards (each shard and the merge in its own child) for each N."""
    counts = [int(n) for n in args.shards.split(",") if n.strip()]
    if not counts:
        return []
    if "int8" not in opt or not os.path.isdir(opt["int8"]):
        opt["int8"] = os.path.join(run, "opt-int8")
        if not os.path.isdir(opt["int8"]):
            _run_child(["optimize-int8", os.path.dirname(os.path.dirname(src)), opt["int8"]])
    whole = os.path.join(run, "whole", "variables")
    _run_child(["convert-ckpt-int8", src, whole, opt["int8"]])
    out = []
    for n in counts:
        d = os.path.join(run, f"sharded-{n}")
        prefixes, shards = [], []
        for i in range(n):
            p = os.path.join(d, f"shard{i}", "variables")
            res, secs, rss = _run_child(["shard", src, p, opt["int8"], str(i), str(n)])
            shards.append({"shard": i, "wall_s": secs, "peak_rss": rss, "bytes_read": res["bytes_read"]})
            prefixes.append(p)
        merged = os.path.join(d, "merged", "variables")
        _res, merge_s, merge_rss = _run_child(["merge", "-", merged, *prefixes])
        equal = _run_child(["compare", merged, whole])[0]["equal"]
        row = {"num_shards": n, "shards": shards, "merge_s": merge_s, "merge_rss": merge_rss, "equal": equal}
        out.append(row)
        times = ", ".join(f"{s['wall_s']:.1f}s" for s in shards)
        print(f"  {n} shard(s): shards {times}; merge {merge_s:.2f}s; merged == unsharded: {equal}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(os.path.dirname(whole), ignore_errors=True)
    return out


def _print_sharded(shard_rows: list[dict], fp32: int, workers: str) -> None:
    if not shard_rows:
        return
    print()
    hdr = f"{'shards':>6} {'slowest shard s':>16} {'sum of shards s':>16} {'merge s':>8} {'MB/s per shard':>15} " \
          f"{'peak RSS GB':>12} {'bit-equal':>9}"
    print(hdr)
    print("-" * len(hdr))
    rates = []
    for r in shard_rows:
        slow = max(s["wall_s"] for s in r["shards"])
        total = sum(s["wall_s"] for s in r["shards"])
        rate = sum(s["bytes_read"] for s in r["shards"]) / 1e6 / total  # FP32 MB converted per shard-second
        rates.append(rate)
        print(f"{r['num_shards']:>6} {slow:>16.1f} {total:>16.1f} {r['merge_s']:>8.2f} {rate:>15.0f} "
              f"{max(s['peak_rss'] for s in r['shards']) / GB:>12.2f} {str(r['equal']):>9}")
    rate = min(rates)
    merge = max(r["merge_s"] for r in shard_rows)
    print(f"\nOn paper, a 2 TB FP32 checkpoint at the slowest measured per-shard rate ({rate:.0f} MB/s, one "
          f"shard per worker, storage not the limit; the merge renames files: {merge:.1f}s measured here):")
    for w in [int(x) for x in workers.split(",") if x.strip()]:
        hours = 2e12 / (rate * 1e6 * w) / 3600
        print(f"  W={w:>4}: {hours:6.2f} h  ({2e12 / w / 1e9:.0f} GB per worker)")


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        child_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/lpo/bench_large"),
                    help="where the model is built once and the outputs go (default: %(default)s)")
    ap.add_argument("--gb", type=float, default=2.5, help="FP32 embedding GB (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke size: 0.3 GB")
    ap.add_argument("--steps", default="optimize-bf16,optimize-int8,optimize-int8-static,convert-ckpt-int8,"
                    "convert-ckpt-bf16", help="comma-separated steps after tf-baseline and plain-rw "
                    "(default: %(default)s)")
    ap.add_argument("--shards", default="1,2,4", help="sharded INT8 conversions to time (shard counts; "
                    "empty: none; default: %(default)s)")
    ap.add_argument("--workers", default="1,8,32,128", help="worker counts of the 2 TB extrapolation")
    ap.add_argument("--keep", action="store_true", help="keep the outputs under CACHE_DIR/run")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    gb = 0.3 if args.quick else args.gb
    t = time.perf_counter()
    model, facts = cached_model(args.cache_dir, gb)
    print(f"model {model}: {facts['num_variables']} variables, {facts['fp32_bytes'] / GB:.2f} GB float32, "
          f"largest {facts['largest_bytes'] / GB:.3f} GB ({time.perf_counter() - t:.0f}s to build/load)", flush=True)
    run = os.path.join(args.cache_dir, "run")
    shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run)
    src = os.path.join(model, "variables", "variables")
    fp32, largest = facts["fp32_bytes"], facts["largest_bytes"]
    rows = []

    def measure(name, child_args, cleanup=()):
        _res, secs, rss = _run_child([name, *child_args])
        rows.append({"step": name, "wall_s": secs, "peak_rss": rss})
        print(f"  {name}: {secs:.1f}s, peak RSS {rss / 2**30:.2f} GiB", flush=True)
        for c in cleanup:
            shutil.rmtree(c, ignore_errors=True) if os.path.isdir(c) else _rm_prefix(c)

    measure("tf-baseline", [])
    os.makedirs(os.path.join(run, "plain"))
    measure("plain-rw", [src, os.path.join(run, "plain", "ckpt")], cleanup=[os.path.join(run, "plain")])
    opt = {}
    for step in [s for s in args.steps.split(",") if s]:
        dt = step.rsplit("-", 1)[1]
        if step == "optimize-int8-static":
            calib = os.path.join(run, "calib.npz")
            write_calibration(calib, facts["rows"])
            measure(step, [model, os.path.join(run, "opt-int8-static"), calib],
                    cleanup=[os.path.join(run, "opt-int8-static")])
        elif step.startswith("optimize"):
            opt[dt] = os.path.join(run, f"opt-{dt}")
            measure(step, [model, opt[dt]])
        elif step.startswith("convert-ckpt"):
            if dt not in opt:
                opt[dt] = os.path.join(run, f"opt-{dt}")
                _run_child([f"optimize-{dt}", model, opt[dt]])
            os.makedirs(os.path.join(run, f"conv-{dt}"))
            measure(step, [src, os.path.join(run, f"conv-{dt}", "ckpt"), opt[dt]],
                    cleanup=[os.path.join(run, f"conv-{dt}")])
        elif step.startswith("refresh"):
            measure(step, [opt[dt], src, os.path.join(run, f"refresh-{dt}")],
                    cleanup=[os.path.join(run, f"refresh-{dt}")])
        else:
            raise SystemExit(f"unknown step {step}")
    shard_rows = _sharded(args, run, src, opt, rows, fp32)
    base_rss = rows[0]["peak_rss"]
    plain_s = rows[1]["wall_s"]
    print()
    print(f"FP32 input {fp32 / GB:.2f} GB, largest variable {largest / GB:.3f} GB, "
          f"TF baseline RSS {base_rss / GB:.2f} GB, {os.cpu_count()} CPUs")
    hdr = (f"{'step':<20} {'wall s':>8} {'peak RSS GB':>12} {'(RSS-TF)/largest':>17} {'MB/s FP32':>10} "
           f"{'x plain r+w':>12}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        r["rss_over_largest"] = (r["peak_rss"] - base_rss) / largest
        r["mb_s"] = fp32 / 1e6 / r["wall_s"] if r["step"] != "tf-baseline" else None
        r["ratio_plain"] = r["wall_s"] / plain_s if r["step"] != "tf-baseline" else None
        print(f"{r['step']:<20} {r['wall_s']:>8.1f} {r['peak_rss'] / GB:>12.2f} {r['rss_over_largest']:>17.2f} "
              f"{(r['mb_s'] or 0):>10.0f} {(r['ratio_plain'] or 0):>12.2f}")
    for r in rows:
        if r["step"] == "optimize-int8-static":
            print(f"\nINT8 optimize with static calibration: peak RSS {r['peak_rss'] / GB:.2f} GB = TF baseline + "
                  f"{r['rss_over_largest']:.2f} x the largest table (done when <= 1.5)")
    _print_sharded(shard_rows, fp32, args.workers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"facts": facts, "rows": rows, "sharded": shard_rows}, f, indent=1)
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
