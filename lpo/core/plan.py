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
#: 2 added INT4 tables and float16 row scales (VarConversion ``scale_dtype``, ``offset_key``,
#: ``base_key``, ``out_shape``, ``out_slice``); format 1 manifests still replay (float32 scales).
MANIFEST_FORMAT = 2
#: 3 adds grouped tables (VarConversion ``group``); a plan without groups is still written as format 2
GROUPED_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)


@dataclass
class VarConversion:
    """How one checkpoint tensor (or one slice of it) is converted.

    ``key``/``slice`` name the FP32 source in the checkpoint; the converted values
    keep the same key and slice unless ``dst_key`` renames them (or ``out_slice`` re-slices
    them). INT8 and INT4 also write ``scale_key`` (``scale_shape``, of ``scale_dtype``:
    ``FP32``, or ``FP16`` for row scales, which then come with the float32 scalar
    ``base_key``: effective scale = float16 value * base); ``axis`` is the axis whose entries
    keep their own scale. INT4 writes uint8 ``out_shape`` (``[rows, ceil(D/2)]``, two values
    a byte) and ``offset_key`` (like the scale). Format 1 manifests have no ``scale_dtype``:
    FP32. A DeepRec EmbeddingVariable (``role='ev'``) is a tensor group:
    ``key``/``dst_key`` are the EV names before/after (``<name>-values`` is converted,
    ``-keys``, ``-freqs``, ... are copied under the new name) and ``shape`` is
    ``[-1, dim]`` (the row count is the checkpoint's).

    A member of a grouped table (lpo/passes/grouping.py) has ``group = [index, size]``: its
    table is written as rows ``out_slice`` of the group variable ``dst_key`` (``out_shape`` its
    rows there), and the side keys name the group's side tensors (per-row ones concatenated,
    per-table ones stacked ``[size, ...]``, see :mod:`lpo.formats.grouped`).
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
    scale_dtype: str | None = None
    offset_key: str | None = None
    base_key: str | None = None
    out_shape: list[int] | None = None
    out_slice: str | None = None
    group: list[int] | None = None

    @property
    def target_slice(self) -> str:
        """The slice spec the converted tensor is written under."""
        return self.slice if self.out_slice is None else self.out_slice

    def side_keys(self) -> list[str]:
        """The checkpoint keys written beside the converted tensor (scale, offset, base)."""
        return [k for k in (self.scale_key, self.offset_key, self.base_key) if k]

    def source_full_shape(self) -> list[int]:
        """The full shape of the FP32 source tensor (from ``slice`` when it is a part)."""
        if not self.slice:
            return list(self.shape)
        return [int(t) for t in self.slice.split()[:len(self.shape)]]


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
    #: the serving CPU the forms were chosen for (lpo.target.Target.to_dict())
    target: dict = field(default_factory=dict)
    #: what each exact structural pass rewrote before the conversions: ``{pass: [entry]}``
    structural: dict = field(default_factory=dict)

    def var_conversions(self) -> dict[tuple[str, str], VarConversion]:
        """Map (checkpoint key, source slice) to its conversion."""
        return {(v.key, v.slice): v for c in self.conversions for v in c.variables}

    def by_target(self) -> dict[tuple[str, str], VarConversion]:
        """Map (checkpoint key, slice the optimized graph restores) to its conversion."""
        return {(v.key, v.target_slice): v for c in self.conversions for v in c.variables}

    def groups(self) -> dict[str, list[VarConversion]]:
        """Map each grouped table's variable key to its members' conversions, in row order."""
        out: dict[str, list[VarConversion]] = {}
        for c in self.conversions:
            for v in c.variables:
                if v.group is not None:
                    out.setdefault(v.dst_key, []).append(v)
        return {k: sorted(vs, key=lambda v: v.group[0]) for k, vs in out.items()}

    def side_keys(self) -> set[str]:
        """Checkpoint keys the conversion produces beside the tables and weights (scales, offsets, bases)."""
        return {k for c in self.conversions for v in c.variables for k in v.side_keys()}

    def to_dict(self) -> dict:
        """Return the manifest as a JSON-able dict."""
        return {
            "format": GROUPED_FORMAT if self.groups() else MANIFEST_FORMAT,
            "lpo_version": self.lpo_version,
            "data_type": self.data_type,
            "options": self.options,
            "requires": self.requires,
            "target": self.target,
            "conversions": [c.to_dict() for c in self.conversions],
            **({"structural": self.structural} if self.structural else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Build a plan from a manifest dict."""
        if d.get("format") not in READABLE_FORMATS:
            raise ModelFormatError(
                f"lpo manifest format {d.get('format')!r} is not supported by this lpo "
                f"(reads {', '.join(map(str, READABLE_FORMATS))}); re-optimize the model with this version, "
                "or upgrade lpo to the version that wrote it"
            )
        return cls(
            data_type=d["data_type"],
            conversions=[Conversion.from_dict(c) for c in d["conversions"]],
            options=d.get("options", {}),
            requires=d.get("requires", {}),
            lpo_version=d.get("lpo_version", ""),
            target=d.get("target", {}),
            structural=d.get("structural", {}),
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
