"""Grouped tables end to end on the Keras samples: grouped equals ungrouped on fuzzed ids (repeated ids,
batch 1, a big batch, the tables' boundary ids), FP32 grouped equals the original, the manifest and
``lpo inspect`` show the groups, and refresh / sharded convert_ckpt + merge_ckpt replay the grouped
checkpoint bit for bit."""
import os
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo.core.plan import read_manifest
from lpo.samples.keras_models import VOCAB, serve
from lpo.samples.tf1 import retrained_model

from test_shards import optimized, tensors, work  # noqa: F401 - the fixtures (optimize once per options) and reader


def fuzzed(sample, seed=0):
    """Serving batches: batch 1, repeated ids, each table's first and last row, random ids in a big batch."""
    held = {k: v for k, v in np.load(sample.heldout_path).items() if k != "label"}
    rng = np.random.default_rng(seed)
    sparse = [n for n in sample.input_names if held[n].dtype.kind in "iu"]
    out = [{k: v[:1] for k, v in held.items()}]
    for ids in (np.zeros(64, np.int32), np.full(64, VOCAB - 1, np.int32), np.tile([0, VOCAB - 1, 7], 22)[:64]):
        b = {k: v[:64].copy() for k, v in held.items()}
        for n in sparse:
            b[n] = ids.reshape(b[n].shape).astype(b[n].dtype)
        out.append(b)
    big = {k: np.resize(v, (4096,) + v.shape[1:]) for k, v in held.items()}
    for n in sparse:
        big[n] = rng.integers(0, VOCAB, size=big[n].shape).astype(big[n].dtype)
    out.append(big)
    return out


KERAS_FORMS = [{"data_type": "INT8", "int8_dense": "weight_only"},
               {"data_type": "INT8", "int8_dense": "weight_only", "embedding_scheme": "per_row"},
               {"data_type": "BF16"}]


@pytest.mark.parametrize("opts", KERAS_FORMS, ids=lambda o: "-".join(o.values()))
@pytest.mark.parametrize("fixture", ["sample_keras", "sample_dcn"])
def test_grouped_equals_ungrouped_on_fuzzed_ids(request, optimized, fixture, opts):
    sample = request.getfixturevalue(fixture)
    grouped = optimized(sample, group_tables=True, **opts)
    plain = optimized(sample, group_tables=False, **opts)
    (group,) = [c for c in read_manifest(grouped).conversions if c.kind == "group"]
    assert sorted(group.targets["tables"]) == sorted(sample.embedding_variables)
    assert not [c for c in read_manifest(plain).conversions if c.kind == "group"]
    for batch in fuzzed(sample):
        a, b = serve(grouped, batch), serve(plain, batch)
        assert a.shape == b.shape and np.max(np.abs(a - b), initial=0) <= 1e-6


def test_fp32_grouped_equals_the_original(sample_keras, optimized):
    fused = optimized(sample_keras, data_type="FP32", group_tables=True)
    plan = read_manifest(fused)
    (group,) = [c for c in plan.conversions if c.kind == "group"]
    assert group.dtype == "FP32" and [m["offset"] for m in group.targets["members"]] == [1000 * i for i in range(8)]
    for batch in fuzzed(sample_keras, seed=1):
        assert np.max(np.abs(serve(fused, batch) - serve(sample_keras.model_path, batch))) <= 1e-6


def test_manifest_and_inspect_show_the_groups(sample_keras, optimized):
    opt = optimized(sample_keras, data_type="INT8", int8_dense="weight_only", group_tables=True)
    (group,) = [c for c in read_manifest(opt).conversions if c.kind == "group"]
    members = {m["table"]: m["offset"] for m in group.targets["members"]}
    assert sorted(members) == sorted(sample_keras.embedding_variables)
    assert sorted(members.values()) == [1000 * i for i in range(8)]
    info = lpo.inspect_model(opt).optimized
    assert list(info["groups"]) == [group.node] and "8 tables [8000, 16] INT8:per_dim" in info["groups"][group.node]
    r = subprocess.run([sys.executable, "-m", "lpo", "inspect", opt], capture_output=True, text=True)
    assert r.returncode == 0 and f"group {group.node}: 8 tables" in r.stdout


def test_cli_group_tables_switch(sample_keras, tmp_path):
    for flag, want in (("--group-tables", True), ("--no-group-tables", False)):
        out = tmp_path / flag
        r = subprocess.run([sys.executable, "-m", "lpo", "-q", "optimize", sample_keras.model_path, str(out),
                            "--data-type", "BF16", flag, "--json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert bool([c for c in read_manifest(str(out)).conversions if c.kind == "group"]) is want
        assert read_manifest(str(out)).options["group_tables"] is want


@pytest.mark.parametrize("opts", [{"data_type": "INT8", "int8_dense": "weight_only", "embedding_scheme": "per_row"},
                                  {"data_type": "FP16"}], ids=["int8-per_row", "fp16"])
def test_refresh_and_sharded_conversion_replay_the_group_bit_for_bit(sample_keras, optimized, work, opts):
    opts = {**opts, "group_tables": True}
    opt = optimized(sample_keras, **opts)
    d = work / f"refresh-{opts['data_type']}"
    src, new_model = retrained_model(sample_keras.model_path, str(d))
    again = d / "again"  # the re-optimization of the retrained model
    lpo.optimize(new_model, str(again), calib_file=sample_keras.calib_path, quiet=True, **opts)
    want = tensors(str(again / "variables" / "variables"))
    (group,) = [c for c in read_manifest(opt).conversions if c.kind == "group"]
    assert group.node in want and want[group.node][1] == (8000, 16)
    assert not any(t in want for t in sample_keras.embedding_variables)  # the members live in the group only
    refreshed = lpo.refresh(opt, src, str(d / "refreshed"), quiet=True)
    assert tensors(os.path.join(refreshed.save_path, "variables", "variables")) == want
    prefixes = [lpo.convert_ckpt(src, str(d / f"shard{i}" / "variables"), opt, shard=i, num_shards=3,
                                 quiet=True).save_prefix for i in range(3)]
    merged = lpo.merge_ckpt(prefixes, str(d / "merged" / "variables"))
    assert tensors(merged.save_prefix) == want
    batch = fuzzed(sample_keras)[-1]
    assert np.array_equal(serve(refreshed.save_path, batch), serve(str(again), batch))
