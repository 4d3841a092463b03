"""Publish (lpo.orchestration.publish_model) is atomic and durable for a reader, and input discovery.

Models here are small hand-made SavedModel-shaped directories (publish never loads them).
The kill tests run the real publish in a subprocess (tests/publish_killer.py) that
SIGKILLs itself at a chosen point; afterwards a reader must find the old model or the
new one, complete, and a second publish must finish the job and leave no temporary.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lpo.errors import ConfigError, DataError, OutputExistsError
from lpo.fsutil import atomic_output_dir, exchange, tree_checksum
from lpo.orchestration import (
    PUBLISH_RECORD, newest_checkpoint, newest_saved_model, publish_model, read_publish_record, run_key,
    served_model,
)

HERE = os.path.dirname(os.path.abspath(__file__))
KILLER = os.path.join(HERE, "publish_killer.py")


def fake_model(path: Path, tag: str, files: int = 6) -> Path:
    """A directory shaped like a SavedModel whose bytes depend on ``tag``."""
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(f"graph {tag}".encode() * 100)
    (path / "variables" / "variables.index").write_bytes(f"index {tag}".encode())
    for i in range(files):
        (path / "variables" / f"variables.data-{i:05d}-of-{files:05d}").write_bytes(
            (f"{tag}{i}".encode() * 5000))
    (path / "assets.extra").mkdir()
    (path / "assets.extra" / "lpo_manifest.json").write_text(json.dumps({"tag": tag}))
    return path


def content(path) -> str:
    """Checksum of a published model without its publish record."""
    path = Path(path)
    rec = path / "assets.extra" / PUBLISH_RECORD
    saved = rec.read_bytes() if rec.exists() else None
    if saved is not None:
        rec.unlink()
    try:
        return tree_checksum(path)
    finally:
        if saved is not None:
            rec.write_bytes(saved)


def temps(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".lpo-tmp-" in p.name)


@pytest.fixture()
def models(tmp_path):
    a = fake_model(tmp_path / "model_a", "A")
    b = fake_model(tmp_path / "model_b", "B")
    return a, b, tree_checksum(a), tree_checksum(b)


# --------------------------------------------------------------------------- behaviour


def test_publish_layout_record_and_idempotent_retry(models, tmp_path):
    a, b, ca, cb = models
    serving = tmp_path / "serving"
    out = publish_model(str(a), str(serving), "20250102000000", inputs={"model_path": "/x"})
    dest = serving / "versions" / "20250102000000"
    assert out["published"] == str(dest) and out["unchanged"] is False
    assert os.readlink(serving / "current") == "versions/20250102000000"
    assert content(dest) == ca
    rec = read_publish_record(str(dest))
    assert rec["source_checksum"] == ca and rec["inputs"] == {"model_path": "/x"}
    assert served_model(str(serving)) == str(dest)
    # A retry with the same model does not copy again.
    mtime = (dest / "saved_model.pb").stat().st_mtime_ns
    again = publish_model(str(a), str(serving), "20250102000000")
    assert again["unchanged"] is True and (dest / "saved_model.pb").stat().st_mtime_ns == mtime
    # Another model under the same version replaces it; a new version moves current.
    publish_model(str(b), str(serving), "20250102000000")
    assert content(dest) == cb
    publish_model(str(a), str(serving), "20250103000000")
    assert os.readlink(serving / "current") == "versions/20250103000000"
    assert temps(serving) == []


def test_publish_tf_serving_layout(models, tmp_path):
    a, b, ca, _ = models
    serving = tmp_path / "tfs"
    out = publish_model(str(a), str(serving), "7", layout="tf_serving")
    assert out["published"] == str(serving / "7") and out["current"] is None
    assert sorted(os.listdir(serving)) == ["7"]
    assert served_model(str(serving)) == str(serving / "7")
    publish_model(str(a), str(serving), 7, layout="TF_SERVING")  # same model again: fine
    with pytest.raises(OutputExistsError, match="new \\(higher\\) version"):
        publish_model(str(b), str(serving), "7", layout="tf_serving")
    with pytest.raises(ConfigError, match="positive integer"):
        publish_model(str(a), str(serving), "v8", layout="tf_serving")
    publish_model(str(b), str(serving), "12", layout="tf_serving")
    assert served_model(str(serving)) == str(serving / "12")


def test_publish_refuses_bad_input(tmp_path, models):
    a = models[0]
    with pytest.raises(DataError):
        publish_model(str(tmp_path / "missing"), str(tmp_path / "s"), "1")
    with pytest.raises(ConfigError, match="layout"):
        publish_model(str(a), str(tmp_path / "s"), "1", layout="flat")
    with pytest.raises(ConfigError):
        publish_model(str(a), str(tmp_path / "s"), "  ")


def test_publish_checks_the_serving_directory_up_front(tmp_path, models):
    """A file, a missing parent or a read-only directory: ConfigError before anything is copied."""
    a = models[0]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        publish_model(str(a), str(tmp_path / "afile"), "1")
    with pytest.raises(ConfigError, match="not a directory"):
        publish_model(str(a), str(tmp_path / "afile" / "serving"), "1")
    with pytest.raises(ConfigError, match="does not exist"):
        publish_model(str(a), str(tmp_path / "no" / "such" / "serving"), "1")
    assert not (tmp_path / "no").exists()
    out = publish_model(str(a), str(tmp_path / "serving"), "1")  # a missing serving_dir itself is created
    assert out["published"] == str(tmp_path / "serving" / "versions" / "1")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        try:
            with pytest.raises(ConfigError, match="not writable"):
                publish_model(str(a), str(ro), "1")
            with pytest.raises(ConfigError, match="not writable"):
                publish_model(str(a), str(ro / "serving"), "1")
        finally:
            ro.chmod(0o755)


def _lpo(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "lpo", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("where,match", [("afile", "is not a directory"),
                                         ("afile/serving", "not a directory"),
                                         ("missing/serving", "does not exist")])
def test_cli_publish_bad_serving_dir_is_one_line_exit_2(tmp_path, models, where, match):
    (tmp_path / "afile").write_text("x")
    r = _lpo("publish", str(models[0]), str(tmp_path / where), "--version", "1")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "missing").exists()


def test_exchange_swaps_directories(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    x.mkdir()
    y.mkdir()
    (x / "f").write_text("x")
    (y / "f").write_text("y")
    if not exchange(x, y):
        pytest.skip("this file system cannot exchange directories (renameat2)")
    assert (x / "f").read_text() == "y" and (y / "f").read_text() == "x"


def test_overwrite_never_leaves_destination_missing(tmp_path):
    """A reader polling an output directory while it is overwritten never finds it missing."""
    dest = tmp_path / "out"
    with atomic_output_dir(dest) as t:
        (t / "f").write_text("0")
    probe_x, probe_y = tmp_path / "px", tmp_path / "py"
    probe_x.mkdir()
    probe_y.mkdir()
    if not exchange(probe_x, probe_y):
        pytest.skip("this file system cannot exchange directories (renameat2)")
    stop, missing, seen = threading.Event(), [], set()

    def reader():
        while not stop.is_set():
            try:
                seen.add((dest / "f").read_text())
            except FileNotFoundError:
                missing.append(1)

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(1, 200):
            with atomic_output_dir(dest, overwrite=True) as t:
                (t / "f").write_text(str(i))
    finally:
        stop.set()
        th.join()
    assert not missing
    assert len(seen) > 1


# --------------------------------------------------------------------------- kills


def _publish(stage, model, serving, version="20250102000000", layout="current"):
    return subprocess.run([sys.executable, KILLER, stage, str(model), str(serving), version, layout],
                          capture_output=True, text=True, timeout=120)


def _check_reader_view(serving: Path, allowed: set, version="20250102000000", existed=True):
    """What a server sees: ``current`` and ``versions/<v>`` are complete old or new models."""
    current = serving / "current"
    if existed:
        assert current.is_symlink(), "current disappeared"
        assert content(current) in allowed
        assert content(serving / "versions" / version) in allowed
    elif current.exists():
        assert content(current) in allowed


@pytest.mark.parametrize("stage", ["copy:3", "before-commit", "after-commit", "link-created", "after-link"])
def test_kill_first_publish(models, tmp_path, stage):
    a, b, ca, cb = models
    serving = tmp_path / "serving"
    publish_model(str(a), str(serving), "20250101000000")  # what is served before
    proc = _publish(stage, b, serving)
    assert proc.returncode == -9, proc.stderr
    _check_reader_view(serving, {ca, cb}, version="20250101000000")
    new = serving / "versions" / "20250102000000"
    assert not new.exists() or content(new) == cb  # absent or complete, never partial
    proc = _publish("none", b, serving)
    assert proc.returncode == 0, proc.stderr
    assert content(serving / "current") == cb
    assert os.readlink(serving / "current") == "versions/20250102000000"
    assert temps(serving) == []


@pytest.mark.parametrize("stage", ["copy:3", "before-commit", "after-exchange", "link-created"])
def test_kill_republish_same_version(models, tmp_path, stage):
    a, b, ca, cb = models
    serving = tmp_path / "serving"
    publish_model(str(a), str(serving), "20250102000000")
    if stage == "after-exchange":
        x, y = tmp_path / "px", tmp_path / "py"
        x.mkdir()
        y.mkdir()
        if not exchange(x, y):
            pytest.skip("this file system cannot exchange directories (renameat2)")
    proc = _publish(stage, b, serving)
    assert proc.returncode == -9, proc.stderr
    _check_reader_view(serving, {ca, cb})
    proc = _publish("none", b, serving)
    assert proc.returncode == 0, proc.stderr
    assert content(serving / "current") == cb
    assert temps(serving) == []


@pytest.mark.parametrize("stage", ["copy:2", "before-commit", "after-commit"])
def test_kill_tf_serving_publish(models, tmp_path, stage):
    a, b, ca, cb = models
    serving = tmp_path / "tfs"
    publish_model(str(a), str(serving), "1", layout="tf_serving")
    proc = _publish(stage, b, serving, version="2", layout="tf_serving")
    assert proc.returncode == -9, proc.stderr
    # TF Serving lists numeric directories only: each is complete, temporaries are dot-names.
    numeric = sorted(n for n in os.listdir(serving) if n.isdigit())
    assert numeric in (["1"], ["1", "2"])
    assert all(content(serving / n) in {ca, cb} for n in numeric)
    assert all(n.startswith(".") for n in os.listdir(serving) if not n.isdigit())
    assert _publish("none", b, serving, version="2", layout="tf_serving").returncode == 0
    assert sorted(os.listdir(serving)) == ["1", "2"] and content(serving / "2") == cb


@pytest.mark.slow
def test_readers_during_republish(models, tmp_path):
    """A process re-publishes one version over and over; a reader never finds it missing."""
    a, b, ca, cb = models
    serving = tmp_path / "serving"
    publish_model(str(a), str(serving), "20250102000000")
    x, y = tmp_path / "px", tmp_path / "py"
    x.mkdir()
    y.mkdir()
    if not exchange(x, y):
        pytest.skip("this file system cannot exchange directories (renameat2)")
    script = ("import sys\nfrom lpo.orchestration import publish_model\n"
              "for i in range(60):\n"
              "    publish_model(sys.argv[1 + i % 2], sys.argv[3], '20250102000000')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(b), str(a), str(serving)])
    gaps, seen = 0, set()
    version = serving / "versions" / "20250102000000"
    try:
        paths = [str(serving / "current" / "saved_model.pb"), str(version / "saved_model.pb")]
        while proc.poll() is None:
            for p in paths:
                try:
                    with open(p, "rb") as f:
                        seen.add(f.read(7))
                except FileNotFoundError:
                    gaps += 1
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    assert gaps == 0
    assert seen == {b"graph A", b"graph B"}


# --------------------------------------------------------------------------- discovery


def _ckpt(prefix: Path, shards: int = 1, complete: bool = True):
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for i in range(shards if complete else shards - 1):
        Path(f"{prefix}.data-{i:05d}-of-{shards:05d}").write_bytes(b"d")
    Path(f"{prefix}.index").write_bytes(b"i")
    return str(prefix)


def test_newest_saved_model(tmp_path, models):
    root = tmp_path / "training"
    assert newest_saved_model(str(root)) is None
    root.mkdir()
    assert newest_saved_model(str(root)) is None
    fake_model(root / "20250102" / "saved_model", "1")
    fake_model(root / "20250110" / "saved_model", "2")
    fake_model(root / "temp-20250111", "tmp")       # Estimator's in-progress export
    fake_model(root / ".20250112.lpo-tmp-1-aa", "tmp")
    (root / "20250111" / "saved_model").mkdir(parents=True)  # not complete: no graph
    assert newest_saved_model(str(root)) == str(root / "20250110" / "saved_model")
    fake_model(root / "1736000000", "3")             # Estimator export_dir_base/<timestamp>
    assert newest_saved_model(str(root)) == str(root / "1736000000")
    assert newest_saved_model(str(root / "20250102" / "saved_model")) == str(root / "20250102" / "saved_model")


def test_newest_checkpoint(tmp_path):
    root = tmp_path / "ckpts"
    assert newest_checkpoint(str(root)) is None
    _ckpt(root / "run1" / "model.ckpt-900")
    _ckpt(root / "run1" / "model.ckpt-1000", shards=2)
    _ckpt(root / "run1" / "model.ckpt-1100", shards=2, complete=False)  # a shard missing
    assert newest_checkpoint(str(root)) == str(root / "run1" / "model.ckpt-1000")
    _ckpt(root / "run2" / "ckpt")
    assert newest_checkpoint(str(root)) == str(root / "run2" / "ckpt")
    _ckpt(root / ".run3" / "ckpt")
    assert newest_checkpoint(str(root)) == str(root / "run2" / "ckpt")
    assert newest_checkpoint(str(root / "run1" / "model.ckpt-900")) == str(root / "run1" / "model.ckpt-900")


def test_run_key():
    import datetime as dt

    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert run_key(when) == "20250102010405"
    assert run_key("2025-01-02T03:04:05+00:00") == "20250102030405"
    assert len(run_key()) == 14


def test_an_export_or_checkpoint_already_served_is_nothing_new(tmp_path, models):
    """Retrain (like refresh) skips an input found by an Asset event or as the newest that is already served.

    The served model was optimized from ``20250102`` and then refreshed with ``run1``: a retrain
    of ``20250102`` would replace that refresh with the older weights. An explicit path always runs.
    """
    from lpo.orchestration import NothingToDo, find_refresh_inputs, find_retrain_inputs

    training, serving, work = tmp_path / "training", str(tmp_path / "serving"), str(tmp_path / "work")
    export = str(fake_model(training / "20250102" / "saved_model", "fp32"))
    ckpt = _ckpt(tmp_path / "ckpts" / "run1" / "model.ckpt-100")
    publish_model(str(models[0]), serving, "20250103000000", inputs={"fp32_model": export, "ckpt_prefix": ckpt})
    for kw in ({"root": str(training)}, {"event_path": export}):
        with pytest.raises(NothingToDo, match="already served"):
            find_retrain_inputs(serving_dir=serving, work_dir=work, **kw)
        with pytest.raises(NothingToDo, match="already served"):
            find_refresh_inputs(serving_dir=serving, work_dir=work,
                                **({"root": str(tmp_path / "ckpts")} if "root" in kw else {"event_path": ckpt}))
    assert find_retrain_inputs(path=export, serving_dir=serving, work_dir=work)["found_by"] == "param"
    assert find_refresh_inputs(path=ckpt, serving_dir=serving, work_dir=work)["opt_model_path"] == \
        str(tmp_path / "serving" / "versions" / "20250103000000")
    assert find_retrain_inputs(root=str(training), work_dir=work)["model_path"] == export  # nothing served there
    newer = str(fake_model(training / "20250110" / "saved_model", "fp32-2"))
    assert find_retrain_inputs(root=str(training), serving_dir=serving, work_dir=work)["model_path"] == newer
