"""Calibration file I/O (numpy only at module level); the range observers are in
:mod:`lpo.numerics.observers`.

Calibration files (:func:`load_calibration`):

* ``.npz`` - one array per serving-signature input name, rows on axis 0. Loaded with
  ``allow_pickle=False``, so string inputs must be stored as fixed-width ``<U..``
  (unicode, encoded as UTF-8) or ``S..`` (bytes; numpy strips trailing NUL bytes)
  arrays, never object arrays. :func:`save_calibration_npz` does that conversion.
* legacy ``.npy`` - DeepRec's pickled list of feed dicts (``{'I1:0': array, ...}``), one
  dict per batch (kept as given; ``batch_size`` does not apply). Loading executes
  pickle code, so it needs ``allow_pickle=True``.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Mapping

import numpy as np

from lpo.data.cast import cast_array
from lpo.errors import CalibrationError, ConfigError, DataError, closest
from lpo.options import OPTIMIZE

log = logging.getLogger(__name__)

def iter_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict]:
    """Yield dicts of consecutive ``batch_size``-row slices (last may be smaller).

    Rank-0 arrays are passed whole to every batch.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = _row_count(arrays)
    for a in range(0, n, int(batch_size)):
        yield {k: (v if np.ndim(v) == 0 else v[a:a + batch_size]) for k, v in arrays.items()}


def _row_count(arrays: Mapping[str, np.ndarray]) -> int:
    counts = {k: len(v) for k, v in arrays.items() if np.ndim(v) > 0}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
        raise CalibrationError(f"calibration inputs have different row counts ({detail}); "
                               f"every input needs the same number of rows on axis 0")
    return next(iter(counts.values()), 0)


def _conform(arr, name: str, spec, where: str) -> np.ndarray:
    """Cast ``arr`` to the spec by the one caster's rules (:mod:`lpo.data.cast`)."""
    try:
        return cast_array(arr, spec, name, where)
    except DataError as e:
        raise CalibrationError(str(e)) from None


def _missing_error(missing, present, path) -> CalibrationError:
    hints = []
    for m in missing:
        near = closest(m, present)
        if near:
            hints.append(f"{m!r} -> did you mean {', '.join(map(repr, near))}?")
    msg = (f"calibration file {path} lacks signature input(s) "
           f"{', '.join(map(repr, sorted(missing)))}; keys present: "
           f"{', '.join(map(repr, sorted(present))) or '(none)'}")
    if hints:
        msg += ". " + " ".join(hints)
    return CalibrationError(msg + ". Add one array per serving-signature input.")


def load_calibration(path, input_specs: Mapping[str, tuple], *, batch_size: int = OPTIMIZE.calib_batch_size,
                     allow_pickle: bool = False, max_batches: int | None = None,
                     tensor_names: Mapping[str, str] | None = None) -> list[dict[str, np.ndarray]]:
    """Load a calibration file as a list of feed dicts keyed by signature input name.

    ``input_specs``: ``{name: (np.dtype, shape with None for unknown dims)}``; string
    inputs use ``np.dtype(object)`` and come back as object arrays of bytes. ``.npz`` is
    batched into ``batch_size`` rows; a legacy ``.npy`` (pickled feed dicts, needs
    ``allow_pickle=True``) keeps its own batches, matched by input name or tensor name
    (``'I1:0'``; ``tensor_names`` maps input name -> tensor name when they differ).
    Raises CalibrationError for every problem with the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CalibrationError(f"calibration file {path} does not exist; pass an .npz "
                               f"(one array per signature input) or create one with "
                               f"'lpo make-calibration'")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and int(max_batches) < 1:
        raise ConfigError(f"max_batches must be >= 1, got {max_batches}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        batches = _load_npz(path, input_specs, int(batch_size), max_batches)
    elif ext == ".npy":
        batches = _load_legacy(path, input_specs, allow_pickle, max_batches, tensor_names)
    else:
        raise CalibrationError(f"calibration file {path} has unknown extension {ext!r}; "
                               f"use .npz (or a legacy pickled .npy)")
    log.info("calibration: %d batch(es) from %s", len(batches), path)
    return batches


def _load_npz(path, specs, batch_size, max_batches):
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError
        raise CalibrationError(f"cannot read calibration file {path} as .npz: {e}") from e
    with npz:
        present = list(npz.files)
        missing = [n for n in specs if n not in present]
        if missing:
            raise _missing_error(missing, present, path)
        for k in present:
            if k not in specs:
                log.debug("calibration: ignoring key %r of %s (not a signature input)", k, path)
        arrays = {}
        for name, spec in specs.items():
            try:
                raw = npz[name]
            except ValueError as e:
                raise CalibrationError(
                    f"input {name!r} in {path} is an object (pickled) array; store "
                    f"strings as fixed-width '<U..' or 'S..' arrays (see "
                    f"save_calibration_npz)") from e
            arrays[name] = _conform(raw, name, spec, os.path.basename(path))
    n = _row_count(arrays)
    if n == 0:
        raise CalibrationError(f"calibration file {path} has 0 rows; it needs at least one")
    batches = []
    for b in iter_batches(arrays, batch_size):
        batches.append(b)
        if max_batches is not None and len(batches) >= max_batches:
            break
    return batches


def _npy_is_pickle(path) -> bool:
    """True if the .npy holds an object (pickled) array; reads only the header."""
    try:
        np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e).lower():
            return True
        raise CalibrationError(f"cannot read calibration file {path} as .npy: {e}") from e
    except Exception as e:
        raise CalibrationError(f"cannot read calibration file {path} as .npy: {e}") from e
    return False


def _load_legacy(path, specs, allow_pickle, max_batches, tensor_names):
    if not _npy_is_pickle(path):
        raise CalibrationError(
            f"{path} holds a plain array, not a list of feed dicts; for one array per "
            f"input use an .npz file")
    if not allow_pickle:
        raise CalibrationError(
            f"{path} is a legacy pickled .npy; loading it executes arbitrary code from "
            f"the file. Only if you trust it, opt in with allow_pickle=True (CLI: "
            f"--allow-pickle), or convert it to .npz (one array per input).")
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as e:
        raise CalibrationError(f"cannot unpickle calibration file {path}: {e}") from e
    items = obj.tolist() if isinstance(obj, np.ndarray) else obj
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, (list, tuple)) or not all(isinstance(d, dict) for d in items):
        raise CalibrationError(f"{path} must hold a list of feed dicts "
                               f"({{input name: array}}), got {type(items).__name__}")
    if not items:
        raise CalibrationError(f"calibration file {path} holds no feed dicts")
    tensor_names = dict(tensor_names or {})

    def strip(k):
        k = str(k)
        return k[:-2] if k.endswith(":0") else k

    batches = []
    for i, feed in enumerate(items):
        lookup = {}
        for k, v in feed.items():
            lookup.setdefault(str(k), v)
            lookup.setdefault(strip(k), v)
        batch, missing = {}, []
        for name, spec in specs.items():
            cands = [name, strip(name)]
            if name in tensor_names:
                cands += [tensor_names[name], strip(tensor_names[name])]
            key = next((c for c in cands if c in lookup), None)
            if key is None:
                missing.append(name)
            else:
                batch[name] = _conform(lookup[key], name, spec, f"{os.path.basename(path)} feed dict {i}")
        if missing:
            raise _missing_error(missing, [str(k) for k in feed], f"{path} (feed dict {i})")
        if _row_count(batch) == 0 and any(np.ndim(v) for v in batch.values()):
            raise CalibrationError(f"feed dict {i} of {path} has 0 rows")
        batches.append(batch)
        if max_batches is not None and len(batches) >= max_batches:
            break
    return batches


def to_storable(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` in a dtype ``np.savez`` stores without pickle (object strings -> ``S``/``<U``)."""
    arr = np.asarray(arr)
    if arr.dtype.kind != "O":
        return arr
    flat = arr.ravel().tolist()
    if all(isinstance(s, bytes) for s in flat):
        return np.array(flat, dtype=bytes).reshape(arr.shape) if flat else \
            np.zeros(arr.shape, dtype="S1")
    if all(isinstance(s, (str, bytes)) for s in flat):
        return np.array([s.decode("utf-8") if isinstance(s, bytes) else s for s in flat],
                        dtype=str).reshape(arr.shape)
    raise CalibrationError(f"input {name!r} is an object array of non-strings; "
                           f"it cannot be stored without pickle")


def save_calibration_npz(batches_or_arrays, path, *, overwrite: bool = True) -> str:
    """Write ``{name: array}`` or a list of feed dicts (concatenated on axis 0) to ``path``.

    Object string arrays become fixed-width bytes/unicode so the file loads without
    pickle. The file is written atomically (:func:`lpo.fsutil.atomic_output_file`).
    """
    path = os.fspath(path)
    if isinstance(batches_or_arrays, Mapping):
        arrays = dict(batches_or_arrays)
    else:
        batches = list(batches_or_arrays)
        if not batches:
            raise CalibrationError("save_calibration_npz: no batches to save")
        keys = list(batches[0])
        for i, b in enumerate(batches):
            if set(b) != set(keys):
                raise CalibrationError(f"batch {i} has keys {sorted(b)}, batch 0 has "
                                       f"{sorted(keys)}")
        arrays = {k: np.concatenate([np.asarray(b[k]) for b in batches], axis=0)
                  for k in keys}
    arrays = {str(k): to_storable(v, str(k)) for k, v in arrays.items()}
    _row_count(arrays)
    from lpo.fsutil import atomic_output_file

    needed = sum(a.nbytes for a in arrays.values())
    with atomic_output_file(path, overwrite=overwrite, needed=needed) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


__all__ = ["load_calibration", "save_calibration_npz", "iter_batches"]
