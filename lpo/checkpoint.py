"""Streaming checkpoint conversion: one tensor (or one slice) at a time.

Reads with ``RestoreV2`` (a slice at a time for partitioned variables), converts
with the numpy numerics of :mod:`lpo.quant`, writes shards with ``SaveV2`` and
merges them with ``MergeV2Checkpoints``. Peak memory is about one variable (its
FP32 source plus its converted form) plus a bounded write buffer. Never touches
the graph.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from lpo import quant
from lpo.errors import CheckpointError
from lpo.log import progress
from lpo.plan import Plan, VarConversion
from lpo.savedmodel import VarSpec

log = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 256 << 20
_NP = {"BF16": None, "FP16": np.float16, "INT8": np.int8}


@dataclass
class ConvertStats:
    """What a checkpoint conversion read and wrote."""

    tensors_converted: int = 0
    tensors_copied: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


def _tf():
    import tensorflow as tf

    return tf


def open_reader(prefix: str):
    """Open checkpoint ``prefix``; raise CheckpointError when it is missing or unreadable."""
    tf = _tf()
    if not os.path.isfile(prefix + ".index"):
        raise CheckpointError(
            f"checkpoint {prefix} not found: {prefix}.index does not exist. "
            "Pass the prefix (e.g. model.ckpt-1000), not a file name"
        )
    try:
        return tf.train.load_checkpoint(prefix)
    except Exception as e:  # noqa: BLE001 - TF raises several types here
        raise CheckpointError(f"cannot read checkpoint {prefix}: {str(e).splitlines()[0]}") from e


def read_slice(prefix: str, key: str, spec: str, dtype) -> np.ndarray:
    """Read tensor ``key`` (or the slice ``spec`` of it) from checkpoint ``prefix``."""
    tf = _tf()
    try:
        (t,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key], shape_and_slices=[spec], dtypes=[dtype])
        return t.numpy()
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read {key!r} from checkpoint {prefix}: {str(e).splitlines()[0]} "
            "(is the .data file truncated or from another run?)"
        ) from e


def convert_values(vc: VarConversion, x: np.ndarray, name: str) -> list[tuple[str, str, np.ndarray]]:
    """Convert one FP32 tensor by its plan entry; return (key, slice, array) outputs."""
    quant.check_finite(x, name)
    if vc.dtype == "BF16":
        return [(vc.key, vc.slice, quant.to_bf16(x))]
    if vc.dtype == "FP16":
        quant.check_fp16_range(x, name)
        return [(vc.key, vc.slice, quant.to_fp16(x))]
    if vc.dtype == "INT8":
        q, scale = quant.quantize_int8(x, vc.axis, name=name)
        return [(vc.key, vc.slice, q), (vc.scale_key, "", scale.reshape(vc.scale_shape))]
    raise CheckpointError(f"unknown target dtype {vc.dtype!r} for {name} in the lpo manifest")


class _Writer:
    """Buffers tensors and writes them as SaveV2 shards, merged at the end."""

    def __init__(self, work_dir: str):
        self.work_dir = work_dir
        self.shards: list[str] = []
        self.buf: list[tuple[str, str, np.ndarray]] = []
        self.buf_bytes = 0
        self.written = 0

    def add(self, items: list[tuple[str, str, np.ndarray]]) -> None:
        for item in items:
            self.buf.append(item)
            self.buf_bytes += item[2].nbytes

    def flush_if_full(self) -> None:
        if self.buf_bytes >= WRITE_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        tf = _tf()
        prefix = os.path.join(self.work_dir, f"shard_{len(self.shards):05d}")
        names = [k for k, _, _ in self.buf]
        slices = [s for _, s, _ in self.buf]
        tensors = [tf.constant(a) for _, _, a in self.buf]
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=slices, tensors=tensors)
        self.shards.append(prefix)
        self.written += self.buf_bytes
        self.buf, self.buf_bytes = [], 0

    def finish(self, dst_prefix: str) -> None:
        self.flush()
        tf = _tf()
        if not self.shards:
            tf.raw_ops.SaveV2(prefix=dst_prefix, tensor_names=[], shape_and_slices=[], tensors=[])
            return
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=self.shards, destination_prefix=dst_prefix,
                                      delete_old_dirs=False)


def _check_source(reader, src_prefix: str, targets: list[VarSpec], plan: Plan) -> dict[str, object]:
    """Check that every tensor the converted model needs is in the source checkpoint."""
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    convs = plan.var_conversions()
    scale_keys = {v.scale_key for v in convs.values() if v.scale_key}
    problems = []
    for t in targets:
        if t.key in scale_keys:
            continue
        if t.key not in shapes:
            problems.append(f"{t.key!r} is missing")
            continue
        if list(shapes[t.key]) != list(t.full_shape):
            problems.append(f"{t.key!r} has shape {list(shapes[t.key])}, the model needs {list(t.full_shape)}")
            continue
        vc = convs.get((t.key, t.slice))
        want = "float32" if vc else t.dtype
        got = dtypes[t.key].name
        if got != want:
            problems.append(f"{t.key!r} is {got}, the model needs {want}")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError(
            f"checkpoint {src_prefix} does not match the model: " + "; ".join(problems[:8]) + more +
            ". Pass a checkpoint trained with the same graph as the original FP32 model"
        )
    return dtypes


def convert_checkpoint(src_prefix: str, dst_prefix: str, plan: Plan, targets: list[VarSpec], *,
                       work_dir: str, quiet: bool = False) -> ConvertStats:
    """Write at ``dst_prefix`` the checkpoint of the optimized model from FP32 ``src_prefix``.

    ``targets`` are the variables the optimized graph restores (key, slice, dtype);
    planned ones are converted, the others copied unchanged, the scale variables
    produced with their tables. ``work_dir`` holds the temporary shards.
    """
    reader = open_reader(src_prefix)
    dtypes = _check_source(reader, src_prefix, targets, plan)
    convs = plan.var_conversions()
    scale_keys = {v.scale_key for v in convs.values() if v.scale_key}
    order = sorted((t for t in targets if t.key not in scale_keys), key=lambda t: (t.key, t.slice))
    stats = ConvertStats()
    writer = _Writer(work_dir)
    total = sum(int(np.prod(t.shape)) * dtypes[t.key].size for t in order)
    bar = progress(None, desc="convert", total_bytes=total, quiet=quiet)
    try:
        for t in order:
            vc = convs.get((t.key, t.slice))
            name = t.key + (f" [{t.slice}]" if t.slice else "")
            x = read_slice(src_prefix, t.key, t.slice, dtypes[t.key])
            if list(x.shape) != list(t.shape):
                raise CheckpointError(f"{name} read with shape {list(x.shape)}, expected {t.shape}")
            stats.bytes_read += x.nbytes
            if vc is None:
                writer.add([(t.key, t.slice, x)])
                stats.tensors_copied += 1
            else:
                writer.add(convert_values(vc, x, name))
                stats.tensors_converted += 1
            del x
            stats.keys.append(t.key)
            bar.update(1, nbytes=int(np.prod(t.shape)) * dtypes[t.key].size)
            writer.flush_if_full()
        writer.finish(dst_prefix)
    finally:
        bar.close()
    stats.bytes_written = writer.written
    return stats
