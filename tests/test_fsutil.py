"""Tests of lpo.fsutil on the real filesystem."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lpo.errors import ConfigError, LpoError, OutputExistsError
from lpo.fsutil import (
    atomic_output_dir,
    atomic_output_file,
    check_not_inside,
    check_parent_writable,
    cleanup_stale_temps,
    tree_checksum,
)

REPO = Path(__file__).resolve().parents[1]


def temps(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.lpo-tmp-*"))


def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01\x02")


# --------------------------------------------------------------------------- dirs


def test_dir_success_renames_into_place(tmp_path):
    dest = tmp_path / "out"
    with atomic_output_dir(dest) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.lpo-tmp-")
        assert not dest.exists()
        make_tree(tmp)
    assert (dest / "sub" / "b.bin").read_bytes() == b"\x00\x01\x02"
    assert temps(dest) == []


def test_temp_is_beside_dest_not_in_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    dest = tmp_path / "elsewhere" / "out"
    dest.parent.mkdir()
    with atomic_output_dir(dest) as tmp:
        assert tmp.parent == dest.parent
        assert list(cwd.iterdir()) == []


def test_relative_dest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_output_dir("rel") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "rel" / "x").read_text() == "1"


def test_exception_removes_temp_and_leaves_no_dest(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(dest) as tmp:
            make_tree(tmp)
            raise RuntimeError("boom")
    assert not dest.exists()
    assert temps(dest) == []


def test_keyboard_interrupt_removes_temp(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(dest) as tmp:
            make_tree(tmp)
            raise KeyboardInterrupt
    assert not dest.exists()
    assert temps(dest) == []


def test_refuses_nonempty_without_overwrite(tmp_path):
    dest = tmp_path / "out"
    make_tree(dest)
    before = tree_checksum(dest)
    with pytest.raises(OutputExistsError) as ei:
        with atomic_output_dir(dest):
            pytest.fail("must not enter")
    assert "--overwrite" in str(ei.value) and "overwrite=True" in str(ei.value)
    assert isinstance(ei.value, LpoError) and ei.value.exit_code == 2
    assert tree_checksum(dest) == before
    assert temps(dest) == []


def test_refuses_existing_file_as_dir(tmp_path):
    dest = tmp_path / "out"
    dest.write_text("x")
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(dest):
            pass


def test_empty_existing_dir_is_replaced(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    with atomic_output_dir(dest) as tmp:
        (tmp / "new").write_text("n")
    assert [p.name for p in dest.iterdir()] == ["new"]


def test_overwrite_replaces_old_content(tmp_path):
    dest = tmp_path / "out"
    make_tree(dest)
    with atomic_output_dir(dest, overwrite=True) as tmp:
        (tmp / "new").write_text("n")
        assert (dest / "a.txt").exists()  # old content intact until commit
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert temps(dest) == []


def test_overwrite_failure_keeps_old_content(tmp_path):
    dest = tmp_path / "out"
    make_tree(dest)
    before = tree_checksum(dest)
    with pytest.raises(ValueError):
        with atomic_output_dir(dest, overwrite=True) as tmp:
            (tmp / "new").write_text("n")
            raise ValueError
    assert tree_checksum(dest) == before
    assert temps(dest) == []


def test_missing_parent_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        with atomic_output_dir(tmp_path / "no" / "such" / "out"):
            pass


def test_sigterm_inside_removes_temp_and_restores_handler(tmp_path):
    dest = tmp_path / "out"
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with pytest.raises(SystemExit) as ei:
            with atomic_output_dir(dest) as tmp:
                make_tree(tmp)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
        assert ei.value.code == 128 + signal.SIGTERM
        assert not dest.exists() and temps(dest) == []
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def _child(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


CHILD = """
    import sys, time
    from lpo.fsutil import atomic_output_dir
    with atomic_output_dir(sys.argv[1] if len(sys.argv) > 1 else {dest!r}) as tmp:
        (tmp / "f").write_text("partial")
        print("ready", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_leaves_no_dest(tmp_path, sig):
    dest = tmp_path / "out"
    proc = _child(CHILD.format(dest=str(dest)))
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not dest.exists()
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM
        assert temps(dest) == []
    else:
        assert rc == -signal.SIGKILL
        stale = temps(dest)
        assert len(stale) == 1  # SIGKILL cannot be caught: the temp sibling remains...
        assert cleanup_stale_temps(dest) == stale  # ...and is removed by the next run
        assert temps(dest) == []


def test_next_run_cleans_stale_temp(tmp_path):
    dest = tmp_path / "out"
    stale = tmp_path / ".out.lpo-tmp-999999999-deadbeef"  # pid that cannot exist
    make_tree(stale)
    with atomic_output_dir(dest) as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists()
    assert dest.is_dir() and temps(dest) == []


def test_cleanup_keeps_live_and_unrelated(tmp_path):
    dest = tmp_path / "out"
    mine = tmp_path / f".out.lpo-tmp-{os.getpid()}-abc"
    other = tmp_path / ".other.lpo-tmp-999999999-abc"
    mine.mkdir()
    other.mkdir()
    assert cleanup_stale_temps(dest) == []
    assert mine.exists() and other.exists()


def test_cleanup_restores_set_aside_dest(tmp_path):
    """A kill between the two renames of an overwrite leaves the old dest set aside."""
    dest = tmp_path / "out"
    aside = tmp_path / ".out.lpo-tmp-999999999-abc-old"
    make_tree(aside)
    before = tree_checksum(aside)
    cleanup_stale_temps(dest)
    assert tree_checksum(dest) == before and not aside.exists()


# --------------------------------------------------------------------------- files


def test_file_success_with_numpy_suffix(tmp_path):
    dest = tmp_path / "calib.npz"
    with atomic_output_file(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz"
        np.savez(tmp, x=np.arange(3))
    with np.load(dest) as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert temps(dest) == []


def test_file_refuses_existing_and_overwrites(tmp_path):
    dest = tmp_path / "f.txt"
    dest.write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_output_file(dest) as tmp:
            tmp.write_text("new")
    assert dest.read_text() == "old"
    with atomic_output_file(dest, overwrite=True) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new"


def test_file_failure_removes_temp(tmp_path):
    dest = tmp_path / "f.txt"
    with pytest.raises(RuntimeError):
        with atomic_output_file(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError
    assert not dest.exists() and temps(dest) == []


def test_file_nothing_written_is_an_error(tmp_path):
    with pytest.raises(LpoError):
        with atomic_output_file(tmp_path / "f.txt"):
            pass
    assert not (tmp_path / "f.txt").exists()


# --------------------------------------------------------------------------- checks


def test_check_not_inside(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    check_not_inside(tmp_path / "out", model)
    check_not_inside(tmp_path / "model2", model)  # a sibling sharing a prefix is fine
    for bad in (model, model / "out", model / "a" / "b", tmp_path):
        with pytest.raises(ConfigError):
            check_not_inside(bad, model)


def test_check_not_inside_resolves_symlinks(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(ConfigError):
        check_not_inside(link / "out", model)
    with pytest.raises(ConfigError):
        check_not_inside(tmp_path / "out", link / ".." / "out")


def test_check_parent_writable(tmp_path):
    check_parent_writable(tmp_path / "out")
    with pytest.raises(ConfigError, match="does not exist"):
        check_parent_writable(tmp_path / "missing" / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        check_parent_writable(tmp_path / "file" / "out")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_check_parent_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_parent_writable(ro / "out")
    finally:
        ro.chmod(0o700)


def test_tree_checksum(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    make_tree(b)
    assert tree_checksum(a) == tree_checksum(b)
    assert len(tree_checksum(a)) == 64
    (b / "sub" / "b.bin").write_bytes(b"\x00\x01\x03")
    assert tree_checksum(a) != tree_checksum(b)
    make_tree(tmp_path / "c")
    (tmp_path / "c" / "sub" / "b.bin").rename(tmp_path / "c" / "b.bin")  # same bytes, moved
    assert tree_checksum(a) != tree_checksum(tmp_path / "c")
    d = tmp_path / "d"
    make_tree(d)
    before = tree_checksum(d)
    (d / "empty").mkdir()  # an empty directory counts too
    assert tree_checksum(d) != before
    f = tmp_path / "single"
    f.write_text("hello")
    assert tree_checksum(f) == tree_checksum(f)
    with pytest.raises(FileNotFoundError):
        tree_checksum(tmp_path / "nope")


CKPT_CHILD = """
    import sys
    from lpo.fsutil import atomic_checkpoint
    with atomic_checkpoint(sys.argv[1]) as tmp:
        for suffix in (".data-00000-of-00001", ".index"):
            open(tmp + suffix, "w").write(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()  # every writer is inside its block before any commits
    print("done", flush=True)
"""


def test_concurrent_checkpoints_into_a_fresh_shared_directory_all_succeed(tmp_path):
    """Shards starting together into a missing ``work/`` (a ParallelFor on a fresh volume) all land.

    Each writer creates the shared ancestors as ``mkdir -p`` does and builds only its own
    leaf ``shard-NNNNN/`` atomically; none finds the shared directory "already existing".
    """
    prefixes = [tmp_path / "vol" / "work" / f"shard-{i:05d}" / "variables" for i in range(4)]
    procs = []
    try:
        for p in prefixes:
            proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CKPT_CHILD), str(p)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
            procs.append(proc)
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        assert not (tmp_path / "vol" / "work" / "shard-00000").exists()  # nothing committed yet
        outs = [proc.communicate("go\n", timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * len(procs), [err for _out, err in outs]
    work = tmp_path / "vol" / "work"
    assert sorted(os.listdir(work)) == [f"shard-{i:05d}" for i in range(4)]  # no temp left behind
    for p in prefixes:
        assert sorted(os.listdir(p.parent)) == ["variables.data-00000-of-00001", "variables.index"]
        assert (p.parent / "variables.index").read_text() == str(p)


def test_checkpoint_into_a_new_directory_is_atomic_at_its_leaf(tmp_path):
    """A failure leaves no leaf directory (only the empty ancestors ``mkdir -p`` made); a file in the way is refused."""
    from lpo.fsutil import atomic_checkpoint

    prefix = tmp_path / "a" / "b" / "leaf" / "variables"
    with pytest.raises(RuntimeError):
        with atomic_checkpoint(prefix) as tmp:
            open(tmp + ".index", "w").write("x")
            raise RuntimeError("boom")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b"]
    with atomic_checkpoint(prefix) as tmp:
        open(tmp + ".index", "w").write("x")
    assert sorted(os.listdir(prefix.parent)) == ["variables.index"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        with atomic_checkpoint(tmp_path / "file" / "sub" / "leaf" / "variables"):
            pass
