"""DeepRec EmbeddingVariable values, converted by DeepRec's own formulas (not a registered form).

An EV's ``-values`` are written under ``<dst_key>-values``: BF16 by truncation, FP16 by
rounding, INT8 with DeepRec's per-dim scale (see :mod:`lpo.numerics.quant`'s ``ev_*``).
"""
from __future__ import annotations

import numpy as np

from lpo.errors import CheckpointError
from lpo.formats.base import chunk_check, chunk_map, side_outputs
from lpo.numerics import quant


def _bf16(vc, x, name, rows):
    return [chunk_map(quant.ev_to_bf16, x, quant._bf16_dtype())]


def _fp16(vc, x, name, rows):
    chunk_check(quant.check_fp16_range, x, name)
    return [chunk_map(quant.to_fp16, x, np.float16)]


def _int8(vc, x, name, rows):
    return list(quant.ev_quantize_int8(x, name=name, chunk_rows=rows))


#: EV dtype -> converter of the values (and, for INT8, the scale).
ENCODERS = {"BF16": _bf16, "FP16": _fp16, "INT8": _int8}


def encode(vc, x, name, chunk_rows=None) -> list[tuple[str, str, np.ndarray]]:
    """``(<dst>-values, "", array)`` and, for INT8, ``(scale_key, "", scale[dim])``."""
    fn = ENCODERS.get(vc.dtype)
    if fn is None:
        raise CheckpointError(f"unknown target dtype {vc.dtype!r} for {name} in the lpo manifest")
    values, *side = fn(vc, x, name, chunk_rows)
    return [(vc.dst_key + "-values", "", values)] + (side_outputs(vc, *side) if side else [])
