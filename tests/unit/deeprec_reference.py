"""numpy references of DeepRec's EV checkpoint conversion (tensorflow/c/quantize_embedding_variable.cc).

Written element by element after the C++ (DeepRec-AI/DeepRec, the ConvertToInt8Value /
ConvertToBF16Value / ConvertToHalfValue version), independently of lpo.numerics.quant.
"""
import math

import numpy as np


def deeprec_int8(x):
    """ConvertToInt8Value, element by element (tensorflow/c/quantize_embedding_variable.cc)."""
    x = np.asarray(x, np.float32)
    d = x.shape[-1]
    flat = x.reshape(-1)
    maxv = [np.float32(0.0)] * d
    for i in range(flat.size):
        maxv[i % d] = max(maxv[i % d], np.float32(abs(flat[i])))
    scale = np.array([float(m) / 127.0 for m in maxv], np.float32)  # float / 127.0 (double) -> float
    q = np.empty(flat.size, np.int8)
    for i in range(flat.size):
        s = scale[i % d]
        if s == 0:
            q[i] = 0  # 0/0: static_cast<int8_t>(NaN) is 0 on x86
            continue
        v = float(np.float32(flat[i]) / s)  # float division
        q[i] = int(math.copysign(math.floor(abs(v) + 0.5), v))  # C round(): halves away from zero
    return q.reshape(x.shape), scale


def deeprec_bf16_bits(x):
    """FloatToBFloat16 of TF 1.x: the high 16 bits."""
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def reference_values(dtype, x):
    """(converted values as comparable numpy, scale or None, dequantized float32)."""
    if dtype == "INT8":
        q, s = deeprec_int8(x)
        return q, s, q.astype(np.float32) * s
    if dtype == "BF16":
        b = deeprec_bf16_bits(x)
        return b, None, (b.astype(np.uint32) << 16).view(np.float32)
    h = x.astype(np.float16)
    return h, None, h.astype(np.float32)


def comparable(a):
    a = np.asarray(a)
    return a.view(np.uint16) if a.dtype.name == "bfloat16" else a
