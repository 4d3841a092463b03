"""Read a SavedModel's serving signature from ``saved_model.pb`` (protobuf only).

No graph is imported or executed: this is cheap and safe to call on any path.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from lpo.errors import ModelFormatError
from lpo.options import DEFAULT_SIGNATURE, DEFAULT_TAGS

__all__ = [
    "InputSpec",
    "load_saved_model_proto",
    "find_meta_graph",
    "find_signature",
    "load_signature_specs",
    "load_output_specs",
]



class InputSpec(NamedTuple):
    """One signature tensor: numpy dtype, shape (``None`` = unknown dim), graph tensor name.

    A named tuple, so ``(dtype, shape)`` indexing (as ``lpo.data.calibration`` expects) works.
    """

    dtype: np.dtype
    shape: tuple
    tensor_name: str

    def to_dict(self) -> dict:
        """JSON-able form: dtype name, shape list, tensor name."""
        return {"dtype": self.dtype.name if self.dtype.kind != "O" else "string",
                "shape": list(self.shape), "tensor_name": self.tensor_name}


def load_saved_model_proto(model_path):
    """Parse ``<model_path>/saved_model.pb``; raise ModelFormatError when missing or corrupt."""
    from lpo.core.savedmodel import read_saved_model

    return read_saved_model(os.fspath(model_path))


def find_meta_graph(saved_model, tags=None):
    """Return the MetaGraphDef ``tags`` selects (:func:`lpo.core.savedmodel.select_meta_graph`'s rule)."""
    from lpo.core.savedmodel import select_meta_graph

    return select_meta_graph(saved_model, tags)


def find_signature(meta_graph, signature=DEFAULT_SIGNATURE):
    """Return the SignatureDef named ``signature``; the error lists those available."""
    sigs = meta_graph.signature_def
    if signature not in sigs:
        avail = sorted(sigs.keys())
        raise ModelFormatError(
            f"signature {signature!r} not found; available signatures: "
            f"{', '.join(avail) if avail else '<none>'}")
    return sigs[signature]


def _tensor_specs(tensor_map) -> dict:
    from tensorflow.python.framework import dtypes

    out = {}
    for name in sorted(tensor_map.keys()):
        info = tensor_map[name]
        if info.WhichOneof("encoding") != "name":
            raise ModelFormatError(
                f"signature tensor {name!r} is a composite (sparse/ragged) tensor; "
                "only dense tensors are supported")
        tf_dtype = dtypes.as_dtype(info.dtype)
        np_dtype = np.dtype(object) if tf_dtype == dtypes.string else np.dtype(
            tf_dtype.as_numpy_dtype)
        if info.tensor_shape.unknown_rank:
            shape = None
        else:
            shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        out[name] = InputSpec(dtype=np_dtype, shape=shape, tensor_name=info.name)
    return out


def _signature(model_path, tags, signature):
    sm = load_saved_model_proto(model_path)
    return find_signature(find_meta_graph(sm, tags), signature)


def load_signature_specs(model_path, tags=DEFAULT_TAGS, signature=DEFAULT_SIGNATURE) -> dict:
    """Map each serving input name to its :class:`InputSpec` (strings have dtype ``object``).

    ``shape`` is a tuple with ``None`` for unknown dims, or ``None`` for unknown rank.
    """
    return _tensor_specs(_signature(model_path, tags, signature).inputs)


def load_output_specs(model_path, tags=DEFAULT_TAGS, signature=DEFAULT_SIGNATURE) -> dict:
    """Map each signature output name to its :class:`InputSpec`."""
    return _tensor_specs(_signature(model_path, tags, signature).outputs)
