"""Pure numpy numerics: low-precision rounding and quantization, activation range observers.

Nothing here touches protos or TensorFlow.
"""
