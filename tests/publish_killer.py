"""Publish a model, SIGKILLing this process at a chosen point (tests/test_publish.py).

Usage: python publish_killer.py STAGE MODEL SERVING_DIR VERSION [LAYOUT]

STAGE is where the process kills itself (``kill -9`` semantics: no cleanup runs):
  none            publish normally
  copy:N          after the N-th file of the model is copied into the temporary directory
  before-commit   the copy is complete and fsynced, before it is renamed into place
  after-exchange  right after an existing version was exchanged with the new copy
  after-commit    the version directory is in place, before ``current`` is switched
  link-created    the new ``current`` link exists under its temporary name, before the replace
  after-link      ``current`` switched, before publish returns
The hooks wrap lpo's own functions from outside; the library has no test hooks.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    stage, model, serving, version = argv[:4]
    layout = argv[4] if len(argv) > 4 else "current"
    from lpo import fsutil, orchestration

    if stage.startswith("copy:"):
        limit, real_copyfile, count = int(stage.split(":")[1]), shutil.copyfile, [0]

        def copyfile(src, dst, **kw):  # copytree -> copy2 -> copyfile
            out = real_copyfile(src, dst, **kw)
            count[0] += 1
            if count[0] >= limit:
                die()
            return out
        shutil.copyfile = copyfile
    elif stage in ("before-commit", "after-commit"):
        real_commit = fsutil._commit_dir

        def commit(tmp, dest, overwrite):
            if stage == "before-commit":
                die()
            real_commit(tmp, dest, overwrite)
            die()
        fsutil._commit_dir = commit
    elif stage == "after-exchange":
        real_exchange = fsutil.exchange

        def exchange(a, b):
            ok = real_exchange(a, b)
            assert ok, "this file system cannot exchange directories"
            die()
        fsutil.exchange = exchange
    elif stage == "link-created":
        real_symlink = os.symlink

        def symlink(src, dst, *a, **kw):
            real_symlink(src, dst, *a, **kw)
            die()
        os.symlink = symlink
    elif stage == "after-link":
        real_link = fsutil.atomic_symlink

        def atomic_symlink(target, link):
            real_link(target, link)
            die()
        fsutil.atomic_symlink = atomic_symlink
    elif stage != "none":
        raise SystemExit(f"unknown stage {stage}")
    out = orchestration.publish_model(model, serving, version, layout=layout)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
