"""Sharded convert_ckpt + merge_ckpt equal the unsharded conversion bit for bit; convert_ckpt into a new directory.

Also: every failed/missing/foreign shard makes the merge fail clearly, a shard re-run is
idempotent, refresh takes a merged checkpoint, and the CLI's --shard/--num-shards and
merge-ckpt.
"""
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo.core import shards as sh
from lpo.errors import CheckpointError, ConfigError, OutputExistsError
from lpo.fsutil import tree_checksum
from lpo.samples.tf1 import perturb_checkpoint, predict


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="module")
def optimized(optimized_sample):
    return optimized_sample


def tensors(prefix):
    """{key: (dtype name, shape, raw bytes)} of a checkpoint (sliced tensors read whole)."""
    import tensorflow as tf

    r = tf.train.load_checkpoint(prefix)
    dtypes = r.get_variable_to_dtype_map()
    return {k: (dtypes[k].name, tuple(s), np.ascontiguousarray(r.get_tensor(k)).tobytes())
            for k, s in r.get_variable_to_shape_map().items()}


def run_shards(src, opt, out_dir, n, **kw):
    prefixes = []
    for i in range(n):
        p = os.path.join(out_dir, f"shard{i}", "variables")
        res = lpo.convert_ckpt(src, p, opt, shard=i, num_shards=n, quiet=True, **kw)
        assert (res.shard, res.num_shards, res.skipped) == (i, n, False)
        prefixes.append(p)
    return prefixes


def listing(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _ds, fs in os.walk(d) for f in fs)


CASES = [
    ("resource", {"data_type": "INT8", "int8_dense": "weight_only"}, 2),
    ("partitioned", {"data_type": "INT8", "int8_dense": "weight_only", "embedding_scheme": "per_row"}, 4),
    ("ref", {"data_type": "BF16"}, 3),
]


@pytest.mark.parametrize("variant,opts,n", CASES, ids=[c[0] for c in CASES])
def test_sharded_then_merged_equals_unsharded_bit_for_bit(request, work, optimized, variant, opts, n):
    sample = request.getfixturevalue(f"sample_{variant}")
    opt = optimized(sample, **opts)
    d = work / f"eq-{variant}"
    src = perturb_checkpoint(sample.model_path, str(d / "ckpt" / "model.ckpt-2000"))
    before = tree_checksum(d / "ckpt")
    whole = lpo.convert_ckpt(src, str(d / "whole" / "variables"), opt, quiet=True)
    prefixes = run_shards(src, opt, str(d / "shards"), n)
    merged = lpo.merge_ckpt(prefixes, str(d / "merged" / "variables"))
    want = tensors(whole.save_prefix)
    assert tensors(merged.save_prefix) == want  # same keys, dtypes, shapes and bytes
    assert merged.num_shards == n and merged.tensors >= len(want) and merged.files_copied == 0
    # each shard holds a share of the tensors, none twice, and the shares are balanced by size
    shares = [sh.read_record(p) for p in prefixes]
    assert sum(len(r.outputs) for r in shares) == shares[0].total_outputs
    assert all(r.outputs for r in shares)
    sizes = [r.source_bytes for r in shares]
    largest = max(sum(np.prod(s) for _dt, s, _b in [want[k]]) for k in want) * 4
    assert max(sizes) <= sum(sizes) / n + largest
    # the shards stay usable: a second merge gives the same checkpoint
    again = lpo.merge_ckpt(prefixes, str(d / "merged2" / "variables"))
    assert tensors(again.save_prefix) == want
    assert tree_checksum(d / "ckpt") == before  # the source is untouched
    # refresh takes the merged checkpoint: the same SavedModel as a refresh from the FP32 checkpoint
    a = lpo.refresh(opt, merged.save_prefix, str(d / "refresh-merged"), quiet=True)
    b = lpo.refresh(opt, src, str(d / "refresh-fp32"), quiet=True)
    assert a.convert.tensors_converted == 0 and b.convert.tensors_converted > 0
    assert tensors(os.path.join(a.save_path, "variables", "variables")) == \
        tensors(os.path.join(b.save_path, "variables", "variables"))
    data = {k: v[:256] for k, v in np.load(sample.heldout_path).items() if k != "label"}
    assert np.array_equal(predict(a.save_path, data), predict(b.save_path, data))


def test_convert_ckpt_creates_a_missing_directory_as_the_parent_tool_does(sample_resource, work, optimized):
    opt = optimized(sample_resource, data_type="BF16")
    src = os.path.join(sample_resource.model_path, "variables", "variables")
    root = work / "newdir"
    root.mkdir()
    # the parent tool's example: convert_ckpt(ckpt, "dlrm/opt_variables/variables", opt_model)
    res = lpo.convert_ckpt(src, str(root / "dlrm" / "opt_variables" / "variables"), opt, quiet=True)
    assert res.save_prefix == str(root / "dlrm" / "opt_variables" / "variables")
    assert listing(root) == ["dlrm/opt_variables/variables.data-00000-of-00001",
                             "dlrm/opt_variables/variables.index"]
    assert tensors(res.save_prefix) == tensors(os.path.join(opt, "variables", "variables"))
    # an existing prefix is refused, and nothing else appears
    with pytest.raises(OutputExistsError, match="already exists"):
        lpo.convert_ckpt(src, res.save_prefix, opt, quiet=True)
    # a file in the way of the new directory: a clear error, nothing written
    (root / "afile").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        lpo.convert_ckpt(src, str(root / "afile" / "sub" / "variables"), opt, quiet=True)
    # a failed conversion into a new directory leaves no file and no leaf directory behind (the
    # ancestors are made as `mkdir -p` does, so that concurrent shards can share them)
    bad = work / "newdir-bad"
    bad.mkdir()
    with pytest.raises(CheckpointError):
        lpo.convert_ckpt(str(bad / "no-such-ckpt"), str(bad / "a" / "b" / "variables"), opt, quiet=True)
    assert listing(bad) == [] and os.listdir(bad / "a") == []


SHARD_PROCESS = """
import json, os, sys, time
import lpo
src, prefix, opt, shard, num_shards, barrier = sys.argv[1:]
open(os.path.join(barrier, shard), "w").close()
deadline = time.time() + 300
while len(os.listdir(barrier)) < int(num_shards) and time.time() < deadline:  # start together
    time.sleep(0.005)
res = lpo.convert_ckpt(src, prefix, opt, shard=int(shard), num_shards=int(num_shards), quiet=True)
print(json.dumps(res.to_dict()))
"""


def test_concurrent_shard_processes_into_a_fresh_shared_directory(sample_resource, work, optimized):
    """Shards run as separate processes, released together, into a ``work/`` that does not exist yet.

    As the ParallelFor of the KFP pipeline or the mapped Airflow tasks on a fresh volume:
    every shard succeeds and the merge equals the unsharded conversion.
    """
    opt = optimized(sample_resource, data_type="INT8", int8_dense="weight_only")
    src = os.path.join(sample_resource.model_path, "variables", "variables")
    d, n = work / "concurrent", 3
    barrier = d / "barrier"
    barrier.mkdir(parents=True)
    prefixes = [str(d / "volume" / "work" / f"shard-{i:05d}" / "variables") for i in range(n)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", SHARD_PROCESS, src, p, opt, str(i), str(n), str(barrier)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, p in enumerate(prefixes)]
    try:
        outs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0] * n, [err[-2000:] for _out, err in outs]
    assert [json.loads(out)["shard"] for out, _err in outs] == list(range(n))
    assert sorted(os.listdir(d / "volume" / "work")) == [f"shard-{i:05d}" for i in range(n)]
    merged = lpo.merge_ckpt(prefixes, str(d / "volume" / "merged" / "variables"))
    assert tensors(merged.save_prefix) == tensors(os.path.join(opt, "variables", "variables"))


def test_merge_fails_clearly_on_missing_failed_or_foreign_shards(sample_resource, work, optimized):
    opt = optimized(sample_resource, data_type="INT8", int8_dense="weight_only")
    src = os.path.join(sample_resource.model_path, "variables", "variables")
    d = work / "bad-merge"
    prefixes = run_shards(src, opt, str(d / "s"), 3)
    out = str(d / "out" / "variables")

    with pytest.raises(CheckpointError, match=r"shards \[1\] of 3 are missing"):
        lpo.merge_ckpt([prefixes[0], prefixes[2]], out)
    with pytest.raises(CheckpointError, match="given twice"):
        lpo.merge_ckpt(prefixes + [prefixes[1]], out)
    # a shard of another run (other num_shards) or of another source checkpoint
    other = run_shards(src, opt, str(d / "t"), 2)
    with pytest.raises(CheckpointError, match="different conversions.*num_shards"):
        lpo.merge_ckpt(prefixes[:2] + [other[1]], out)
    new_src = perturb_checkpoint(sample_resource.model_path, str(d / "ckpt" / "model.ckpt-2000"))
    foreign = str(d / "u" / "variables")
    lpo.convert_ckpt(new_src, foreign, opt, shard=2, num_shards=3, quiet=True)
    with pytest.raises(CheckpointError, match="different conversions.*source checkpoint"):
        lpo.merge_ckpt(prefixes[:2] + [foreign], out)
    # a failed shard: killed before its index was written (atomic: nothing), or an index without its record
    broken = str(d / "broken" / "variables")
    shutil.copytree(os.path.dirname(prefixes[1]), os.path.dirname(broken))
    os.remove(broken + sh.RECORD_SUFFIX)
    with pytest.raises(CheckpointError, match="not a complete lpo shard.*rerun that shard"):
        lpo.merge_ckpt([prefixes[0], broken, prefixes[2]], out)
    with pytest.raises(CheckpointError, match="not a complete lpo shard"):
        lpo.merge_ckpt([prefixes[0], str(d / "never" / "variables"), prefixes[2]], out)
    # a record that lies about its tensors
    rec = json.loads(open(prefixes[0] + sh.RECORD_SUFFIX).read())
    lying = str(d / "lying" / "variables")
    shutil.copytree(os.path.dirname(prefixes[0]), os.path.dirname(lying))
    rec["outputs"], moved = rec["outputs"][1:], rec["outputs"][0]
    with open(lying + sh.RECORD_SUFFIX, "w") as f:
        json.dump(rec, f)
    with pytest.raises(CheckpointError, match="the conversion plans"):
        lpo.merge_ckpt([lying, prefixes[1], prefixes[2]], out)
    rec["outputs"] = [moved] + rec["outputs"]
    rec["outputs"][0], rec["outputs"][1] = rec["outputs"][1], rec["outputs"][0]
    shutil.copy(prefixes[1] + ".index", lying + ".index")  # an index from another shard
    with open(lying + sh.RECORD_SUFFIX, "w") as f:
        json.dump(rec, f)
    with pytest.raises(CheckpointError, match="does not hold what its record says"):
        lpo.merge_ckpt([lying, prefixes[1], prefixes[2]], out)
    assert not os.path.exists(os.path.dirname(out))  # no failed merge wrote anything
    assert lpo.merge_ckpt(prefixes, out).num_shards == 3


def test_shard_rerun_is_idempotent_and_a_changed_source_is_not_skipped(sample_resource, work, optimized):
    opt = optimized(sample_resource, data_type="BF16")
    src = os.path.join(sample_resource.model_path, "variables", "variables")
    d = work / "rerun"
    p = str(d / "s1" / "variables")
    first = lpo.convert_ckpt(src, p, opt, shard=1, num_shards=2, quiet=True)
    assert not first.skipped and first.tensors_converted + first.tensors_copied > 0
    before = tree_checksum(d / "s1")
    again = lpo.convert_ckpt(src, p, opt, shard=1, num_shards=2, quiet=True)
    assert again.skipped and again.to_dict()["skipped"] is True
    assert tree_checksum(d / "s1") == before
    # the same prefix for another shard or another source is not "done": refused unless overwrite
    new_src = perturb_checkpoint(sample_resource.model_path, str(d / "ckpt" / "model.ckpt-2000"))
    with pytest.raises(OutputExistsError):
        lpo.convert_ckpt(new_src, p, opt, shard=1, num_shards=2, quiet=True)
    with pytest.raises(OutputExistsError):
        lpo.convert_ckpt(src, p, opt, shard=0, num_shards=2, quiet=True)
    redone = lpo.convert_ckpt(new_src, p, opt, shard=1, num_shards=2, quiet=True, overwrite=True)
    assert not redone.skipped and tree_checksum(d / "s1") != before
    assert sorted(os.listdir(d / "s1")) == ["variables.data-00000-of-00001", "variables.index",
                                            "variables" + sh.RECORD_SUFFIX]


@pytest.mark.parametrize("shard,num_shards,match", [
    (0, None, "both"), (None, 2, "both"), (2, 2, r"0\.\.1"), (-1, 2, r"0\.\.1"), (0, 0, "at least 1"),
    ("x", 2, "integers")])
def test_bad_shard_arguments(sample_resource, work, optimized, shard, num_shards, match):
    opt = optimized(sample_resource, data_type="BF16")
    src = os.path.join(sample_resource.model_path, "variables", "variables")
    with pytest.raises(ConfigError, match=match):
        lpo.convert_ckpt(src, str(work / "never" / "v"), opt, shard=shard, num_shards=num_shards, quiet=True)
    assert not os.path.exists(work / "never")


def test_assignment_is_deterministic_and_balanced():
    rng = random.Random(0)
    units = [sh.Unit(f"t{i}", "", rng.choice([1, 10, 100, 1000, 5000]) * rng.randint(1, 9), [(f"t{i}", "")])
             for i in range(200)]
    for n in (1, 2, 3, 8, 300):
        a = sh.assign(units, n)
        shuffled = units[:]
        rng.shuffle(shuffled)
        assert [[u.key for u in s] for s in sh.assign(shuffled, n)] == [[u.key for u in s] for s in a]
        assert sorted(u.key for s in a for u in s) == sorted(u.key for u in units)
        loads = [sum(u.nbytes for u in s) for s in a]
        assert max(loads) <= sum(loads) / n + max(u.nbytes for u in units)
        if n >= len(units):
            assert sum(1 for s in a if not s) == n - len(units)


def test_more_shards_than_tensors_gives_empty_shards_that_merge(work):
    """A model with fewer tensors than shards: the empty shards are valid checkpoints and merge."""
    import tensorflow as tf

    v1 = tf.compat.v1
    model = work / "tiny"
    g = tf.Graph()
    with g.as_default():
        ids = v1.placeholder(tf.int64, [None], name="ids")
        table = v1.get_variable("emb", [50, 4], tf.float32, use_resource=True,
                                initializer=v1.random_normal_initializer(seed=1))
        out = tf.reduce_sum(tf.nn.embedding_lookup(table, ids), axis=1, name="out")
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            v1.saved_model.simple_save(sess, str(model), {"ids": ids}, {"out": out})
    opt = str(work / "tiny-opt")
    lpo.optimize(str(model), opt, data_type="INT8", quiet=True)
    src = str(model / "variables" / "variables")
    prefixes = run_shards(src, opt, str(work / "tiny-shards"), 3)
    assert [len(sh.read_record(p).outputs) for p in prefixes] == [2, 0, 0]  # the table and its scale
    merged = lpo.merge_ckpt(prefixes, str(work / "tiny-merged" / "variables"))
    assert tensors(merged.save_prefix) == tensors(os.path.join(opt, "variables", "variables"))


def _cli(*args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "lpo", *args], capture_output=True, text=True, env=env, **kw)


@pytest.mark.slow
def test_cli_convert_ckpt_shards_and_merge_ckpt(sample_resource, work, optimized):
    opt = optimized(sample_resource, data_type="BF16")
    src = os.path.join(sample_resource.model_path, "variables", "variables")
    d = work / "cli"
    prefixes = []
    for i in range(2):
        p = str(d / f"s{i}" / "variables")
        r = _cli("convert-ckpt", src, p, opt, "--shard", str(i), "--num-shards", "2", "--json", "-q")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["shard"] == i
        prefixes.append(p)
    r = _cli("merge-ckpt", str(d / "m" / "variables"), prefixes[0], "--json")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("merge-ckpt", str(d / "m" / "variables"), *prefixes, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_shards"] == 2
    assert tensors(str(d / "m" / "variables")) == tensors(os.path.join(opt, "variables", "variables"))
    r = _cli("convert-ckpt", src, str(d / "x" / "variables"), opt, "--shard", "0")
    assert r.returncode == 2 and "num_shards" in r.stderr


@pytest.mark.parametrize("dtype", ["INT8", "BF16"])
def test_deeprec_embedding_variables_shard_as_one_unit(work, dtype):
    """An EV's -keys/-values/-freqs/... (and its scale) land in one shard; the merge equals unsharded."""
    from lpo.samples.deeprec import build_ev_model

    ev = build_ev_model(str(work / f"ev-{dtype}" / "model"))
    opt = str(work / f"ev-{dtype}" / "opt")
    lpo.optimize(ev.path, opt, data_type=dtype, int8_dense="weight_only", quiet=True)
    src = os.path.join(ev.path, "variables", "variables")
    whole = lpo.convert_ckpt(src, str(work / f"ev-{dtype}" / "whole" / "variables"), opt, quiet=True)
    prefixes = run_shards(src, opt, str(work / f"ev-{dtype}" / "shards"), 3)
    for p in prefixes:
        keys = [k for k, _s in sh.read_record(p).outputs]
        for name in {k.rsplit("-", 1)[0] for k in keys if k.endswith("-values")}:
            assert {k for k in keys if k.startswith(name + "-")} >= {name + "-keys", name + "-values"}
    merged = lpo.merge_ckpt(prefixes, str(work / f"ev-{dtype}" / "merged" / "variables"))
    assert tensors(merged.save_prefix) == tensors(whole.save_prefix)
    refreshed = lpo.refresh(opt, merged.save_prefix, str(work / f"ev-{dtype}" / "refreshed"), quiet=True)
    assert refreshed.convert.tensors_converted == 0
