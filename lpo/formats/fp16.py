"""FP16: float16 values (round to nearest even; a table beyond 65504 is refused), dequantized by a Cast."""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2

from lpo.formats._cast import build_dequant, nbytes, plan_var, simulate  # noqa: F401 - this form's API
from lpo.formats.base import chunk_check, chunk_map
from lpo.numerics import quant

NAME = DTYPE = "FP16"
SCHEME = "cast"
STORAGE = types_pb2.DT_HALF


def quantize(x, *, name="tensor", chunk_rows=None):
    """float32 -> float16; ConfigError naming ``name`` where |x| > 65504."""
    chunk_check(quant.check_fp16_range, x, name)
    return chunk_map(quant.to_fp16, x, np.float16)


def dequantize(h):
    """float16 -> float32 (exact)."""
    return np.asarray(h).astype(np.float32)


def encode(vc, x, name, chunk_rows=None):
    """The table as float16 under its key and slice."""
    return [(vc.key, vc.target_slice, quantize(x, name=name))]
