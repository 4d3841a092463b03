"""``lpo samples``: write the bundled sample model, its data and "retrained" checkpoints to user paths.

So that the pipelines (``lpo_retrain``/``lpo_refresh``, the KFP pipelines) can be tried
without writing Python: :func:`write_sample` copies the sample FP32 SavedModel (built
once and cached, ~30 s) and its calibration/held-out data; :func:`write_checkpoint`
writes a perturbed copy of a model's checkpoint, as a training job would.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

from lpo.errors import ConfigError, OutputExistsError

log = logging.getLogger(__name__)

#: File names :func:`write_sample` gives the data (the Airflow DAGs' default names).
CALIB_SOURCE = "calibration.csv"
HELDOUT = "heldout.npz"


@dataclass
class SampleFiles:
    """Where :func:`write_sample` wrote things."""

    model_path: str
    calib_source: Optional[str] = None
    heldout_data: Optional[str] = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def summary(self) -> str:
        """One line per file written."""
        lines = [f"sample FP32 SavedModel: {self.model_path}"]
        if self.calib_source:
            lines.append(f"calibration source:     {self.calib_source}")
            lines.append(f"held-out data:          {self.heldout_data}")
        return "\n".join(lines)


def write_sample(out: str, data_dir: Optional[str] = None, *, variant: str = "resource",
                 overwrite: bool = False, cache_dir: Optional[str] = None, arch: str = "small") -> SampleFiles:
    """Copy the sample FP32 SavedModel to ``out`` and, with ``data_dir``, its data there.

    ``arch`` picks the model (:data:`lpo.samples.tf1.ARCHS`): ``small``, ``mlperf`` or ``dot``
    (DeepRec modelzoo's DLRM with the dot interaction).

    ``data_dir`` gets ``calibration.csv`` (training rows to calibrate from) and
    ``heldout.npz`` (held-out rows with labels, for the validation gate).
    """
    from lpo.fsutil import atomic_output_dir, atomic_output_file
    from lpo.samples.tf1 import cached_sample

    sample = cached_sample(variant, cache_dir=cache_dir, arch=arch)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(sample.model_path, tmp, dirs_exist_ok=True)
    result = SampleFiles(model_path=out)
    if data_dir:
        os.makedirs(data_dir, exist_ok=True)
        for src, name, field in ((sample.train_csv_path, CALIB_SOURCE, "calib_source"),
                                 (sample.heldout_path, HELDOUT, "heldout_data")):
            dest = os.path.abspath(os.path.join(data_dir, name))
            with atomic_output_file(dest, overwrite=overwrite) as tmp:
                shutil.copyfile(src, tmp)
            setattr(result, field, dest)
    log.info("Wrote the sample model to %s", out)
    return result


@dataclass
class CheckpointFiles:
    """Where :func:`write_checkpoint` wrote a checkpoint."""

    ckpt_prefix: str
    source: str

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def summary(self) -> str:
        """The checkpoint prefix to pass on (``lpo refresh``, ``ckpt_prefix``)."""
        return f"checkpoint: {self.ckpt_prefix}  (from {self.source})"


def write_checkpoint(model_path: str, out_prefix: str, *, seed: int = 1, scale: float = 0.01,
                     overwrite: bool = False) -> CheckpointFiles:
    """Write a "retrained" checkpoint of ``model_path`` at ``out_prefix``: every float variable moved a little.

    Each float tensor ``v`` becomes ``v + scale * rms(v) * N(0, 1)`` (seeded); the keys
    and slices are the model's, so ``lpo refresh`` and the refresh pipelines accept it.
    ``model_path`` is a SavedModel directory or a checkpoint prefix.
    """
    from lpo.samples.tf1 import perturb_checkpoint

    out_prefix = os.path.abspath(out_prefix)
    if os.path.isdir(out_prefix):
        raise ConfigError(f"{out_prefix} is a directory; a checkpoint prefix names files, e.g. {out_prefix}/ckpt")
    if not (os.path.isdir(model_path) or os.path.isfile(model_path + ".index")):
        raise ConfigError(f"{model_path} is neither a SavedModel directory nor a checkpoint prefix")
    if os.path.exists(out_prefix + ".index") and not overwrite:
        raise OutputExistsError(f"checkpoint {out_prefix} already exists; pass --overwrite to replace it")
    if scale < 0:
        raise ConfigError(f"scale must be >= 0, got {scale}")
    perturb_checkpoint(model_path, out_prefix, seed=seed, scale=scale)
    return CheckpointFiles(ckpt_prefix=out_prefix, source=os.path.abspath(model_path))
