"""Bounded fuzz of the SavedModel / opt_config loaders (issue 6).

Mutated copies of the sample: bytes of ``saved_model.pb`` flipped, truncated, inserted; and proto
edits of node ops, attrs and inputs, signatures, collections and the saver. ``lpo.inspect_model``
and ``lpo.optimize`` must either succeed or raise an ``LpoError`` -- never another exception and
never crash the interpreter. The cases run in a subprocess so a segfault or abort shows up as a
failure naming the case. opt_config values and JSON files are fuzzed the same way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

N_BYTE_CASES = 18

WORKER = textwrap.dedent(r'''
    import json, os, random, shutil, sys, traceback
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import lpo
    from lpo.errors import LpoError
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.core.framework import types_pb2

    src, work, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    def load(m):
        sm = saved_model_pb2.SavedModel()
        with open(os.path.join(m, "saved_model.pb"), "rb") as f:
            sm.ParseFromString(f.read())
        return sm

    def save(m, sm):
        with open(os.path.join(m, "saved_model.pb"), "wb") as f:
            f.write(sm.SerializeToString())

    def node(mg, op, k=0):
        return [n for n in mg.graph_def.node if n.op == op][k]

    def byname(mg, name):
        return next(n for n in mg.graph_def.node if n.name == name)

    def proto_mutation(name, mg):
        emb = node(mg, "VarHandleOp")
        gather = node(mg, "ResourceGather")
        mm = node(mg, "MatMul")
        if name == "input-to-missing-node":
            mm.input[0] = "no/such/node"
        elif name == "input-port-out-of-range":
            mm.input[1] = mm.input[1].split(":")[0] + ":99"
        elif name == "input-bad-syntax":
            gather.input[1] = "a:b:c"
        elif name == "self-cycle":
            mm.input[0] = mm.name
        elif name == "remove-variable-node":
            mg.graph_def.node.remove(emb)
        elif name == "variable-dtype-string":
            emb.attr["dtype"].type = types_pb2.DT_STRING
        elif name == "variable-shape-unknown-rank":
            emb.attr["shape"].shape.Clear()
            emb.attr["shape"].shape.unknown_rank = True
        elif name == "variable-shape-wrong":
            emb.attr["shape"].shape.dim[0].size = 7
        elif name == "gather-without-dtype":
            del gather.attr["dtype"]
        elif name == "unknown-op":
            mm.op = "NoSuchOpLpoFuzz"
        elif name == "matmul-transpose-attr-garbage":
            mm.attr["transpose_b"].s = b"yes"
        elif name == "duplicate-node-name":
            mm.name = gather.name
        elif name == "signature-input-missing-tensor":
            sig = mg.signature_def["serving_default"]
            k = sorted(sig.inputs)[0]
            sig.inputs[k].name = "no_such_placeholder:0"
        elif name == "signature-output-missing-tensor":
            sig = mg.signature_def["serving_default"]
            k = sorted(sig.outputs)[0]
            sig.outputs[k].name = "nowhere:3"
        elif name == "variables-collection-garbage":
            col = mg.collection_def["variables"].bytes_list.value
            col[0] = b"\xff\xfe garbage"
        elif name == "variables-collection-unknown-node":
            from tensorflow.core.framework import variable_pb2
            vd = variable_pb2.VariableDef()
            vd.ParseFromString(mg.collection_def["variables"].bytes_list.value[0])
            vd.variable_name = "ghost:0"
            mg.collection_def["variables"].bytes_list.value[0] = vd.SerializeToString()
        elif name == "saver-def-garbage":
            mg.saver_def.filename_tensor_name = "nope:0"
            mg.saver_def.restore_op_name = "nope/restore_all"
        elif name == "savev2-names-const-garbage":
            save = node(mg, "SaveV2")
            c = byname(mg, save.input[1].split(":")[0])
            c.attr["value"].tensor.ClearField("string_val")
            c.attr["value"].tensor.tensor_content = b"\x01\x02\x03"
        elif name == "node-reads-saver":
            mm.input.append("^save/restore_all")
        elif name == "tf2-object-graph":
            mg.object_graph_def.nodes.add()
        elif name == "no-meta-graphs":
            return "clear"
        elif name == "huge-shape-dim":
            emb.attr["shape"].shape.dim[0].size = 2 ** 62
        elif name == "attr-value-wrong-kind":
            gather.attr["dtype"].Clear()
            gather.attr["dtype"].s = b"float"
        elif name == "const-value-truncated":
            c = next(n for n in mg.graph_def.node if n.op == "Const"
                     and n.attr["value"].tensor.tensor_content)
            c.attr["value"].tensor.tensor_content = c.attr["value"].tensor.tensor_content[:3]
        else:
            raise AssertionError(name)

    def byte_mutation(kind, seed, data):
        rng = random.Random(seed)
        b = bytearray(data)
        if kind == "flip":
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            b = b[: rng.randrange(1, len(b))]
        elif kind == "insert":
            i = rng.randrange(len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return bytes(b)

    def outcome(fn):
        try:
            fn()
            return "ok"
        except LpoError as e:
            return "LpoError:" + type(e).__name__ + ":" + str(e)[:300]
        except BaseException as e:
            return "BAD:" + type(e).__name__ + ":" + " ".join(str(e).split())[:500] + " @ " + \
                traceback.format_exc().strip().splitlines()[-3][:200]

    for case in cases:
        cid = case["id"]
        print(json.dumps({"start": cid}), flush=True)
        d = os.path.join(work, cid)
        m = os.path.join(d, "model")
        shutil.copytree(src, m)
        pb = os.path.join(m, "saved_model.pb")
        if case["kind"] == "bytes":
            with open(pb, "rb") as f:
                data = f.read()
            with open(pb, "wb") as f:
                f.write(byte_mutation(case["mut"], case["seed"], data))
        else:
            sm = load(m)
            if proto_mutation(case["mut"], sm.meta_graphs[0]) == "clear":
                del sm.meta_graphs[:]
            save(m, sm)
        res = {"id": cid, "inspect": outcome(lambda: lpo.inspect_model(m))}
        res["optimize"] = outcome(lambda: lpo.optimize(m, os.path.join(d, "out"), data_type="BF16",
                                                       dense_mode="weight_only", quiet=True))
        res["out_complete_or_absent"] = (not os.path.exists(os.path.join(d, "out"))
                                         or os.path.isfile(os.path.join(d, "out", "variables", "variables.index")))
        res["temps_left"] = [n for n in os.listdir(d) if ".lpo-tmp-" in n]
        print(json.dumps(res), flush=True)
        shutil.rmtree(d)
''')

PROTO_MUTATIONS = [
    "input-to-missing-node", "input-port-out-of-range", "input-bad-syntax", "self-cycle", "remove-variable-node",
    "variable-dtype-string", "variable-shape-unknown-rank", "variable-shape-wrong", "gather-without-dtype",
    "unknown-op", "matmul-transpose-attr-garbage", "duplicate-node-name", "signature-input-missing-tensor",
    "signature-output-missing-tensor", "variables-collection-garbage", "variables-collection-unknown-node",
    "saver-def-garbage", "savev2-names-const-garbage", "node-reads-saver", "tf2-object-graph", "no-meta-graphs",
    "huge-shape-dim", "attr-value-wrong-kind", "const-value-truncated",
]


def _cases():
    cases = [{"id": f"proto-{m}", "kind": "proto", "mut": m} for m in PROTO_MUTATIONS]
    kinds = ["flip", "truncate", "insert"]
    cases += [{"id": f"bytes-{kinds[i % 3]}-{i}", "kind": "bytes", "mut": kinds[i % 3], "seed": 1000 + i}
              for i in range(N_BYTE_CASES)]
    return cases


def test_mutated_savedmodels_raise_lpo_errors_only(sample_resource, tmp_path):
    cases = _cases()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", WORKER, sample_resource.model_path, str(work), json.dumps(cases)],
                          capture_output=True, text=True, timeout=400, env=env, cwd=str(tmp_path))
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    results = [x for x in lines if "id" in x]
    started = [x["start"] for x in lines if "start" in x]
    assert proc.returncode == 0, (f"the interpreter died (rc {proc.returncode}) in case {started[-1] if started else '?'}"
                                  f": {proc.stderr[-3000:]}")
    assert len(results) == len(cases)
    bad = [(r["id"], step, r[step]) for r in results for step in ("inspect", "optimize")
           if r[step].startswith("BAD:")]
    assert not bad, "non-LpoError exceptions:\n" + "\n".join(map(str, bad))
    assert all(r["out_complete_or_absent"] and not r["temps_left"] for r in results), results
    # the fuzz bites: most mutations are refused, and every refusal says something
    refused = [r for r in results if r["optimize"] != "ok"]
    assert len(refused) >= len(cases) // 2, [(r["id"], r["optimize"][:80]) for r in results]
    summary = {r["id"]: (r["inspect"].split(":")[1] if r["inspect"] != "ok" else "ok",
                         r["optimize"].split(":")[1] if r["optimize"] != "ok" else "ok") for r in results}
    print(json.dumps(summary, indent=1))


@pytest.mark.parametrize("cfg", [
    None.__class__, 3, 2.5, "INT8", b"INT8", ["x"], ("a", "b"), {"x"}, {None: "INT8"}, {("t",): "INT8"},
    {"": "INT8"}, {"\udcff": "INT8"}, {"dlrm/top_mlp/layer0/MatMul": None},
    {"dlrm/top_mlp/layer0/MatMul": ["INT8"]}, {"dlrm/top_mlp/layer0/MatMul": {"dtype": "INT8", "bits": 8}},
    {"dlrm/top_mlp/layer0/MatMul": "int 8"}, {"dlrm/top_mlp/layer0/MatMul": float("nan")},
    {"dlrm/top_mlp/layer0/MatMul": True}, {"dlrm/top_mlp/layer0/MatMul ": "BF16"},
])
def test_fuzzed_opt_config_is_a_config_error(sample_resource, tmp_path, cfg):
    import lpo
    from lpo.errors import ConfigError

    with pytest.raises(ConfigError):
        lpo.optimize(sample_resource.model_path, str(tmp_path / "m"), opt_config=cfg, quiet=True)
    assert not (tmp_path / "m").exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("text", [
    "", "{", "[]", "null", "1", '"INT8"', '{"a": "INT8"', "{'a': 'INT8'}", "\xff\xfe{}", '{"a": NaN}',
    '[{"a": "INT8"}]', "{}" * 3,
])
def test_fuzzed_opt_config_json_is_a_config_error(tmp_path, text):
    import lpo
    from lpo.errors import ConfigError
    from lpo.options import normalize_opt_config

    p = tmp_path / "cfg.json"
    p.write_bytes(text.encode("utf-8", "surrogateescape") if text.isascii() else text.encode("latin-1"))
    for load in (lpo.load_opt_config, normalize_opt_config):
        try:
            cfg = load(str(p))
        except ConfigError:
            continue
        assert isinstance(cfg, dict), (load.__module__, text, cfg)
