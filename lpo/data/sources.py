"""Build calibration files from CSV/TSV, TFRecord or npz sources (``make_calibration``).

Every source is read as a stream of raw rows; a seeded reservoir sampler keeps at
most ``num_rows`` of them, so a file larger than memory works. Only the kept rows
are parsed and cast to the serving signature, then written as an ``.npz`` with one
array per serving input (rows on axis 0, strings as fixed-width ``S`` bytes).
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np

from lpo import options as opts
from lpo.core.signature import InputSpec, load_signature_specs
from lpo.data.calibration import save_calibration_npz, to_storable
from lpo.data.cast import cast_array, rows_shape
from lpo.errors import ConfigError, DataError, OutputExistsError, closest
from lpo.fsutil import atomic_output_file

log = logging.getLogger(__name__)

__all__ = ["CalibrationResult", "make_calibration", "reservoir_sample", "detect_format",
           "CRITEO_COLUMNS", "cast_column", "cast_array"]

FORMATS = opts.DATA_FORMATS
CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
_RNG_BLOCK = 4096


@dataclass
class CalibrationResult:
    """What ``make_calibration`` wrote."""

    path: str
    rows: int
    inputs: dict = field(default_factory=dict)  # name -> {"dtype", "shape"}
    source: str = ""
    format: str = ""
    legacy_path: str | None = None
    source_rows: int = 0

    def to_dict(self) -> dict:
        """JSON-able dict of every field."""
        return asdict(self)

    def summary(self) -> str:
        """One line: what was written from where."""
        extra = f" (+ legacy {self.legacy_path})" if self.legacy_path else ""
        return (f"wrote {self.path}{extra}: {self.rows} of {self.source_rows} rows from "
                f"{self.source} ({self.format}), {len(self.inputs)} inputs")


# --------------------------------------------------------------------------- sampling
def reservoir_sample(items: Iterable, num: int, seed: int = opts.CALIBRATE.seed):
    """Seeded reservoir sample (algorithm R) of up to ``num`` items from a stream.

    Returns ``(sample, total)``: ``sample`` is a list of ``(index, item)`` sorted by
    the 0-based stream index, ``total`` the number of items seen. Never holds more
    than ``num`` items; the same seed and stream always give the same sample.
    """
    if num < 1:
        raise ConfigError(f"num_rows must be >= 1, got {num}")
    rng = np.random.default_rng(seed)
    reservoir: list = []
    uniforms = np.empty(0)
    u_pos = 0
    total = 0
    i = -1
    for item in items:  # no enumerate(): its cached tuple would keep one more item alive
        i += 1
        total = i + 1
        if i < num:
            reservoir.append((i, item))
            continue
        if u_pos >= len(uniforms):
            uniforms = rng.random(_RNG_BLOCK)
            u_pos = 0
        j = int(uniforms[u_pos] * (i + 1))
        u_pos += 1
        if j < num:
            reservoir[j] = (i, item)
        del item
    reservoir.sort(key=lambda t: t[0])
    return reservoir, total


# --------------------------------------------------------------------------- format
def detect_format(source, fmt=None) -> str:
    """Return one of ``csv``, ``tsv``, ``tfrecord``, ``npz`` from ``fmt`` or the extension."""
    if fmt:
        f = fmt.lower().lstrip(".")
        f = {"tfrecords": "tfrecord", "tfr": "tfrecord"}.get(f, f)
        if f not in FORMATS:
            raise ConfigError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
        return f
    name = os.fspath(source).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    ext = os.path.splitext(name)[1].lstrip(".")
    ext = {"tfrecords": "tfrecord", "tfr": "tfrecord", "txt": "csv"}.get(ext, ext)
    if ext not in FORMATS:
        raise ConfigError(
            f"cannot tell the format of {source!r} from its extension; pass format= "
            f"(one of {', '.join(FORMATS)})")
    return ext


def _open_text(path):
    if os.fspath(path).lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


# --------------------------------------------------------------------------- casting
def _kind(dtype: np.dtype) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "string"
    if dtype.kind == "f":
        return "float"
    if dtype.kind in ("i", "u"):
        return "int"
    if dtype.kind == "b":
        return "bool"
    return dtype.name


def _dtype_label(spec: InputSpec) -> str:
    return "string" if _kind(spec.dtype) == "string" else spec.dtype.name


def _parse_scalar(text: str, kind: str):
    if kind == "float":
        return float(text) if text.strip() else 0.0
    if kind == "int":
        t = text.strip()
        if not t:
            return 0
        try:
            return int(t)
        except ValueError:
            v = float(t)
            if not v.is_integer():
                raise ValueError(f"{text!r} is not an integer") from None
            return int(v)
    if kind == "bool":
        t = text.strip().lower()
        if t in ("1", "true", "t", "yes", "y"):
            return True
        if t in ("0", "false", "f", "no", "n", ""):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    raise ValueError(f"unsupported dtype {kind}")


def cast_column(values: list, spec: InputSpec, name: str, row_numbers: list, column: str,
                where: str) -> np.ndarray:
    """Parse one sampled text column (list of str) and cast it to ``spec``; errors name row and column."""
    kind = _kind(spec.dtype)
    n = len(values)
    if kind == "string":
        raw = np.array([v.encode("utf-8") for v in values], dtype=object)
    else:
        missing = 0
        out = []
        for v, r in zip(values, row_numbers):
            if not v.strip():
                missing += 1
            try:
                out.append(_parse_scalar(v, kind))
            except (ValueError, OverflowError) as e:
                raise DataError(
                    f"{where}: cannot parse value {v!r} in column {column!r} at data row {r} "
                    f"as {_dtype_label(spec)} (serving input {name!r}): {e}") from None
        if missing:
            log.warning("column %r: %d empty value(s) filled with 0", column, missing)
        try:
            raw = np.array(out, dtype=np.int64 if kind == "int" else None)
        except OverflowError:
            raise DataError(f"{where}: values of {name!r} do not fit serving input dtype {spec.dtype.name}") \
                from None
    return cast_array(raw.reshape(rows_shape(spec.shape, n, 1, name, where)), spec, name, where)


# --------------------------------------------------------------------------- mapping
def _resolve_columns(columns: list, specs: dict, mapping: dict | None, where: str,
                     kind: str = "column", source_name: str | None = None) -> dict:
    """Return ``{input_name: column_name}`` for every serving input."""
    mapping = dict(mapping or {})
    present = list(columns)
    for col, inp in mapping.items():
        if inp not in specs:
            raise ConfigError(
                f"mapping {col!r} -> {inp!r}: the model has no serving input {inp!r}; "
                f"inputs: {', '.join(sorted(specs))}; closest: {closest(inp, specs) or '-'}")
        if col not in present:
            raise DataError(
                f"{where}: mapping names {kind} {col!r} but the source has no such {kind}; "
                f"{kind}s present: {', '.join(present[:50])}"
                f"{' ...' if len(present) > 50 else ''}; closest: "
                f"{', '.join(closest(col, present)) or '-'}")
    by_input = {inp: col for col, inp in mapping.items()}
    result = {}
    for name in specs:
        col = by_input.get(name, name)
        if col not in present:
            near = closest(name, present)
            raise DataError(
                f"{where}: missing {kind} {col!r} for serving input {name!r}. "
                f"{kind.capitalize()}s present: {', '.join(present[:50])}"
                f"{' ...' if len(present) > 50 else ''}. Closest: "
                f"{', '.join(near) if near else '-'}. If the name differs, pass "
                f"mapping={{'<{kind}>': {name!r}}}.")
        result[name] = col
    unused = [c for c in present if c not in result.values()]
    if unused:
        log.info("%s: %d %s(s) not used by the model: %s", source_name or where, len(unused),
                 kind,
                 ", ".join(unused[:20]) + (" ..." if len(unused) > 20 else ""))
    return result


# --------------------------------------------------------------------------- readers
def _read_csv(path, specs, *, num_rows, seed, delimiter, columns, has_header, mapping):
    where = os.path.basename(os.fspath(path))
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = None
        if has_header:
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{where}: the source is empty (no header, no rows)") from None
            except csv.Error as e:
                raise DataError(f"{where}: cannot read the header: {e}") from None
            header = [h.strip() for h in header]
        names = list(columns) if columns else header

        def rows() -> Iterator:
            try:
                for rec in reader:
                    if not rec or (len(rec) == 1 and not rec[0].strip()):
                        continue  # blank line
                    yield rec
            except csv.Error as e:
                raise DataError(f"{where}: malformed CSV near line {reader.line_num}: {e}") \
                    from None

        stream = rows()
        if names is None:
            # No header and no columns=: accept Criteo's 40-column layout.
            try:
                first = next(stream)
            except StopIteration:
                raise DataError(f"{where}: the source is empty (no data rows)") from None
            if len(first) != len(CRITEO_COLUMNS):
                raise ConfigError(
                    f"{where}: has_header=False needs columns=[...] (the file has "
                    f"{len(first)} fields per row, not Criteo's {len(CRITEO_COLUMNS)})")
            log.info("%s: no header; assuming Criteo columns label,I1..I13,C1..C26", where)
            names = list(CRITEO_COLUMNS)

            def chained(rest=stream):
                yield first
                yield from rest
            stream = chained()
        if len(set(names)) != len(names):
            dup = sorted({c for c in names if names.count(c) > 1})
            raise DataError(f"{where}: duplicate column name(s): {', '.join(dup)}")
        cols = _resolve_columns(names, specs, mapping, where)
        sample, total = reservoir_sample(stream, num_rows, seed)
    if total == 0:
        raise DataError(f"{where}: the source is empty (header but no data rows)")
    row_numbers = [i + 1 for i, _ in sample]
    for (i, rec) in sample:
        if len(rec) != len(names):
            raise DataError(f"{where}: data row {i + 1} has {len(rec)} fields, expected "
                            f"{len(names)} ({'header' if header and not columns else 'columns='})"
                            f"; check delimiter={delimiter!r}")
    index = {c: k for k, c in enumerate(names)}
    arrays = {}
    for name, spec in specs.items():
        col = cols[name]
        k = index[col]
        arrays[name] = cast_column([rec[k] for _, rec in sample], spec, name, row_numbers,
                                   col, where)
    return arrays, total


def _tfrecord_compression(path) -> str:
    p = os.fspath(path).lower()
    if p.endswith(".gz") or p.endswith(".gzip"):
        return "GZIP"
    if p.endswith(".zlib"):
        return "ZLIB"
    return ""


def _read_tfrecord(path, specs, *, num_rows, seed, mapping):
    import tensorflow as tf

    where = os.path.basename(os.fspath(path))
    ds = tf.data.TFRecordDataset(os.fspath(path),
                                 compression_type=_tfrecord_compression(path))

    def records():
        it = ds.as_numpy_iterator()
        n = 0
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except tf.errors.OpError as e:
                raise DataError(f"{where}: cannot read TFRecord record {n + 1}: "
                                f"{e.message.splitlines()[0]}") from None
            n += 1
            yield rec

    sample, total = reservoir_sample(records(), num_rows, seed)
    if total == 0:
        raise DataError(f"{where}: the source is empty (no records)")
    examples = []
    for i, raw in sample:
        ex = tf.train.Example()
        try:
            ex.ParseFromString(raw)
        except Exception as e:  # protobuf DecodeError
            raise DataError(f"{where}: record {i + 1} is not a tf.train.Example: {e}") from None
        examples.append((i, ex))
    arrays = {}
    cols = None
    for name, spec in specs.items():
        kind = _kind(spec.dtype)
        want_list = {"float": "float_list", "int": "int64_list", "bool": "int64_list",
                     "string": "bytes_list"}.get(kind)
        if want_list is None:
            raise DataError(f"serving input {name!r} has dtype {spec.dtype}; TFRecord "
                            "sources support float, int and string inputs")
        values = []
        per_row = None
        for i, ex in examples:
            feats = ex.features.feature
            if cols is None or any(c not in feats for c in cols.values()):
                cols = _resolve_columns(list(feats.keys()), specs, mapping,
                                        f"{where} record {i + 1}", kind="feature",
                                        source_name=where)
            feat = feats[cols[name]]
            have = feat.WhichOneof("kind")
            if have != want_list:
                raise DataError(
                    f"{where}: dtype mismatch in record {i + 1}: feature {cols[name]!r} is a "
                    f"{have or 'empty feature'} but serving input {name!r} is "
                    f"{_dtype_label(spec)} (needs {want_list})")
            v = list(getattr(feat, want_list).value)
            if per_row is None:
                per_row = len(v)
            elif len(v) != per_row:
                raise DataError(f"{where}: feature {cols[name]!r} has {len(v)} value(s) in "
                                f"record {i + 1} but {per_row} in earlier records")
            values.append(v)
        if kind == "string":
            arr = np.empty((len(values), per_row or 0), dtype=object)
            arr[:] = values
        else:
            arr = np.array(values, dtype=np.float64 if kind == "float" else np.int64)
        arr = arr.reshape(rows_shape(spec.shape, len(values), per_row or 0, name, where))
        arrays[name] = cast_array(arr, spec, name, where)
    return arrays, total


def _read_npz(path, specs, *, num_rows, seed, mapping):
    where = os.path.basename(os.fspath(path))
    try:
        npz = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: not a readable .npz file: {e}") from None
    with npz:
        keys = list(npz.files)
        if not keys:
            raise DataError(f"{where}: the source is empty (no arrays)")
        cols = _resolve_columns(keys, specs, mapping, where, kind="array")
        arrays_src = {}
        n = None
        for name in specs:
            try:
                a = npz[cols[name]]
            except ValueError as e:
                raise DataError(f"{where}: array {cols[name]!r} holds Python objects "
                                f"(pickled); re-save it with a numeric or bytes dtype: {e}") \
                    from None
            if a.ndim == 0:
                raise DataError(f"{where}: array {cols[name]!r} is a scalar; rows must be on "
                                "axis 0")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise DataError(f"{where}: arrays have different row counts ({cols[name]!r} "
                                f"has {a.shape[0]}, others {n})")
            arrays_src[name] = a
        if not n:
            raise DataError(f"{where}: the source is empty (0 rows)")
        sample, total = reservoir_sample(range(n), num_rows, seed)
        idx = np.fromiter((i for i, _ in sample), dtype=np.int64, count=len(sample))
        arrays = {name: cast_array(a[idx], specs[name], name, where)
                  for name, a in arrays_src.items()}
    return arrays, total


# --------------------------------------------------------------------------- writing
def _legacy_feeds(arrays: dict, specs: dict, batch_size: int) -> np.ndarray:
    n = next(iter(arrays.values())).shape[0]
    starts = list(range(0, n, batch_size))
    feeds = np.empty(len(starts), dtype=object)
    for k, s in enumerate(starts):
        feeds[k] = {specs[name].tensor_name: a[s:s + batch_size] for name, a in arrays.items()}
    return feeds


# --------------------------------------------------------------------------- API
def make_calibration(source, save_path, model_path, *, num_rows=opts.CALIBRATE.num_rows, seed=opts.CALIBRATE.seed,
                     format=None, columns=None, mapping=None, delimiter=None, has_header=True, tags=None,
                     signature=opts.DEFAULT_SIGNATURE, legacy_npy=False, legacy_batch_size=opts.OPTIMIZE.calib_batch_size,
                     overwrite=False) -> CalibrationResult:
    """Sample ``num_rows`` rows of ``source`` into a calibration ``.npz`` for ``model_path``.

    ``source`` is a CSV/TSV (header, or ``columns=``; no header and 40 fields means
    Criteo's ``label,I1..I13,C1..C26``), a TFRecord of ``tf.train.Example`` or an npz.
    Columns map to serving inputs by name, or through ``mapping={'column': 'input'}``.
    Sampling is a seeded streaming reservoir: the same seed gives the same rows.
    Empty numeric CSV fields (Criteo's missing values) become 0, with a warning.
    With ``legacy_npy`` a pickled list of feed dicts is also written as ``<stem>.npy``.
    """
    source = os.fspath(source)
    save_path = os.fspath(save_path)
    if not isinstance(num_rows, (int, np.integer)) or isinstance(num_rows, bool) or num_rows < 1:
        raise ConfigError(f"num_rows must be a positive integer, got {num_rows!r}")
    if legacy_npy and (not isinstance(legacy_batch_size, (int, np.integer))
                       or legacy_batch_size < 1):
        raise ConfigError(f"legacy_batch_size must be a positive integer, got "
                          f"{legacy_batch_size!r}")
    if mapping is not None and not isinstance(mapping, dict):
        raise ConfigError("mapping must be a dict {'column': 'serving_input'}")
    fmt = detect_format(source, format)
    if not os.path.exists(source):
        raise DataError(f"data source not found: {source}")
    if os.path.isdir(source):
        raise DataError(f"data source is a directory, not a file: {source}")
    legacy_path = os.path.splitext(save_path)[0] + ".npy" if legacy_npy else None
    if not overwrite:
        for p in filter(None, (save_path, legacy_path)):
            if os.path.exists(p):
                raise OutputExistsError(f"{p} exists; pass overwrite=True to replace it")
    specs = load_signature_specs(model_path, tags=tags, signature=signature)
    if not specs:
        raise DataError(f"signature {signature!r} of {model_path} has no inputs")

    if fmt in ("csv", "tsv"):
        if delimiter is None:
            delimiter = "\t" if fmt == "tsv" else ","
        if columns is not None and has_header:
            log.info("columns= given: the header row is skipped and replaced by it")
        arrays, total = _read_csv(source, specs, num_rows=num_rows, seed=seed,
                                  delimiter=delimiter, columns=columns,
                                  has_header=has_header, mapping=mapping)
    elif fmt == "tfrecord":
        arrays, total = _read_tfrecord(source, specs, num_rows=num_rows, seed=seed,
                                       mapping=mapping)
    else:
        arrays, total = _read_npz(source, specs, num_rows=num_rows, seed=seed, mapping=mapping)

    rows = next(iter(arrays.values())).shape[0]
    if total < num_rows:
        log.warning("%s has only %d row(s) (< num_rows=%d); taking all of them",
                    os.path.basename(source), total, num_rows)
    else:
        log.info("sampled %d of %d rows from %s (seed %d)", rows, total,
                 os.path.basename(source), seed)

    arrays = {k: to_storable(a, k) for k, a in arrays.items()}
    save_calibration_npz(arrays, save_path, overwrite=overwrite)
    if legacy_path:
        feeds = _legacy_feeds(arrays, specs, legacy_batch_size)
        with atomic_output_file(legacy_path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
            np.save(f, feeds, allow_pickle=True)
        log.info("wrote legacy feed-dict file %s (%d batches)", legacy_path, len(feeds))
    log.info("wrote calibration file %s (%d rows, inputs: %s)", save_path, rows,
             ", ".join(arrays))
    return CalibrationResult(
        path=save_path, rows=int(rows),
        inputs={k: {"dtype": str(a.dtype), "shape": list(a.shape)} for k, a in arrays.items()},
        source=source, format=fmt, legacy_path=legacy_path, source_rows=int(total))
