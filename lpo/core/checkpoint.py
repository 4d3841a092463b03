"""Streaming checkpoint conversion: one tensor (or one slice) at a time.

Reads with ``RestoreV2`` (a slice at a time for partitioned variables), converts
with the numpy numerics of :mod:`lpo.numerics.quant`, writes shards with ``SaveV2`` and
merges them with ``MergeV2Checkpoints``. Peak memory is about one variable (its
FP32 source plus its converted form) plus a bounded write buffer: tensors are
read and handed to ``SaveV2`` without copies (``np.asarray`` of the restored
tensor, DLPack for converted arrays), converted in small row chunks, and the
buffer is flushed before a tensor that would overflow it is read. Never touches
the graph.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from lpo.numerics import quant
from lpo.errors import CheckpointError
from lpo.log import progress
from lpo.core.plan import Plan, VarConversion
from lpo.core.savedmodel import VarSpec

log = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 256 << 20
_CHUNK_BYTES = 4 << 20  # rows converted at a time: cache-sized, no full-size temporaries
_ZERO_COPY_BYTES = 1 << 20  # arrays this large go to TF through DLPack instead of a copy
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


def read_tensor(prefix: str, key: str, spec: str, dtype):
    """Read tensor ``key`` (or the slice ``spec`` of it) from ``prefix`` as an EagerTensor."""
    tf = _tf()
    try:
        (t,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key], shape_and_slices=[spec], dtypes=[dtype])
        return t
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read {key!r} from checkpoint {prefix}: {str(e).splitlines()[0]} "
            "(is the .data file truncated or from another run?)"
        ) from e


def read_slice(prefix: str, key: str, spec: str, dtype) -> np.ndarray:
    """Read tensor ``key`` (or the slice ``spec`` of it) as a read-only numpy view (no copy)."""
    return np.asarray(read_tensor(prefix, key, spec, dtype))


def _chunks(x: np.ndarray):
    """Yield row ranges of ``x`` of about ``_CHUNK_BYTES`` each (one range for 0-d/empty)."""
    if x.ndim == 0 or x.shape[0] == 0:
        yield slice(None)
        return
    rows = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes))
    for a in range(0, x.shape[0], rows):
        yield slice(a, a + rows)


def _check_chunked(check, x: np.ndarray, name: str) -> None:
    """Run a quant check chunk by chunk; on a failure rerun it on all of ``x`` for the message."""
    try:
        for c in _chunks(x):
            check(x[c], name)
    except Exception:  # noqa: BLE001 - re-raised with whole-tensor counts below
        check(x, name)
        raise


def _map_chunked(fn, x: np.ndarray, dtype) -> np.ndarray:
    """Apply the elementwise ``fn`` row chunk by row chunk into one output array."""
    if x.ndim == 0:
        return fn(x)
    out = np.empty(x.shape, dtype)
    for c in _chunks(x):
        out[c] = fn(x[c])
    return out


def convert_values(vc: VarConversion, x: np.ndarray, name: str) -> list[tuple[str, str, np.ndarray]]:
    """Convert one FP32 tensor by its plan entry; return (key, slice, array) outputs."""
    _check_chunked(quant.check_finite, x, name)
    if vc.dtype == "BF16":
        return [(vc.key, vc.slice, _map_chunked(quant.to_bf16, x, quant._bf16_dtype()))]
    if vc.dtype == "FP16":
        _check_chunked(quant.check_fp16_range, x, name)
        return [(vc.key, vc.slice, _map_chunked(quant.to_fp16, x, np.float16))]
    if vc.dtype == "INT8":
        rows = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes)) if x.ndim else None
        q, scale = quant.quantize_int8(x, vc.axis, name=name, chunk_rows=rows)
        return [(vc.key, vc.slice, q), (vc.scale_key, "", scale.reshape(vc.scale_shape))]
    raise CheckpointError(f"unknown target dtype {vc.dtype!r} for {name} in the lpo manifest")


def _as_tensor(a):
    """Hand array ``a`` to TF without copying it when it is large (DLPack; bfloat16 via bitcast)."""
    tf = _tf()
    if not isinstance(a, np.ndarray):
        return a  # already a tensor (copied unchanged from the source)
    if a.nbytes >= _ZERO_COPY_BYTES and a.ndim > 0 and a.flags.c_contiguous and a.flags.writeable:
        try:
            if a.dtype.name == "bfloat16":
                return tf.bitcast(tf.experimental.dlpack.from_dlpack(a.view(np.uint16).__dlpack__()), tf.bfloat16)
            return tf.experimental.dlpack.from_dlpack(a.__dlpack__())
        except Exception as e:  # noqa: BLE001 - fall back to a copy
            log.debug("DLPack hand-off failed (%s); copying", e)
    return tf.constant(a)


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
            self.buf_bytes += _nbytes(item[2])

    def make_room(self, nbytes: int) -> None:
        """Flush now when ``nbytes`` more would overflow the buffer (call before reading them)."""
        if self.buf and self.buf_bytes + nbytes > WRITE_BUFFER_BYTES:
            self.flush()

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
        tensors = [_as_tensor(a) for _, _, a in self.buf]
        self.buf = []  # the tensors alone keep the data alive: freed right after the write
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=slices, tensors=tensors)
        del tensors
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


def _nbytes(a) -> int:
    return a.nbytes if isinstance(a, np.ndarray) else int(np.prod(a.shape)) * a.dtype.size


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


def check_checkpoint(prefix: str, targets: list[VarSpec], plan: Plan | None = None) -> None:
    """Raise CheckpointError unless checkpoint ``prefix`` holds ``targets`` (keys, shapes, dtypes)."""
    _check_source(open_reader(prefix), prefix, targets, plan or Plan(data_type=""))


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
    bar = progress(len(order), desc="convert", total_bytes=total, quiet=quiet)
    try:
        for t in order:
            vc = convs.get((t.key, t.slice))
            name = t.key + (f" [{t.slice}]" if t.slice else "")
            writer.make_room(int(np.prod(t.shape)) * dtypes[t.key].size)
            x = read_tensor(src_prefix, t.key, t.slice, dtypes[t.key])
            if list(x.shape) != list(t.shape):
                raise CheckpointError(f"{name} read with shape {list(x.shape)}, expected {t.shape}")
            stats.bytes_read += _nbytes(x)
            if vc is None:
                writer.add([(t.key, t.slice, x)])  # the restored tensor itself: no copy
                stats.tensors_copied += 1
            else:
                writer.add(convert_values(vc, np.asarray(x), name))
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
