"""Sharded checkpoint conversion: a deterministic, size-balanced split, shard records, the merge.

A **unit** is what one shard converts whole: one checkpoint tensor, or one slice of a
partitioned variable, or all the tensors of a DeepRec EmbeddingVariable, together with
the scale variable its conversion produces (an INT8 table's scales are a statistic of the
whole tensor or slice, so a unit is never split by rows). Units are assigned to ``num_shards`` shards greedily, largest first,
each to the least loaded shard (ties: the lowest index), from the sizes in the source
checkpoint's index: every worker computes the same assignment on its own.

Each shard checkpoint carries a record (``<prefix>.lpo-shard.json``, moved into place
before the ``.index``) naming its plan, source checkpoint, shard, ``num_shards`` and
tensors; a shard with no tensors (more shards than tensors) is its record alone. :func:`merge_shards` checks the records (same plan, same source, every shard
present once, every planned tensor present exactly once, each index holding what its
record says) and then runs ``MergeV2Checkpoints`` on hard links of the shard files (or
copies when on another file system): the data files are renamed, not rewritten, and the
shards stay intact, so a merge can be re-run.

Never touches the graph.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field

from lpo.errors import CheckpointError, ConfigError
from lpo.core.plan import Plan
from lpo.core.savedmodel import VarSpec

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".lpo-shard.json"
RECORD_FORMAT = 1


@dataclass
class Unit:
    """Tensors converted together by one shard: a source tensor (or slice) and its scale."""

    key: str
    slice: str
    nbytes: int
    outputs: list[tuple[str, str]]  # (key, slice) written: the tensor itself, then its scale (if any)


@dataclass
class ShardRecord:
    """What one shard checkpoint holds, and of which conversion it is a part."""

    shard: int
    num_shards: int
    plan_digest: str
    source_digest: str
    units_digest: str  # of every unit of every shard: the same on all shards of one conversion
    total_outputs: int
    outputs: list[list[str]] = field(default_factory=list)  # [key, slice] written by this shard
    source_bytes: int = 0
    format: int = RECORD_FORMAT

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


def check_shard_args(shard, num_shards) -> tuple[int, int] | None:
    """Return ``(shard, num_shards)`` as ints, or None for an unsharded run; ConfigError if invalid."""
    if shard is None and num_shards is None:
        return None
    if shard is None or num_shards is None:
        raise ConfigError("pass both shard and num_shards (CLI --shard I --num-shards N), or neither")
    try:
        i, n = int(shard), int(num_shards)
    except (TypeError, ValueError):
        raise ConfigError(f"shard and num_shards must be integers, got {shard!r} and {num_shards!r}") from None
    if n < 1:
        raise ConfigError(f"num_shards must be at least 1, got {n}")
    if not 0 <= i < n:
        raise ConfigError(f"shard must be in 0..{n - 1} for num_shards={n}, got {i}")
    return i, n


def units(targets: list[VarSpec], plan: Plan, shapes: dict, dtypes: dict) -> list[Unit]:
    """Return the units of a conversion, in a canonical order, sized by their source bytes.

    ``shapes``/``dtypes`` are the source checkpoint's maps. A DeepRec EmbeddingVariable is
    one unit: all its tensors (``-keys``, ``-values``, ``-freqs``, ...) and its scale.
    """
    import numpy as np

    from lpo.core.checkpoint import _ev_sources, ev_group

    convs = plan.by_target()
    ev_src = _ev_sources(plan)
    side_keys = plan.side_keys()
    grouped = plan.groups()
    out = []
    for t in sorted((t for t in targets if t.key not in side_keys), key=lambda t: (t.key, t.slice)):
        if t.key in grouped:  # a grouped table is one unit: its member tables and the group's side tensors
            members = grouped[t.key]
            nbytes = sum(int(np.prod(v.shape)) * dtypes[v.key].size for v in members)
            out.append(Unit(t.key, t.slice, nbytes, [(t.key, t.slice)] + [(k, "") for k in members[0].side_keys()]))
            continue
        if t.kind == "ev":
            vc = ev_src.get(t.key)
            src = vc.key if vc else t.key
            group = ev_group(shapes, src)
            outputs = [(t.key + k[len(src):], "") for k in group]
            nbytes = sum(int(np.prod(shapes[k])) * dtypes[k].size for k in group)
        else:
            vc = convs.get((t.key, t.slice))
            outputs = [(t.key, t.slice)]
            nbytes = int(np.prod(vc.shape if vc is not None else t.shape)) * dtypes[t.key].size  # the source's
        if vc is not None:
            outputs.extend((k, "") for k in vc.side_keys())  # scale (INT8/INT4), offset (INT4), base
        out.append(Unit(t.key, t.slice, nbytes, outputs))
    return out


def assign(all_units: list[Unit], num_shards: int) -> list[list[Unit]]:
    """Split units into ``num_shards`` lists: largest first, each to the least loaded shard."""
    shards: list[list[Unit]] = [[] for _ in range(num_shards)]
    load = [0] * num_shards
    for u in sorted(all_units, key=lambda u: (-u.nbytes, u.key, u.slice)):
        i = min(range(num_shards), key=lambda k: (load[k], k))
        shards[i].append(u)
        load[i] += u.nbytes
    for s in shards:
        s.sort(key=lambda u: (u.key, u.slice))
    return shards


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_digest(plan: Plan) -> str:
    """Digest of a plan's manifest JSON (what makes two shard runs parts of one conversion)."""
    return _sha256(plan.dumps().encode())


def source_digest(prefix: str) -> str:
    """Digest of a checkpoint's ``.index`` file (it holds every tensor's shape, dtype and CRC32C)."""
    h = hashlib.sha256()
    with open(prefix + ".index", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def units_digest(all_units: list[Unit]) -> str:
    """Digest of the outputs of every unit (the tensors the merged checkpoint must hold)."""
    outs = sorted(o for u in all_units for o in u.outputs)
    return _sha256(json.dumps(outs).encode())


def record_path(prefix: str) -> str:
    """Return where the shard record of checkpoint ``prefix`` lives."""
    return prefix + RECORD_SUFFIX


def write_record(prefix: str, record: ShardRecord) -> None:
    """Write ``record`` beside the (temporary) checkpoint ``prefix``."""
    with open(record_path(prefix), "w", encoding="utf-8") as f:
        json.dump(record.to_dict(), f, indent=1, sort_keys=True)
        f.write("\n")


def read_record(prefix: str) -> ShardRecord:
    """Read the shard record of ``prefix``; CheckpointError when it is missing or incomplete."""
    path = record_path(prefix)

    def incomplete(missing: str) -> CheckpointError:
        return CheckpointError(
            f"{prefix} is not a complete lpo shard ({missing} is missing): its `convert_ckpt --shard` run "
            "failed or has not finished; rerun that shard")

    if not os.path.isfile(path):
        raise incomplete(path)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("format") != RECORD_FORMAT:
            raise CheckpointError(f"shard record {path} has format {d.get('format')!r}; this lpo reads "
                                  f"{RECORD_FORMAT}: rerun the shard with this version")
        record = ShardRecord(**d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"shard record {path} is corrupt ({e}); rerun that shard") from e
    if record.outputs and not os.path.isfile(prefix + ".index"):  # an empty shard is its record alone
        raise incomplete(prefix + ".index")
    return record


def matches(record: ShardRecord, other: ShardRecord) -> bool:
    """True when two records describe the same shard of the same conversion."""
    keys = ("shard", "num_shards", "plan_digest", "source_digest", "units_digest", "total_outputs", "outputs")
    return all(getattr(record, k) == getattr(other, k) for k in keys)


@dataclass
class MergeStats:
    """What a merge read and wrote."""

    num_shards: int
    tensors: int
    linked_files: int
    copied_files: int
    source_bytes: int


def check_records(prefixes: list[str]) -> list[tuple[str, ShardRecord]]:
    """Return (prefix, record) sorted by shard after checking that they form one complete conversion."""
    if not prefixes:
        raise ConfigError("merge_ckpt needs at least one shard prefix")
    recs = [(p, read_record(p)) for p in prefixes]
    first_p, first = recs[0]
    for p, r in recs[1:]:
        for what, attr in (("optimized model (plan)", "plan_digest"), ("source checkpoint", "source_digest"),
                           ("num_shards", "num_shards"), ("tensor set", "units_digest")):
            if getattr(r, attr) != getattr(first, attr):
                raise CheckpointError(
                    f"shards {first_p} and {p} come from different conversions (their {what} differs); "
                    "merge the shards of one `convert_ckpt --num-shards N` run, all with the same checkpoint "
                    "and optimized model")
    by_shard: dict[int, str] = {}
    for p, r in recs:
        if r.shard in by_shard:
            raise CheckpointError(f"shard {r.shard} of {first.num_shards} is given twice ({by_shard[r.shard]} "
                                  f"and {p}); pass each shard prefix once")
        by_shard[r.shard] = p
    missing = [i for i in range(first.num_shards) if i not in by_shard]
    if missing:
        raise CheckpointError(
            f"shards {missing} of {first.num_shards} are missing (given: {sorted(by_shard)}); run "
            f"`lpo convert-ckpt ... --shard I --num-shards {first.num_shards}` for each and pass every shard prefix")
    seen: dict[tuple[str, str], int] = {}
    for p, r in recs:
        for key, sl in r.outputs:
            if (key, sl) in seen:
                raise CheckpointError(f"tensor {key!r} is in shards {seen[(key, sl)]} and {r.shard}; the shards "
                                      "are inconsistent: rerun them")
            seen[(key, sl)] = r.shard
    if len(seen) != first.total_outputs or \
            _sha256(json.dumps(sorted([list(k) for k in seen])).encode()) != first.units_digest:
        raise CheckpointError(f"the shards hold {len(seen)} tensors, the conversion plans {first.total_outputs}; "
                              "rerun the shards")
    return sorted(recs, key=lambda pr: pr[1].shard)


def check_index(prefix: str, record: ShardRecord) -> None:
    """Check that checkpoint ``prefix`` holds exactly the keys its record names."""
    from lpo.core.checkpoint import open_reader

    if not record.outputs and not os.path.isfile(prefix + ".index"):
        return  # an empty shard (more shards than tensors): no checkpoint, only its record
    have = set(open_reader(prefix).get_variable_to_shape_map())
    want = {k for k, _s in record.outputs}
    if have != want:
        extra, lost = sorted(have - want)[:3], sorted(want - have)[:3]
        raise CheckpointError(f"shard {prefix} does not hold what its record says (missing {lost}, extra {extra}); "
                              "rerun that shard")


def merge_shards(prefixes: list[str], dst_prefix: str) -> MergeStats:
    """Merge checked shard checkpoints into ``dst_prefix`` (a temporary prefix: see lpo.fsutil.atomic_checkpoint)."""
    import shutil

    import tensorflow as tf

    from lpo.fsutil import checkpoint_files, link_or_copy

    recs = check_records(prefixes)
    for p, r in recs:
        check_index(p, r)
    work = os.path.join(os.path.dirname(dst_prefix), ".lpo-merge")
    os.makedirs(work)
    linked = copied = 0
    try:
        names = []
        for p, r in recs:
            if not r.outputs:
                continue
            name = os.path.join(work, f"shard{r.shard:05d}")
            for f in checkpoint_files(p):
                suffix = f.name[len(os.path.basename(p)):]
                if suffix == RECORD_SUFFIX:
                    continue
                if link_or_copy(f, name + suffix):
                    linked += 1
                else:
                    copied += 1
            names.append(name)
        if not names:
            raise CheckpointError("every shard is empty: the optimized model has no variables to merge")
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=names, destination_prefix=dst_prefix,
                                      delete_old_dirs=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = recs[0][1]
    log.info("Merged %d shards (%d tensors; %d files linked, %d copied)", first.num_shards, first.total_outputs,
             linked, copied)
    return MergeStats(first.num_shards, first.total_outputs, linked, copied, sum(r.source_bytes for _p, r in recs))
