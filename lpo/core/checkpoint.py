"""Streaming checkpoint conversion: one tensor (or one slice) at a time.

Reads with ``RestoreV2`` (a slice at a time for partitioned variables), converts
with each variable's storage form (:mod:`lpo.formats`), writes shards with ``SaveV2`` and
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

from lpo import formats
from lpo.numerics import quant
from lpo.core.deeprec import EV_SUFFIXES
from lpo.errors import CheckpointError, ConfigError
from lpo.formats import deeprec_ev
from lpo.formats import grouped as grouped_form
from lpo.formats.base import chunk_check, chunk_rows
from lpo.log import progress
from lpo.core.plan import Plan, VarConversion
from lpo.core.savedmodel import VarSpec

log = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 256 << 20
_ZERO_COPY_BYTES = 1 << 20  # arrays this large go to TF through DLPack instead of a copy


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


def convert_values(vc: VarConversion, x: np.ndarray, name: str) -> list[tuple[str, str, np.ndarray]]:
    """Convert one FP32 tensor by its plan entry's storage form (:mod:`lpo.formats`); return (key, slice, array)s."""
    chunk_check(quant.check_finite, x, name)
    try:
        form = formats.for_var(vc)
    except ConfigError as e:
        raise CheckpointError(f"unknown target dtype {vc.dtype!r} for {name} in the lpo manifest ({e})") from e
    return form.encode(vc, x, name, chunk_rows(x))


def convert_ev_values(vc: VarConversion, x: np.ndarray, name: str) -> list[tuple[str, str, np.ndarray]]:
    """Convert the ``-values`` of a DeepRec EV by DeepRec's own formulas (:mod:`lpo.formats.deeprec_ev`).

    Returns ``(<dst>-values, "", array)`` and, for INT8, ``(scale_key, "", scale[dim])``.
    """
    chunk_check(quant.check_finite, x, name)
    return deeprec_ev.encode(vc, x, name, chunk_rows(x))


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


# --------------------------------------------------------------------------- DeepRec EVs
def _ev_sources(plan: Plan) -> dict[str, VarConversion]:
    """Map the new name of each planned EV to its conversion (``key`` is the source EV)."""
    return {v.dst_key: v for c in plan.conversions for v in c.variables if v.role == "ev" and v.dst_key}


def ev_group(shapes, name: str) -> list[str]:
    """The checkpoint tensors of EV ``name`` present in ``shapes`` (DeepRec's suffixes, in order)."""
    return [name + s for s in EV_SUFFIXES if name + s in shapes]


def ev_rows(prefix: str, names: list[str]) -> int:
    """Total rows of the EVs ``names`` (``<name>-values``) in checkpoint ``prefix``; -1 if any is missing."""
    try:
        shapes = open_reader(prefix).get_variable_to_shape_map()
    except CheckpointError:
        return -1
    total = 0
    for n in names:
        shape = shapes.get(n + "-values")
        if shape is None or len(shape) != 2:
            return -1
        total += int(shape[0])
    return total


def _ev_problems(shapes, dtypes, src: str, dim: int, want: str) -> list[str]:
    values, keys = shapes.get(src + "-values"), shapes.get(src + "-keys")
    hint = f"DeepRec saves an EmbeddingVariable as {src}-keys, {src}-values, {src}-freqs, ..."
    if values is None:
        return [f"EmbeddingVariable {src!r} has no {src + '-values'!r} tensor ({hint})"]
    if keys is None:
        return [f"EmbeddingVariable {src!r} has no {src + '-keys'!r} tensor ({hint})"]
    if len(values) != 2 or int(values[1]) != dim:
        return [f"{src + '-values'!r} has shape {list(values)}, the model's EmbeddingVariable has embedding dim {dim}"]
    if len(keys) != 1 or int(keys[0]) != int(values[0]):
        return [f"{src + '-keys'!r} holds {list(keys)} keys but {src + '-values'!r} has {int(values[0])} rows; "
                "the EmbeddingVariable's tensors are inconsistent (a truncated or mixed checkpoint?)"]
    got = dtypes[src + "-values"].name
    if got != want:
        return [f"{src + '-values'!r} is {got}, the model needs {want}"]
    return []


def tensor_groups(prefix: str, plan: Plan, targets: list[VarSpec]) -> list[list[str]]:
    """The source tensors of ``prefix`` that one conversion unit reads, unit by unit.

    A unit must be converted whole (e.g. by one shard): an ordinary variable is its key
    (all its slices); a DeepRec EmbeddingVariable is its ``-keys``, ``-values``, ``-freqs``,
    ``-versions``, ``-partition_offset``, ... (renamed together; an INT8 EV's scale is
    computed from its ``-values``). Scale, offset and base variables are produced with their tables.
    """
    shapes = open_reader(prefix).get_variable_to_shape_map()
    ev_src = _ev_sources(plan)
    side_keys = plan.side_keys()
    grouped = plan.groups()
    groups, seen = [], set()
    for t in targets:
        if t.kind == "ev":
            vc = ev_src.get(t.key)
            groups.append(ev_group(shapes, vc.key if vc else t.key))
        elif t.key in grouped:  # a grouped table: its member tables
            groups.append([v.key for v in grouped[t.key]])
        elif t.key not in side_keys and t.key not in seen:
            seen.add(t.key)
            groups.append([t.key])
    return groups


def _check_source(reader, src_prefix: str, targets: list[VarSpec], plan: Plan) -> dict[str, object]:
    """Check that every tensor the converted model needs is in the source checkpoint."""
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    convs = plan.by_target()
    side_keys = plan.side_keys()
    ev_src = _ev_sources(plan)
    grouped = plan.groups()
    problems = []
    for t in targets:
        if t.kind == "ev":
            vc = ev_src.get(t.key)
            problems.extend(_ev_problems(shapes, dtypes, vc.key if vc else t.key, t.shape[1],
                                         "float32" if vc else t.dtype))
            continue
        if t.key in side_keys:
            continue
        sources = [(v.key, v, v.source_full_shape()) for v in grouped[t.key]] if t.key in grouped else [
            (t.key, convs.get((t.key, t.slice)), None)]  # a grouped table: each member table
        for key, vc, full in sources:
            problems.extend(_source_problems(shapes, dtypes, key, vc, full or (
                vc.source_full_shape() if vc else list(t.full_shape)), t.dtype))
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError(
            f"checkpoint {src_prefix} does not match the model: " + "; ".join(problems[:8]) + more +
            ". Pass a checkpoint trained with the same graph as the original FP32 model"
        )
    return dtypes


def _source_problems(shapes, dtypes, key: str, vc, full: list[int], dtype: str) -> list[str]:
    """What is wrong with source tensor ``key`` (shape ``full``; float32 when ``vc`` converts it, else ``dtype``)."""
    if key not in shapes:
        return [f"{key!r} is missing"]
    if list(shapes[key]) != full:  # INT4 tables are packed: [N, D] -> [N, D/2]; the source is [N, D]
        return [f"{key!r} has shape {list(shapes[key])}, the model needs {full}"]
    want, got = "float32" if vc else dtype, dtypes[key].name
    return [f"{key!r} is {got}, the model needs {want}"] if got != want else []


def check_checkpoint(prefix: str, targets: list[VarSpec], plan: Plan | None = None) -> None:
    """Raise CheckpointError unless checkpoint ``prefix`` holds ``targets`` (keys, shapes, dtypes)."""
    _check_source(open_reader(prefix), prefix, targets, plan or Plan(data_type=""))


def convert_checkpoint(src_prefix: str, dst_prefix: str, plan: Plan, targets: list[VarSpec], *,
                       work_dir: str, quiet: bool = False, select: set | None = None) -> ConvertStats:
    """Write at ``dst_prefix`` the checkpoint of the optimized model from FP32 ``src_prefix``.

    ``targets`` are the variables the optimized graph restores (key, slice, dtype);
    planned ones are converted, the others copied unchanged, the scale variables
    produced with their tables. ``work_dir`` holds the temporary shards. ``select``,
    a set of source ``(key, slice)``, limits the output to those tensors (and their
    scales): one shard of a sharded conversion (lpo.core.shards).
    """
    reader = open_reader(src_prefix)
    dtypes = _check_source(reader, src_prefix, targets, plan)
    convs = plan.by_target()
    side_keys = plan.side_keys()
    grouped = plan.groups()
    order = sorted((t for t in targets if t.key not in side_keys and t.kind != "ev"
                    and (select is None or (t.key, t.slice) in select)), key=lambda t: (t.key, t.slice))
    ev_src = _ev_sources(plan)
    shapes = reader.get_variable_to_shape_map()
    evs = [(t, ev_src.get(t.key)) for t in sorted((t for t in targets if t.kind == "ev"
                                                   and (select is None or (t.key, t.slice) in select)),
                                                  key=lambda t: t.key)]
    ev_bytes = {k: int(np.prod(shapes[k])) * dtypes[k].size
                for t, vc in evs for k in ev_group(shapes, vc.key if vc else t.key)}
    stats = ConvertStats()
    writer = _Writer(work_dir)

    def source_bytes(t: VarSpec) -> int:
        if t.key in grouped:
            return sum(int(np.prod(v.shape)) * dtypes[v.key].size for v in grouped[t.key])
        vc = convs.get((t.key, t.slice))
        return int(np.prod(vc.shape if vc else t.shape)) * dtypes[t.key].size

    total = sum(source_bytes(t) for t in order) + sum(ev_bytes.values())
    bar = progress(len(order) + len(evs), desc="convert", total_bytes=total, quiet=quiet)
    try:
        for t in order:
            if t.key in grouped:  # each member table into its rows, one at a time
                half = grouped_form.Float16Slices()
                for vc in grouped[t.key]:
                    _convert_member(src_prefix, vc, dtypes, writer, stats, half)
                writer.add(half.finish())
                bar.update(1, nbytes=source_bytes(t))
                continue
            vc = convs.get((t.key, t.slice))
            src_slice, src_shape = (vc.slice, list(vc.shape)) if vc else (t.slice, list(t.shape))
            name = t.key + (f" [{src_slice}]" if src_slice else "")
            nbytes = source_bytes(t)
            writer.make_room(nbytes)
            x = read_tensor(src_prefix, t.key, src_slice, dtypes[t.key])
            if list(x.shape) != src_shape:
                raise CheckpointError(f"{name} read with shape {list(x.shape)}, expected {src_shape}")
            stats.bytes_read += _nbytes(x)
            if vc is None:
                writer.add([(t.key, t.slice, x)])  # the restored tensor itself: no copy
                stats.tensors_copied += 1
            else:
                writer.add(convert_values(vc, np.asarray(x), name))
                stats.tensors_converted += 1
            del x
            stats.keys.append(t.key)
            bar.update(1, nbytes=nbytes)
            writer.flush_if_full()
        for t, vc in evs:
            _convert_ev(src_prefix, t, vc, shapes, dtypes, ev_bytes, writer, stats)
            bar.update(1, nbytes=sum(ev_bytes[k] for k in ev_group(shapes, vc.key if vc else t.key)))
        writer.finish(dst_prefix)
    finally:
        bar.close()
    stats.bytes_written = writer.written
    return stats


def _convert_member(src_prefix: str, vc: VarConversion, dtypes, writer: _Writer, stats: ConvertStats,
                    half) -> None:
    """Write grouped table member ``vc`` into its slices of the group's tensors (:mod:`lpo.formats.grouped`;
    float16 slices go to ``half``, written whole after the group's last member)."""
    writer.make_room(int(np.prod(vc.shape)) * dtypes[vc.key].size)
    x = read_tensor(src_prefix, vc.key, "", dtypes[vc.key])
    if list(x.shape) != list(vc.shape):
        raise CheckpointError(f"{vc.key} read with shape {list(x.shape)}, expected {vc.shape}")
    stats.bytes_read += _nbytes(x)
    x = np.asarray(x)
    chunk_check(quant.check_finite, x, vc.key)
    writer.add(half.take(grouped_form.encode(vc, x, vc.key, chunk_rows(x))))
    del x
    stats.tensors_converted += 1
    stats.keys.append(vc.key)
    writer.flush_if_full()


def _convert_ev(src_prefix: str, t: VarSpec, vc: VarConversion | None, shapes, dtypes, ev_bytes, writer: _Writer,
                stats: ConvertStats) -> None:
    """Write EV ``t``: its ``-values`` converted (when planned), its other tensors copied under its name."""
    src = vc.key if vc else t.key
    for key in ev_group(shapes, src):
        suffix = key[len(src):]
        writer.make_room(ev_bytes[key])
        x = read_tensor(src_prefix, key, "", dtypes[key])
        stats.bytes_read += _nbytes(x)
        if vc is not None and suffix == "-values":
            writer.add(convert_ev_values(vc, np.asarray(x), key))
            stats.tensors_converted += 1
        else:
            writer.add([(t.key + suffix, "", x)])  # DeepRec's quantize_by_name copies these renamed
            stats.tensors_copied += 1
        del x
        stats.keys.append(t.key + suffix)
        writer.flush_if_full()
