"""The plan: what gets converted, to which dtype, with which scheme.

A :class:`Plan` is decided once by ``optimize()`` and stored in the optimized
SavedModel as ``assets.extra/lpo_manifest.json``. The graph passes read its node
names; the checkpoint converter reads its variable entries. ``convert_ckpt()``
replays it on a new checkpoint, so a refresh equals a re-optimization.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from lpo.errors import ModelFormatError

MANIFEST_DIR = "assets.extra"
MANIFEST_NAME = "lpo_manifest.json"
MANIFEST_FORMAT = 1
DTYPES = ("BF16", "FP16", "INT8")


@dataclass
class VarConversion:
    """How one checkpoint tensor (or one slice of it) is converted.

    ``key``/``slice`` name the FP32 source in the checkpoint; the converted values
    keep the same key and slice unless ``dst_key`` renames them. INT8 also writes
    ``scale_key`` (float32, ``scale_shape``); ``axis`` is the axis whose entries keep
    their own scale. A DeepRec EmbeddingVariable (``role='ev'``) is a tensor group:
    ``key``/``dst_key`` are the EV names before/after (``<name>-values`` is converted,
    ``-keys``, ``-freqs``, ... are copied under the new name) and ``shape`` is
    ``[-1, dim]`` (the row count is the checkpoint's).
    """

    key: str
    slice: str
    shape: list[int]
    role: str
    dtype: str
    scale_key: str | None = None
    scale_shape: list[int] | None = None
    axis: int | None = None
    dst_key: str | None = None


@dataclass
class Conversion:
    """One optimized node: an embedding variable or a dense MatMul."""

    kind: str
    node: str
    dtype: str
    scheme: str
    mode: str = ""
    variables: list[VarConversion] = field(default_factory=list)
    targets: dict = field(default_factory=dict)
    activation_range: list[float] | None = None
    calib_method: str | None = None
    calib_error: dict | None = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Conversion":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["variables"] = [VarConversion(**v) for v in d.get("variables", [])]
        return cls(**d)


@dataclass
class Plan:
    """The list of conversions plus the options that produced them."""

    data_type: str
    conversions: list[Conversion] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    requires: dict = field(default_factory=dict)
    lpo_version: str = ""

    def var_conversions(self) -> dict[tuple[str, str], VarConversion]:
        """Map (checkpoint key, slice) to its conversion."""
        return {(v.key, v.slice): v for c in self.conversions for v in c.variables}

    def to_dict(self) -> dict:
        """Return the manifest as a JSON-able dict."""
        return {
            "format": MANIFEST_FORMAT,
            "lpo_version": self.lpo_version,
            "data_type": self.data_type,
            "options": self.options,
            "requires": self.requires,
            "conversions": [c.to_dict() for c in self.conversions],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Build a plan from a manifest dict."""
        if d.get("format") != MANIFEST_FORMAT:
            raise ModelFormatError(
                f"lpo manifest format {d.get('format')!r} is not supported by this lpo "
                f"(expects {MANIFEST_FORMAT}); re-optimize the model with this version"
            )
        return cls(
            data_type=d["data_type"],
            conversions=[Conversion.from_dict(c) for c in d["conversions"]],
            options=d.get("options", {}),
            requires=d.get("requires", {}),
            lpo_version=d.get("lpo_version", ""),
        )

    def dumps(self) -> str:
        """Serialize deterministically (sorted keys, fixed indentation)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"


def manifest_path(model_path: str) -> str:
    """Return where the manifest of the SavedModel at ``model_path`` lives."""
    return os.path.join(model_path, MANIFEST_DIR, MANIFEST_NAME)


def read_manifest(model_path: str) -> Plan:
    """Read the plan stored in an optimized SavedModel."""
    path = manifest_path(model_path)
    if not os.path.isfile(path):
        raise ModelFormatError(
            f"{model_path} has no lpo manifest ({MANIFEST_DIR}/{MANIFEST_NAME}); "
            "pass a SavedModel written by lpo.optimize()"
        )
    try:
        with open(path, encoding="utf-8") as f:
            return Plan.from_dict(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"the lpo manifest {path} is corrupt ({e}); re-optimize the model") from e
