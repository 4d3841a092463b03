"""The one input caster: an array of rows -> a serving input's dtype and shape.

Calibration files, ``make_calibration`` sources and validation data all go through
:func:`cast_array`, with these rules (anything else raises :class:`~lpo.errors.DataError`
naming the input and what to store instead):

* **strings**: ``<U..`` (encoded as UTF-8), ``S..`` or object arrays of str/bytes become an
  object array of ``bytes``; numbers are refused for a string input, strings for a numeric one.
* **bool**: from bool, or from numbers that are all 0 or 1.
* **integers**: from integers or from finite, whole floats, within the target's range.
* **floats**: from any number, unless a finite value overflows the target (e.g. 1e39 to float32).
* **shape**: the rank must equal the signature's (unknown rank: any) and every known
  dimension after the batch axis must match. Nothing is reshaped: readers whose
  values are flat per row (CSV, TFRecord) shape them first with :func:`rows_shape`.
"""
from __future__ import annotations

import numpy as np

from lpo.errors import DataError


def is_string(dtype) -> bool:
    """True for numpy string-like dtypes (object, bytes, unicode)."""
    return np.dtype(dtype).kind in "OSU"


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("None" if d is None or d < 0 else str(d) for d in shape) + ("," if len(shape) == 1
                                                                                       else "") + ")"


def _to_bytes(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    if arr.dtype.kind == "U":
        flat = [s.encode("utf-8") for s in arr.ravel().tolist()]
    elif arr.dtype.kind == "S":
        flat = arr.ravel().tolist()
    elif arr.dtype.kind == "O":
        flat = []
        for s in arr.ravel().tolist():
            if not isinstance(s, (bytes, str)):
                raise DataError(f"{where}: serving input {name!r} is a string input but the data holds "
                                f"{type(s).__name__} values; store strings (or bytes)")
            flat.append(s if isinstance(s, bytes) else s.encode("utf-8"))
    else:
        raise DataError(f"{where}: dtype mismatch for serving input {name!r}: it is a string input but the "
                        f"data has dtype {arr.dtype}; store strings (a '<U..' or 'S..' array)")
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape)


def _to_number(arr: np.ndarray, dt: np.dtype, name: str, where: str) -> np.ndarray:
    if arr.dtype == dt:
        return arr
    bad = f"{where}: dtype mismatch for serving input {name!r}: expects {dt.name} but the data"
    if is_string(arr.dtype):
        raise DataError(f"{bad} holds strings ({arr.dtype}); store numbers")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{bad} has dtype {arr.dtype}, which cannot be cast; store {dt.name}")
    if dt.kind == "b":
        if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            raise DataError(f"{bad} has {arr.dtype} values other than 0 and 1")
        return arr.astype(dt)
    if dt.kind in "iu":
        if arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr) & (np.floor(arr) == arr)):
            raise DataError(f"{bad} has non-integral {arr.dtype} values; store integers")
        if arr.size and arr.dtype.kind != "b":
            info = np.iinfo(dt)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise DataError(f"{bad} has values in [{lo}, {hi}], outside the {dt.name} range "
                                f"[{info.min}, {info.max}]")
        return arr.astype(dt)
    if dt.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(dt)
        if np.count_nonzero(~np.isfinite(out)) > np.count_nonzero(~np.isfinite(arr.astype(np.float64))):
            raise DataError(f"{bad} has values that overflow {dt.name}")
        return out
    raise DataError(f"{bad} has dtype {arr.dtype}, which cannot be cast safely")


def check_shape(arr: np.ndarray, shape, name: str, where: str) -> None:
    """Raise DataError unless ``arr`` has the rank and known dimensions of ``shape`` (``None``: any)."""
    if shape is None:
        return
    shape = tuple(shape)
    if arr.ndim != len(shape):
        hint = ""
        if arr.ndim + 1 == len(shape) and shape[-1] == 1:
            hint = f"; reshape it to {arr.shape + (1,)}"
        raise DataError(f"{where}: serving input {name!r} has shape {arr.shape} (rank {arr.ndim}) but the "
                        f"signature expects rank {len(shape)} {_fmt_shape(shape)}{hint}")
    for i, (got, want) in enumerate(zip(arr.shape, shape)):
        if i > 0 and want is not None and want >= 0 and got != want:
            raise DataError(f"{where}: serving input {name!r} has shape {arr.shape} but the signature "
                            f"expects {_fmt_shape(shape)} (dimension {i} differs)")


def cast_array(arr, spec, name: str, where: str) -> np.ndarray:
    """Cast ``arr`` (rows on axis 0) to ``spec`` (``(dtype, shape)`` or an InputSpec) by the rules above."""
    dt, shape = np.dtype(spec[0]), spec[1]
    arr = np.asarray(arr)
    arr = _to_bytes(arr, name, where) if is_string(dt) else _to_number(arr, dt, name, where)
    check_shape(arr, shape, name, where)
    return arr


def rows_shape(shape, n: int, per_row: int, name: str, where: str) -> tuple:
    """The shape of ``n`` rows of ``per_row`` flat values each, laid out as the signature ``shape`` asks."""
    if shape is None:
        return (n,) if per_row == 1 else (n, per_row)
    if len(shape) == 0:
        raise DataError(f"serving input {name!r} is a scalar (shape ()); it cannot take a batch of rows")
    inner = list(shape[1:])
    known = int(np.prod([d for d in inner if d is not None])) if inner else 1
    unknown = [i for i, d in enumerate(inner) if d is None]
    if len(unknown) > 1 or (not unknown and known != per_row) or (unknown and (known == 0 or per_row % known)):
        raise DataError(
            f"{where}: serving input {name!r} expects {list(shape)} per batch "
            f"({known if not unknown else 'a multiple of ' + str(known)} values per row) "
            f"but the source has {per_row} value(s) per row")
    if unknown:
        inner[unknown[0]] = per_row // known
    return (n, *inner)
