"""Every option lpo takes, its valid values and its default, defined once.

The library, the CLI, the Kubeflow components, the Airflow operators and the DAGs
all read their choices and defaults from here, and normalize user input with the
functions below (case-insensitive choices, tags, batch sizes, ``opt_config`` as a
dict, a JSON string or a JSON file, and orchestrator thresholds where a negative
value means "off").
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from lpo.errors import ConfigError, closest

# --------------------------------------------------------------------------- choices
#: The opt_config value that keeps a node in float32.
KEEP = "FP32"
#: Data types a whole model can be optimized to (``data_type``). ``INT4`` means INT4
#: embedding tables with INT8 dense layers (each pass family declares its ``fallbacks``). ``FP32`` keeps every
#: table and layer float32 and applies only the exact structural passes (lpo.passes.registry).
DATA_TYPES = ("BF16", "FP16", "INT8", "INT4", KEEP)
#: Data types valid as ``opt_config`` values (per node).
NODE_DTYPES = DATA_TYPES
#: Embedding table scales (INT8 and INT4): one scale (and INT4 offset) per column or per row
#: (INT4 also ``per_row_sym``: one scale a row, no offset; see lpo.formats).
EMBEDDING_SCHEMES = ("per_dim", "per_row")
#: The INT4 scheme lpo prefers (FBGEMM's row-wise 4-bit form). Unless a node names one
#: (``"INT4:per_dim"``), an INT4 table takes it where the size rule allows
#: (lpo.formats.int4.select: at most INT4_MAX_SIZE_RATIO of the table's INT8 per_dim bytes),
#: else per_dim INT4 or INT8 per_dim. ``embedding_scheme`` is INT8 tables' scheme only.
INT4_SCHEME = "per_row"
#: ``data_type='INT4'`` keeps an INT4 scheme for a table only where it takes at most this fraction
#: of the table's INT8 per_dim bytes (lpo.formats.int4.PREFERENCE): row-wise (4 bytes of float16
#: scale and offset a row) from D = 20, row-wise symmetric with a one-byte scale from D = 7,
#: per_dim INT4 below (8 bytes a column), INT8 per_dim where none fits (D = 1).
#: A scheme one node names only has to be no larger than INT8.
INT4_MAX_SIZE_RATIO = 0.7
#: BF16/FP16 dense layers: the fastest form for the target (``auto``), 16-bit weights with a
#: float32 MatMul, or 16-bit arithmetic.
DENSE_MODES = ("auto", "weight_only", "compute")
#: INT8 dense layers: the fastest correct form for the target (``auto``); ``compute``: real int8
#: kernels (QuantizeV2 -> QuantizedMatMulWithBiasAndDequantize, needs oneDNN); ``simulate``:
#: calibrated 8-bit activations and weights with float32 kernels that run in every TF build
#: (FakeQuant; the form lpo always used, formerly called ``static``); ``weight_only``: int8
#: weights, float activations, no calibration.
INT8_DENSE_MODES = ("auto", "compute", "simulate", "weight_only")
#: Old names still accepted for ``int8_dense`` (and in opt_config: ``"INT8:static"``).
INT8_DENSE_ALIASES = {"static": "simulate"}
#: INT8 dense forms that quantize activations (and so need calibration data).
CALIBRATED_INT8_MODES = ("compute", "simulate")
#: Activation range search of static INT8 calibration.
CALIB_METHODS = ("l2", "minmax", "percentile")
#: Formats ``make_calibration`` reads.
DATA_FORMATS = ("csv", "tsv", "tfrecord", "npz")
#: Serving directory layouts of publish: ``current`` (``versions/<v>`` + a ``current`` symlink)
#: or ``tf_serving`` (numeric ``<v>`` directories, the layout TF Serving polls).
PUBLISH_LAYOUTS = ("current", "tf_serving")
#: The MetaGraph tags and signature lpo loads by default.
DEFAULT_TAGS = ("serve",)
DEFAULT_SIGNATURE = "serving_default"

# --------------------------------------------------------------------------- targets
#: The CPU the optimized model serves on. ``host``: the machine lpo runs on (its CPU flags and
#: oneDNN setting, see lpo/target.py); the others describe a serving machine. ``onednn`` is
#: whether stock TensorFlow runs oneDNN there (on by default with AVX512_VNNI, AVX_VNNI,
#: AVX512_BF16 or AMX; elsewhere only with TF_ENABLE_ONEDNN_OPTS=1).
TARGETS = {
    "portable": {"onednn": False, "features": (), "vendor": "",
                 "help": "any CPU and TensorFlow build: no oneDNN-only kernel"},
    "avx2": {"onednn": False, "features": ("avx2", "fma"), "vendor": "",
             "help": "AVX2-only CPUs (e.g. AMD Zen2/3, Intel Haswell-Skylake client): oneDNN off by default"},
    "avx2_onednn": {"onednn": True, "features": ("avx2", "fma"), "vendor": "",
                    "help": "AVX2-only CPUs serving with TF_ENABLE_ONEDNN_OPTS=1"},
    "avx512_vnni": {"onednn": True, "features": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
                    "vendor": "intel", "help": "Intel Cascade Lake / Ice Lake Xeon"},
    "avx512_bf16": {"onednn": True, "features": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                                  "avx_vnni", "avx512_bf16", "avx512_fp16"),
                    "vendor": "intel", "help": "Intel Sapphire/Emerald Rapids without AMX (e.g. in VMs)"},
    "amx": {"onednn": True, "features": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                                          "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"),
            "vendor": "intel", "help": "Intel Sapphire/Emerald/Granite Rapids with AMX"},
    "zen4": {"onednn": True, "features": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                           "avx512_bf16"), "vendor": "amd", "help": "AMD EPYC Genoa/Bergamo (Zen 4/5)"},
}
TARGET_NAMES = ("host",) + tuple(TARGETS)

#: Decision table of ``int8_dense='auto'`` / ``dense_mode='auto'`` (lpo/target.py:dense_mode):
#:
#: * INT8, target with oneDNN: ``compute`` for layers with at least INT8_COMPUTE_MIN_WEIGHTS
#:   weights (K*N), ``weight_only`` below (too small for int8 to beat float32 at batch 512:
#:   the quantize and scale ops cost more than the MatMul saves); a ``compute`` layer whose
#:   calibration misses :data:`ACTIVATION_GATE` falls back to ``weight_only``;
#: * INT8, target without oneDNN: ``weight_only`` (``simulate`` adds a FakeQuant op to the same
#:   float32 MatMul, so it is never faster, and 8-bit activations move single predictions);
#: * BF16: ``compute`` where bf16 MatMuls beat float32 (oneDNN and AMX, or AMD Zen 4 with
#:   AVX512_BF16) for layers with at least BF16_COMPUTE_MIN_WEIGHTS weights, else ``weight_only``.
#:   Intel AVX512_BF16 without AMX runs bf16 MatMuls ~1.7-2x slower than float32 (measured,
#:   README), so it stays weight-only;
#: * FP16: ``weight_only`` (oneDNN has no fast fused fp16 MatMul on these CPUs).
INT8_COMPUTE_MIN_WEIGHTS = 65536
BF16_COMPUTE_MIN_WEIGHTS = 65536


@dataclass(frozen=True)
class ActivationGate:
    """Outlier-proof INT8 activations: when a calibrated INT8 layer (``compute``/``simulate``) is safe.

    Measured per layer on the calibration rows (``calib_error`` in the manifest): ``clipped``, the
    fraction of input values outside the range, and ``output_rel_rmse``, the RMS change of the
    layer's output (``x @ W``, before bias and Relu) that 8-bit activations cause, relative to
    the output's RMS. A layer that ``int8_dense='auto'`` made calibrated falls back to
    ``weight_only`` when either exceeds its limit; an explicitly requested form is kept with a
    warning. ``lpo validate`` fails a model whose manifest records a calibrated layer over them.
    """

    max_clip_rate: float = 1e-3
    max_output_rel_rmse: float = 0.005

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)




@dataclass(frozen=True)
class OptimizeOptions:
    """Defaults of :func:`lpo.optimize` (and of every wrapper around it)."""

    data_type: str = "BF16"
    embedding_scheme: str = "per_dim"
    dense_mode: str = "auto"
    int8_dense: str = "auto"
    #: the serving CPU (a TARGETS name or ``host``): decides what ``auto`` means
    target: str = "host"
    calib_method: str = "minmax"
    calib_batch_size: int = 256
    #: weight_only/static dense layers: dequantize the weights once at load into a float32 local variable
    dequantize_at_load: bool = True
    #: INT4 tables: a scheme one node named in opt_config (``"INT4:per_dim"``); None: :data:`INT4_SCHEME`
    #: where the size rule allows (no error), else the smaller layout
    int4_scheme: Optional[str] = None
    #: apply the exact structural passes (``lpo.passes.registry.structural``: interaction masks, single-value
    #: lookups) before the precision passes, at every data type; False keeps the graph's structure
    folds: bool = True
    #: concatenate single-value-lookup tables of one dim and storage form into one variable: one gather
    #: and one dequantization per group (lpo.passes.grouping). Off by default until it composes with
    #: every form and AUTO (INT4 offsets in a group fail the checkpoint check); ``--group-tables`` turns it on
    group_tables: bool = False

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def normalized(self) -> "OptimizeOptions":
        """Return a copy with each choice checked and spelled canonically (ConfigError otherwise)."""
        return replace(
            self, data_type=normalize_dtype(self.data_type),
            embedding_scheme=choice(self.embedding_scheme, EMBEDDING_SCHEMES, "embedding_scheme"),
            dense_mode=choice(self.dense_mode, DENSE_MODES, "dense_mode"),
            int8_dense=normalize_int8_dense(self.int8_dense),
            calib_method=choice(self.calib_method, CALIB_METHODS, "calib_method"),
            target=normalize_target(self.target),
            int4_scheme=None if self.int4_scheme is None else choice(self.int4_scheme, _form_schemes("INT4"),
                                                                     "int4_scheme"))

    def plan_options(self) -> dict:
        """The options recorded in a plan's manifest (``data_type`` is recorded on its own)."""
        return {k: v for k, v in asdict(self).items() if k not in ("data_type", "calib_batch_size")}


@dataclass(frozen=True)
class CalibrateOptions:
    """Defaults of :func:`lpo.make_calibration`."""

    num_rows: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class Thresholds:
    """Validation gates; ``None`` is "not checked"."""

    max_auc_drop: Optional[float] = 0.001
    max_abs_diff: Optional[float] = None
    max_latency_ratio: Optional[float] = None
    min_size_reduction: Optional[float] = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The threshold names, in order."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class ValidateOptions:
    """Defaults of :func:`lpo.validate` other than the thresholds."""

    batch_sizes: tuple = (1, 64, 512)
    iters: int = 50
    warmup: int = 5
    label_key: str = "label"
    #: FULL_TRACE runs per model for the report's profile (nodes per run, time per op type), at the
    #: largest batch size; 0: no profile
    profile_runs: int = 5


@dataclass(frozen=True)
class ProfileOptions:
    """Defaults of :func:`lpo.profile` (``lpo profile``)."""

    batch_size: int = 512
    #: FULL_TRACE runs per model (and as many untraced latency runs)
    runs: int = 20
    warmup: int = 5
    #: op types in the table
    top: int = 15
    #: intra-op threads (0: TensorFlow's default); one thread shows per-op cost without parallel overlap
    threads: int = 1


#: ``data_type`` value that searches per-node forms under an accuracy budget (lpo/tune).
AUTO = "AUTO"
#: AUTO's accuracy measures (:attr:`AutoOptions.harm`).
AUTO_HARMS = ("soft_auc", "auc")

#: AUTO's per-node forms are each pass family's ``auto_ladder`` (lpo.passes.registry), least
#: accurate (smallest) first; a form whose dtype this lpo does not have, that its node's pass
#: refuses, or that is not strictly smaller than the next form kept for that node (e.g. INT8
#: per_row on a D=1 table) is left out.
#: Same-size forms that may run faster, tried on real builds after the size search (speed
#: phase) and kept only when they hold the budget and measure faster than the form they
#: replace. Offered only where the target CPU runs them natively (lpo.target: int8 kernels
#: need oneDNN, BF16 compute AVX512_BF16/AMX); a form this lpo does not have is skipped. The
#: static INT8 form with fake-quantized activations is as large as INT8 weight-only, less
#: accurate and adds an op, so it is never faster and AUTO does not offer it.
AUTO_FASTER = {
    "INT8:weight_only": ("INT8:compute",),
    "FP16:weight_only": ("BF16:compute",),
    "BF16:weight_only": ("BF16:compute",),
}


@dataclass(frozen=True)
class AutoOptions:
    """Defaults of ``data_type='AUTO'``: the smallest, then fastest, plan within an accuracy budget.

    ``max_auc_drop`` here is AUTO's search budget, ``|AUC(AUTO) - AUC(FP32)|`` on the rows
    of ``eval_file`` (either direction counts: a gain on the tuning rows is noise that can be
    a loss on new rows). It is not :attr:`Thresholds.max_auc_drop`, the pass/fail gate of
    ``lpo validate`` (default 0.001).
    """

    #: AUTO's accuracy budget: largest allowed |ΔAUC| vs FP32.
    max_auc_drop: float = 1e-4
    #: What the search measures the budget on: ``soft_auc`` (default), the expected ΔAUC with the
    #: FP32 model's probabilities as labels on unlabelled rows (the tuning rows, the calibration
    #: file's and ``unlabeled_file``'s; exact, no label noise), or ``auc``, the labelled ΔAUC of
    #: the tuning rows. Either way the labelled confirmation rows judge the final choice.
    harm: str = "soft_auc"
    #: More unlabelled serving inputs (.npz) for the ``soft_auc`` estimate (None: none).
    unlabeled_file: Optional[str] = None
    #: The search needs ``|ΔAUC| + margin_sigmas * SE(ΔAUC)`` within the budget on the tuning
    #: rows (SE: paired DeLong standard error for ``auc``; for ``soft_auc`` a jackknife over the
    #: rows, ~20x smaller), so a choice does not rest on lucky rows. With ``soft_auc`` the labelled
    #: confirmation rejects a choice only when its labelled ΔAUC is over the budget by more than
    #: ``margin_sigmas`` DeLong standard errors (evidence that it is over, not label noise).
    margin_sigmas: float = 2.0
    #: The budget used instead when ``eval_file`` has no label: p99 of |Δ prediction| vs FP32.
    max_output_diff: float = 1e-3
    #: The label array of ``eval_file``.
    label_key: str = "label"
    #: Fraction of ``eval_file`` rows the search sees; the rest only confirms the result.
    tune_fraction: float = 0.5
    #: Seeds the tuning/confirmation row split (everything else is deterministic).
    seed: int = 0
    #: Most configurations evaluated (simulated and built together).
    max_evals: int = 200
    #: Most configurations confirmed on the confirmation rows: when one misses the budget there,
    #: the next larger one within the budget on the tuning rows is confirmed instead.
    max_confirms: int = 3
    #: Most seconds the search may take (None: no limit); checked between evaluations.
    time_budget_s: Optional[float] = None
    #: Most real builds (optimize + load) in the speed phase, besides the chosen one.
    max_builds: int = 4
    #: Latency of built candidates: p50 at this batch size, interleaved with FP32.
    latency_batch: int = 512
    latency_iters: int = 30
    #: A same-size faster form is kept only when its p50 is at least this fraction lower.
    min_speedup: float = 0.05
    #: Where to also write the chosen opt_config JSON (None: only inside the model).
    config_out: Optional[str] = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


OPTIMIZE = OptimizeOptions()
ACTIVATION_GATE = ActivationGate()
AUTO_OPTIONS = AutoOptions()
CALIBRATE = CalibrateOptions()
THRESHOLDS = Thresholds()
VALIDATE = ValidateOptions()
PROFILE = ProfileOptions()
#: Orchestrator parameters cannot always be null: a negative threshold there means "off".
OFF = -1.0
#: Threshold defaults as orchestrator params (KFP components and pipelines, Airflow operators and DAGs):
#: a float each, :data:`OFF` where the library's default is None (read back with :func:`optional_threshold`).
ORCHESTRATOR_THRESHOLDS = {k: OFF if v is None else v for k, v in THRESHOLDS.to_dict().items()}
#: Parallel conversion tasks of the sharded refresh pipelines (KFP and Airflow).
NUM_SHARDS = 4
#: Default ``data_type`` of the orchestrated pipelines: the KFP pipelines and optimize components,
#: the Airflow DAGs and LpoOptimizeOperator. INT8: the smallest model (they calibrate and gate it).
#: The library API keeps :attr:`OptimizeOptions.data_type` (BF16: no calibration needed).
PIPELINE_DATA_TYPE = "INT8"
#: ``VALIDATE.batch_sizes`` as an orchestrator string param (``"1,64,512"``).
BATCH_SIZES_TEXT = ",".join(str(b) for b in VALIDATE.batch_sizes)


# --------------------------------------------------------------------------- normalizers
def choice(value: Any, valid: tuple, what: str, *, upper: bool = False) -> str:
    """Return ``value`` as the member of ``valid`` it names (case-insensitive, ``-`` = ``_``).

    Raises ConfigError with the valid values and a did-you-mean hint.
    """
    if isinstance(value, str):
        key = value.strip().replace("-", "_")
        for v in valid:
            if key.lower() == v.lower():
                return v
    near = closest(str(value).upper() if upper else str(value).lower(), list(valid), n=1)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise ConfigError(f"{what} {value!r} is not one of {', '.join(valid)}{hint}")


def normalize_dtype(value: Any, what: str = "data_type", *, allow_keep: bool = False) -> str:
    """Return a data type (``BF16``/``FP16``/``INT8``/``INT4``/``FP32``; with ``allow_keep`` also the
    data types of other registered storage forms, see :func:`node_dtypes`)."""
    return choice(value, node_dtypes() if allow_keep else DATA_TYPES, what, upper=True)


# --------------------------------------------------------------------------- storage forms (lpo.formats)
def node_dtypes() -> tuple[str, ...]:
    """:data:`NODE_DTYPES` and the data types of storage forms registered beyond them (opt_config values)."""
    from lpo import formats

    return NODE_DTYPES + tuple(d for d in formats.dtypes() if d not in NODE_DTYPES)


def _form_schemes(dtype: str) -> tuple[str, ...]:
    """The schemes of ``dtype``'s storage forms (``INT8``: per_dim, per_row; ``INT4``: also per_row_sym)."""
    from lpo import formats

    return formats.schemes(dtype)

@dataclass(frozen=True)
class NodeChoice:
    """One ``opt_config`` value: a data type and, optionally, the variant of it for this node.

    The variant overrides a model-wide option for this node only: an embedding scale
    scheme (``"INT8:per_row"``), an INT8 dense mode (``"INT8:weight_only"``) or a 16-bit
    dense mode (``"BF16:compute"``). ``str()`` gives the opt_config spelling back.
    """

    dtype: str
    variant: Optional[str] = None

    def __str__(self) -> str:
        return self.dtype if self.variant is None else f"{self.dtype}{VARIANT_SEP}{self.variant}"


#: Separates the data type from its variant in an opt_config value: ``"INT8:per_row"``.
VARIANT_SEP = ":"


def node_variants(dtype: str) -> tuple[str, ...]:
    """The variants an opt_config value of ``dtype`` may name (none for FP32)."""
    if dtype == KEEP:
        return ()
    if dtype not in NODE_DTYPES:  # another registered storage form's data type: its schemes
        return _form_schemes(dtype)
    if dtype.startswith("INT"):
        return _form_schemes(dtype) + (INT8_DENSE_MODES if dtype == "INT8" else ())
    return DENSE_MODES


def normalize_node_choice(value: Any, what: str = "opt_config value") -> NodeChoice:
    """Parse an opt_config value: ``"INT8"``, ``"int8:per-row"`` or ``{"dtype": "INT8", "scheme": "per_row"}``.

    A dict names the variant as ``scheme`` (embedding tables) or ``mode`` (dense layers).
    Raises ConfigError for an unknown data type or a variant the data type does not have.
    """
    if isinstance(value, dict):
        extra = set(value) - {"dtype", "scheme", "mode"}
        if "dtype" not in value or extra or ("scheme" in value and "mode" in value):
            raise ConfigError(f"{what} {value!r} must be an object with \"dtype\" and at most one of "
                              "\"scheme\" or \"mode\", e.g. {\"dtype\": \"INT8\", \"scheme\": \"per_row\"}")
        dtype_text, variant_text = value["dtype"], value.get("scheme", value.get("mode"))
    elif isinstance(value, str) and VARIANT_SEP in value:
        dtype_text, _, variant_text = value.partition(VARIANT_SEP)
    else:
        dtype_text, variant_text = value, None
    dtype = normalize_dtype(dtype_text, what, allow_keep=True)
    if variant_text is None:
        return NodeChoice(dtype)
    valid = node_variants(dtype)
    if not valid:
        raise ConfigError(f"{what} {value!r}: {dtype} takes no variant; write just {dtype!r}")
    if dtype == "INT8" and isinstance(variant_text, str) and variant_text.strip().lower() in INT8_DENSE_ALIASES:
        variant_text = INT8_DENSE_ALIASES[variant_text.strip().lower()]
    return NodeChoice(dtype, choice(variant_text, valid, f"{what} {value!r}: the {dtype} variant"))


def node_options(base: "OptimizeOptions", node: NodeChoice) -> "OptimizeOptions":
    """The options one node is planned with: its variant (if any) replaces the model-wide one."""
    from dataclasses import replace

    v = node.variant
    if v is None:
        return base
    if node.dtype == "INT4":
        return replace(base, int4_scheme=v)
    if v in EMBEDDING_SCHEMES:
        return replace(base, embedding_scheme=v)
    if node.dtype == "INT8" and v in INT8_DENSE_MODES:
        return replace(base, int8_dense=v)
    return replace(base, dense_mode=v)


def normalize_auto_options(value: Any = None, **overrides) -> AutoOptions:
    """Return :class:`AutoOptions` from ``None``, a dict or an AutoOptions, plus keyword overrides.

    Unknown keys and out-of-range values are ConfigErrors.
    """
    if value is None:
        d = AUTO_OPTIONS.to_dict()
    elif isinstance(value, AutoOptions):
        d = value.to_dict()
    elif isinstance(value, dict):
        d = AUTO_OPTIONS.to_dict()
        names = list(d)
        for k in value:
            if k not in d:
                near = closest(str(k), names, n=1)
                raise ConfigError(f"unknown AUTO option {k!r}{f'; did you mean {near[0]}?' if near else ''} "
                                  f"(valid: {', '.join(names)})")
        d.update(value)
    else:
        raise ConfigError(f"auto_options must be a dict or AutoOptions, got {type(value).__name__}")
    d.update({k: v for k, v in overrides.items() if v is not None})

    def number(name, lo, hi=None, *, integer=False, lo_open=False, hi_open=False, optional=False):
        v = d[name]
        if v is None and optional:
            return
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v == v
        if ok and integer:
            ok = float(v).is_integer()
        if ok:
            ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and {'<' if hi_open else '<='} {hi:g}" if hi is not None
                                                        else "")
            raise ConfigError(f"AUTO option {name} must be {'an integer' if integer else 'a number'} {rng}, "
                              f"got {v!r}")
        d[name] = int(v) if integer else float(v)

    number("max_auc_drop", 0.0)
    number("max_output_diff", 0.0)
    number("margin_sigmas", 0.0)
    number("tune_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    number("seed", 0, integer=True)
    number("max_evals", 1, integer=True)
    number("time_budget_s", 0.0, lo_open=True, optional=True)
    number("max_builds", 0, integer=True)
    number("max_confirms", 1, integer=True)
    number("latency_batch", 1, integer=True)
    number("latency_iters", 1, integer=True)
    number("min_speedup", 0.0, 1.0, hi_open=True)
    d["harm"] = choice(d["harm"], AUTO_HARMS, "AUTO option harm")
    if d["unlabeled_file"] is not None:
        d["unlabeled_file"] = os.fspath(d["unlabeled_file"])
    if not isinstance(d["label_key"], str) or not d["label_key"]:
        raise ConfigError(f"AUTO option label_key must be a non-empty string, got {d['label_key']!r}")
    if d["config_out"] is not None:
        d["config_out"] = os.fspath(d["config_out"])
    return AutoOptions(**d)


def normalize_int8_dense(value: Any) -> str:
    """Return an ``int8_dense`` mode; accepts the old name ``static`` (= ``simulate``)."""
    if isinstance(value, str) and value.strip().lower() in INT8_DENSE_ALIASES:
        return INT8_DENSE_ALIASES[value.strip().lower()]
    return choice(value, INT8_DENSE_MODES, "int8_dense")


def normalize_target(value: Any) -> str:
    """Return a target name (``host`` or a TARGETS preset); ``None``/``""`` mean the default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return OPTIMIZE.target
    return choice(value, TARGET_NAMES, "target")


def normalize_tags(tags: Any) -> tuple[str, ...]:
    """Return MetaGraph tags as a tuple: ``None`` -> ``('serve',)``, ``"serve,gpu"`` -> ``('serve', 'gpu')``."""
    if tags is None:
        return DEFAULT_TAGS
    if isinstance(tags, str):
        items = [t.strip() for t in tags.split(",")]
    else:
        try:
            items = [str(t).strip() for t in tags]
        except TypeError:
            raise ConfigError(f"tags must be a string or a list of strings, got {tags!r}") from None
    items = [t for t in items if t]
    if not items:
        raise ConfigError(f"tags {tags!r} name no tag; pass e.g. 'serve'")
    return tuple(items)


def normalize_batch_sizes(value: Any) -> tuple[int, ...]:
    """Accept ``[1, 64]``, ``(1, 64)``, ``"1,64"`` or ``64``; return a tuple of positive ints.

    Raises ConfigError on anything else (``"1,x"``, ``""``, ``0``, ``1.5``).
    """
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            items = [value]
    sizes = []
    for v in items:
        try:
            n = int(v) if not isinstance(v, float) or v.is_integer() else None
        except (TypeError, ValueError):
            n = None
        if n is None or isinstance(v, bool) or n < 1:
            raise ConfigError(f"batch sizes must be positive integers separated by commas (e.g. 1,64,512), "
                              f"got {value!r}")
        sizes.append(n)
    if not sizes:
        raise ConfigError(f"batch sizes must be positive integers separated by commas (e.g. 1,64,512), got {value!r}")
    return tuple(sizes)


def optional_threshold(value: Any, what: str = "threshold") -> Optional[float]:
    """Map an orchestrator threshold to the library's: ``None``, ``""`` or negative means "off"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number (negative: off), got {value!r}") from None
    if number != number:
        raise ConfigError(f"{what} must be a number (negative: off), got NaN")
    return None if number < 0 else number


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else f"a {type(value).__name__}"


def load_opt_config(path) -> dict:
    """Read an ``opt_config`` JSON file: an object mapping node names to data types."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                          "save it as UTF-8 JSON") from None
    return _opt_config_from_json(text, f"config file {path}")


def _opt_config_from_json(text: str, where: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must contain a JSON object mapping node names to data types "
                          f"(e.g. {{\"emb/C1\": \"INT8\"}}), not {_json_kind(data)}")
    return data


def normalize_opt_config(value: Any) -> Optional[dict]:
    """Return ``opt_config`` as a dict, or None when not given.

    Accepts a dict, a JSON object string, or the path of a JSON file; ``None`` and
    ``""`` mean "not given" (every node gets ``data_type``).
    """
    if value is None:
        return None
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, os.PathLike):
        return load_opt_config(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("{") or text.startswith("["):
            return _opt_config_from_json(text, "opt_config")
        return load_opt_config(text)
    raise ConfigError(f"opt_config must be a dict, a JSON object string or a JSON file path, "
                      f"got {type(value).__name__}")


__all__ = [
    "DATA_TYPES", "KEEP", "NODE_DTYPES", "node_dtypes", "EMBEDDING_SCHEMES", "INT4_SCHEME", "INT4_MAX_SIZE_RATIO",
    "AUTO_HARMS", "DENSE_MODES", "INT8_DENSE_MODES", "INT8_DENSE_ALIASES", "CALIBRATED_INT8_MODES", "TARGETS",
    "TARGET_NAMES", "INT8_COMPUTE_MIN_WEIGHTS", "BF16_COMPUTE_MIN_WEIGHTS", "ActivationGate", "ACTIVATION_GATE",
    "normalize_int8_dense",
    "normalize_target", "CALIB_METHODS",
    "DATA_FORMATS", "PUBLISH_LAYOUTS", "DEFAULT_TAGS", "DEFAULT_SIGNATURE", "OptimizeOptions", "CalibrateOptions",
    "Thresholds",
    "ValidateOptions", "ProfileOptions", "PROFILE", "OPTIMIZE", "CALIBRATE", "THRESHOLDS", "VALIDATE", "OFF",
    "ORCHESTRATOR_THRESHOLDS", "NUM_SHARDS", "PIPELINE_DATA_TYPE",
    "BATCH_SIZES_TEXT", "choice", "normalize_dtype",
    "AUTO", "AUTO_FASTER", "AutoOptions", "AUTO_OPTIONS", "normalize_auto_options",
    "NodeChoice", "VARIANT_SEP", "node_variants", "normalize_node_choice", "node_options",
    "normalize_tags", "normalize_batch_sizes", "optional_threshold", "load_opt_config", "normalize_opt_config",
]
