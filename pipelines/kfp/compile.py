"""Compile the lpo pipelines to KFP IR YAML.

Usage: ``python -m pipelines.kfp.compile [--out-dir DIR]`` (``make pipelines``).
Writes ``optimize_pipeline.yaml``, ``refresh_pipeline.yaml`` and ``sharded_refresh_pipeline.yaml``
(default: build/pipelines).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("lpo.pipelines")


def compile_all(out_dir: str) -> dict[str, str]:
    """Compile the pipelines into ``out_dir``; return ``{name: yaml path}``."""
    from kfp import compiler

    from lpo.components.pipelines import optimize_pipeline, refresh_pipeline, sharded_refresh_pipeline

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, func in (("optimize_pipeline", optimize_pipeline), ("refresh_pipeline", refresh_pipeline),
                       ("sharded_refresh_pipeline", sharded_refresh_pipeline)):
        path = os.path.join(out_dir, f"{name}.yaml")
        compiler.Compiler().compile(pipeline_func=func, package_path=path)
        log.info("compiled %s -> %s", name, path)
        paths[name] = path
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join("build", "pipelines"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in compile_all(args.out_dir).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
