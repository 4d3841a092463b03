"""BF16: bfloat16 values (round to nearest even), dequantized by a Cast."""
from __future__ import annotations

from tensorflow.core.framework import types_pb2

from lpo.formats._cast import build_dequant, nbytes, plan_var, simulate  # noqa: F401 - this form's API
from lpo.formats.base import chunk_map
from lpo.numerics import quant

NAME = DTYPE = "BF16"
SCHEME = "cast"
STORAGE = types_pb2.DT_BFLOAT16


def quantize(x, *, name="tensor", chunk_rows=None):
    """float32 -> ``ml_dtypes.bfloat16`` (nearest even), row chunk by row chunk."""
    return chunk_map(quant.to_bf16, x, quant._bf16_dtype())


def dequantize(b):
    """bfloat16 -> float32 (exact)."""
    return quant.bf16_to_f32(b)


def encode(vc, x, name, chunk_rows=None):
    """The table as bfloat16 under its key and slice."""
    return [(vc.key, vc.target_slice, quantize(x, name=name))]
