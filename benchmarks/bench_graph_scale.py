"""Graph-size scaling: optimize() time against the number of graph nodes.

Builds synthetic TF1 SavedModels with N resource embedding tables of 100x8 (each
looked up once by its own int64 input) whose lookups are concatenated into one dense
layer, then times ``lpo.optimize(model, out, data_type='BF16')`` on each, in this
process (TensorFlow is imported once, before the first timing). Prints nodes,
optimize wall and CPU seconds, and each per 1k nodes: those columns stay flat when
optimize is linear in the graph size. On a shared machine the CPU columns are the
ones to trust (wall time grows with other processes' load; the load is printed).

    python benchmarks/bench_graph_scale.py [--tables 50 200 800 3200] [--profile N] [--json FILE]

``--profile N`` runs cProfile on the N-table model and prints the top functions.
Models are cached under ``--cache-dir`` (default ``~/.cache/lpo/bench_graph_scale``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

BUILD_VERSION = 1
ROWS, DIM = 100, 8


def build(model_dir: str, tables: int) -> int:
    """Write the N-table SavedModel at ``model_dir``; return its node count."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        ids = [v1.placeholder(tf.int64, [None], name=f"ids{i}") for i in range(tables)]
        embs = []
        for i in range(tables):
            t = v1.get_variable(f"emb{i}", [ROWS, DIM], tf.float32, use_resource=True,
                                initializer=v1.random_normal_initializer(0.0, 0.1, seed=i))
            embs.append(tf.nn.embedding_lookup(t, ids[i]))
        x = tf.concat(embs, axis=1)
        w = v1.get_variable("dense/kernel", [tables * DIM, 1], tf.float32,
                            initializer=v1.random_normal_initializer(0.0, 0.1, seed=1))
        b = v1.get_variable("dense/bias", [1], tf.float32, initializer=v1.zeros_initializer())
        out = tf.sigmoid(tf.nn.bias_add(tf.matmul(x, w), b), name="prob")
        tmp = model_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            v1.saved_model.simple_save(sess, tmp, {f"ids{i}": t for i, t in enumerate(ids)}, {"prob": out})
    nodes = len(g.as_graph_def().node)
    with open(os.path.join(tmp, "bench.json"), "w") as f:
        json.dump({"version": BUILD_VERSION, "tables": tables}, f)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.rename(tmp, model_dir)
    return nodes


def cached_model(cache_dir: str, tables: int) -> str:
    """Return the N-table model directory, building it once."""
    d = os.path.join(cache_dir, f"tables{tables}-v{BUILD_VERSION}")
    if not os.path.isfile(os.path.join(d, "bench.json")):
        os.makedirs(cache_dir, exist_ok=True)
        build(d, tables)
    return d


def graph_nodes(model_dir: str) -> int:
    """Return the node count of the serving MetaGraph of ``model_dir``."""
    from lpo.core.savedmodel import read_saved_model, select_meta_graph

    return len(select_meta_graph(read_saved_model(model_dir)).graph_def.node)


def time_optimize(model_dir: str, data_type: str = "BF16") -> tuple[float, float]:
    """Return (wall, CPU) seconds of one optimize() of ``model_dir`` into a temp directory."""
    import lpo

    out = tempfile.mkdtemp(prefix="lpo-bench-scale-")
    try:
        t, c = time.perf_counter(), time.process_time()
        lpo.optimize(model_dir, os.path.join(out, "opt"), data_type=data_type, quiet=True)
        return time.perf_counter() - t, time.process_time() - c
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=int, nargs="+", default=[50, 200, 800, 3200])
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/lpo/bench_graph_scale"))
    ap.add_argument("--dtype", default="BF16")
    ap.add_argument("--profile", type=int, default=None, help="cProfile optimize() of this table count")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    import tensorflow as tf

    tf.constant(1.0).numpy()
    logging.getLogger("lpo").setLevel(logging.WARNING)
    if args.profile:
        import cProfile
        import pstats

        model = cached_model(args.cache_dir, args.profile)
        prof = cProfile.Profile()
        prof.enable()
        time_optimize(model, args.dtype)  # (wall, CPU) not shown: the profiler slows it down
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    rows = []
    print(f"{'tables':>7} {'nodes':>8} {'optimize s':>11} {'s / 1k nodes':>13} {'CPU s':>8} "
          f"{'CPU s / 1k nodes':>17}  ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    for n in args.tables:
        model = cached_model(args.cache_dir, n)
        nodes = graph_nodes(model)
        secs, cpu = time_optimize(model, args.dtype)
        rows.append({"tables": n, "nodes": nodes, "optimize_s": secs, "s_per_1k_nodes": secs / nodes * 1000,
                     "cpu_s": cpu, "cpu_s_per_1k_nodes": cpu / nodes * 1000})
        print(f"{n:>7} {nodes:>8} {secs:>11.2f} {secs / nodes * 1000:>13.3f} {cpu:>8.2f} "
              f"{cpu / nodes * 1000:>17.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
