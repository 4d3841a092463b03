"""Edge defects of issue 14 on real models and real file systems: a {serve, gpu} model, a full disk."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lpo
from lpo.core.savedmodel import SAVED_MODEL_PB, read_saved_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_model_tagged_serve_gpu_optimizes_int8_static_and_validates(sample_resource, tmp_path):
    model = tmp_path / "gpu_model"
    shutil.copytree(sample_resource.model_path, model)
    sm = read_saved_model(str(model))
    sm.meta_graphs[0].meta_info_def.tags.append("gpu")
    (model / SAVED_MODEL_PB).write_bytes(sm.SerializeToString())
    # static INT8 calibrates by running the model: the runner must find the {serve, gpu} MetaGraph too
    res = lpo.optimize(str(model), str(tmp_path / "out"), data_type="INT8", calib_file=sample_resource.calib_path,
                       int8_dense="simulate", quiet=True)
    assert res.optimized and all(c.activation_range for c in lpo.core.plan.read_manifest(res.save_path).conversions
                                 if c.kind == "dense")
    assert sorted(read_saved_model(res.save_path).meta_graphs[0].meta_info_def.tags) == ["gpu", "serve"]
    rep = lpo.validate(str(model), res.save_path, sample_resource.heldout_path, tags="serve", batch_sizes=(8,),
                       warmup=0, iters=1, max_rows=500, max_auc_drop=None, raise_on_fail=False)
    assert rep.settings["tags"] == ["serve"] and rep.outputs and rep.optimized_nodes


# --- a full disk -------------------------------------------------------------------------------------------
def _tiny_fs_run(tmp_path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a ``size`` tmpfs mounted at $FS, in a private mount namespace."""
    fs = tmp_path / "fs"
    fs.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {fs}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs unshare with user namespaces, or root)")
    env = dict(os.environ, FS=str(fs), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = f"mount -t tmpfs -o size={size} tmpfs \"$FS\" && {script}; rc=$?; ls -A \"$FS\" >&2; exit $rc"
    return subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=600,
                          cwd=REPO)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("I0000")]


def test_full_disk_is_one_line_exit_4_and_leaves_nothing(sample_resource, tmp_path):
    """Every command that writes, on a full file system: exit 4, one line naming the path and the space."""
    s = sample_resource
    opt = tmp_path / "opt"
    lpo.optimize(s.model_path, str(opt), data_type="BF16", quiet=True)
    ckpt = os.path.join(s.model_path, "variables", "variables")
    commands = {  # FS: the full file system
        "optimize": ["optimize", s.model_path, "FS/out"],
        "refresh": ["refresh", str(opt), ckpt, "FS/out"],
        "convert-ckpt": ["convert-ckpt", ckpt, "FS/ckpt/variables", str(opt)],
        "calibrate": ["calibrate", s.heldout_path, "FS/calib.npz", "--model", s.model_path, "--rows", "20000"],
    }
    script = textwrap.dedent("""
        import contextlib, io, json, os, sys
        from lpo.cli import main
        fs, out = os.environ["FS"], {}
        for name, argv in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(["-q"] + [a.replace("FS", fs, 1) if a.startswith("FS/") else a for a in argv])
            out[name] = [rc, err.getvalue(), sorted(os.listdir(fs))]
        print(json.dumps(out))
    """)
    r = _tiny_fs_run(tmp_path, "64k", f"{sys.executable} -c '{script}' '{json.dumps(commands)}'")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for name, (rc, err, left) in results.items():
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 4 and len(lines) == 1, (name, rc, err)
        assert lines[0].startswith("lpo: error: not enough disk space to write ") and "needs at least" in lines[0] \
            and "free" in lines[0], (name, lines)
        assert left == [], (name, left)  # nothing half-written


def test_full_disk_while_writing_python_and_tensorflow(tmp_path):
    """The space check passed (or was not possible) and the disk fills up mid-write: the same error, no temp left."""
    script = textwrap.dedent("""
        import os, sys
        import numpy as np
        from lpo.errors import OutOfSpaceError
        from lpo.fsutil import atomic_output_dir, atomic_output_file, no_space_as_error
        fs = os.environ["FS"]
        try:
            with atomic_output_file(os.path.join(fs, "big.bin")) as tmp:  # size unknown in advance
                with open(tmp, "wb") as f:
                    f.write(b"x" * (1 << 20))
        except OutOfSpaceError as e:
            print("python:", e)
        import tensorflow as tf
        try:
            with atomic_output_dir(os.path.join(fs, "model")) as tmp:
                tf.raw_ops.SaveV2(prefix=os.path.join(str(tmp), "ckpt"), tensor_names=["t"], shape_and_slices=[""],
                                  tensors=[tf.constant(np.zeros((1 << 18,), np.float32))])
        except OutOfSpaceError as e:
            print("tensorflow:", e)
        print("left:", os.listdir(fs))
    """)
    r = _tiny_fs_run(tmp_path, "256k", f"{sys.executable} -c '{script}'")
    out = r.stdout.splitlines()
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("python: not enough disk space to write ") and "big.bin" in ln for ln in out), r.stdout
    assert any(ln.startswith("tensorflow: not enough disk space to write ") and "model" in ln for ln in out), r.stdout
    assert "left: []" in out
