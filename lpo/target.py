"""The CPU an optimized model will serve on, and what it needs at run time.

A :class:`Target` is a oneDNN setting plus the CPU features lpo's forms care about.
``target='host'`` (the default) detects the machine lpo runs on from ``/proc/cpuinfo``
and the oneDNN setting TensorFlow will use; named presets (:data:`lpo.options.TARGETS`)
describe another machine, e.g. the serving fleet of a KFP/Airflow worker.

oneDNN status is decided without TensorFlow's private ``IsMklEnabled()``: stock
TensorFlow's Linux x86 wheels turn oneDNN on when ``TF_ENABLE_ONEDNN_OPTS`` says so
(``1``/``true``/``0``/``false``, case-insensitive) and otherwise by default on CPUs
with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in
``tensorflow/core/util/port.cc``). :func:`onednn_enabled` applies the same rule (the
test suite checks it against ``IsMklEnabled()`` in subprocesses). This module never
imports TensorFlow, so the CLI can use it before TensorFlow prints anything.
"""
from __future__ import annotations

import functools
import json
import os
import platform
from dataclasses import dataclass, field

from lpo import options as opts
from lpo.errors import ConfigError, RequirementError

ENV = "TF_ENABLE_ONEDNN_OPTS"
#: Run as if on another CPU: ``target='host'`` then describes that preset (its CPU features,
#: vendor and oneDNN setting) instead of this machine. For developers: ``LPO_HOST_TARGET=zen4
#: bash scripts/test.sh`` runs the suite with the forms a Zen 4 host gets (the test harness
#: also sets TF_ENABLE_ONEDNN_OPTS to the preset's oneDNN setting, so the real kernels run).
HOST_ENV = "LPO_HOST_TARGET"
#: CPU flags for which stock TensorFlow turns oneDNN on by default on Linux x86.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
#: The CPU flags lpo reports and decides on.
FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
#: int8 compute runs fastest with one of these (oneDNN's u8s8 kernels use VNNI/AMX instructions).
INT8_FEATURES = ("amx_int8", "avx512_vnni", "avx_vnni")
#: bf16 compute: native bf16 matrix instructions.
BF16_FEATURES = ("amx_bf16", "avx512_bf16")
#: The oneDNN-only ops of the int8 compute form (they fail at the first run without oneDNN).
ONEDNN_OPS = ("QuantizedMatMulWithBiasAndDequantize",)


@dataclass(frozen=True)
class Target:
    """A serving CPU: its oneDNN setting, relevant CPU features and vendor."""

    name: str
    onednn: bool
    features: tuple = ()
    vendor: str = ""  # "intel", "amd" or "" (unknown)
    detected: bool = False  # True for 'host': read from this machine
    notes: tuple = field(default=(), compare=False)

    def has(self, *flags: str) -> bool:
        """True when the target has any of ``flags``."""
        return any(f in self.features for f in flags)

    @property
    def int8_compute(self) -> bool:
        """True when int8 kernels run (and pay) here: oneDNN is on."""
        return self.onednn

    @property
    def bf16_compute(self) -> bool:
        """True when bf16 MatMuls beat float32 here (the decision table in :mod:`lpo.options`)."""
        if not self.onednn:
            return False
        if self.has("amx_bf16"):
            return True
        return self.vendor == "amd" and self.has("avx512_bf16")

    def to_dict(self) -> dict:
        """Return a JSON-able dict (what the manifest records)."""
        return {"name": self.name, "onednn": self.onednn, "cpu_features": list(self.features),
                "vendor": self.vendor, "detected": self.detected}

    def describe(self) -> str:
        """One line, e.g. ``host (intel, oneDNN on, avx512_vnni avx512_bf16 ...)``."""
        feats = " ".join(f for f in self.features if f not in ("fma",)) or "no AVX2"
        notes = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return f"{self.name} ({self.vendor or 'unknown vendor'}, oneDNN {'on' if self.onednn else 'off'}, {feats}){notes}"


# --------------------------------------------------------------------------- host detection
def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[frozenset, str]:
    """Return (flags of the first CPU, vendor) from ``/proc/cpuinfo``; empty where unreadable."""
    flags, vendor = frozenset(), ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = frozenset(value.split())
                elif key == "vendor_id" and not vendor:
                    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(value.strip(), value.strip().lower())
                if flags and vendor:
                    break
    except OSError:
        pass
    return flags, vendor


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def env_onednn(env=None):
    """Return TF_ENABLE_ONEDNN_OPTS as True/False, or None when unset or not a valid boolean."""
    value = (os.environ if env is None else env).get(ENV)
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    return None  # TensorFlow warns and uses its default


def onednn_default(flags, *, linux: bool | None = None, x86: bool | None = None) -> bool:
    """TensorFlow's default oneDNN setting for a CPU with ``flags`` (no env var)."""
    linux = platform.system() == "Linux" if linux is None else linux
    x86 = _is_x86() if x86 is None else x86
    return bool(linux and x86 and any(f in flags for f in ONEDNN_DEFAULT_FLAGS))


def onednn_enabled(flags=None, env=None) -> bool:
    """True when TensorFlow uses oneDNN in a process with environment ``env`` on a CPU with ``flags``.

    Defaults: this process's environment and this machine's CPU. Off on non-x86 machines
    (the int8 kernels lpo emits are in the x86 oneDNN build only).
    """
    if not _is_x86():
        return False
    explicit = env_onednn(env)
    if explicit is not None:
        return explicit
    if flags is None:
        flags = read_cpuinfo()[0]
    return onednn_default(flags)


@functools.lru_cache(maxsize=None)
def _host(env_value, emulated) -> Target:
    if emulated:
        name = opts.choice(emulated, tuple(opts.TARGETS), HOST_ENV)
        p = opts.TARGETS[name]
        return Target("host", p["onednn"], tuple(f for f in FEATURES if f in p["features"]), p.get("vendor", ""),
                      False, (f"{HOST_ENV}={name}",))
    flags, vendor = read_cpuinfo()
    env = {} if env_value is None else {ENV: env_value}
    on = onednn_enabled(flags, env)
    notes = []
    if env_value is not None:
        notes.append(f"{ENV}={env_value}")
    return Target("host", on, tuple(f for f in FEATURES if f in flags), vendor, True, tuple(notes))


def emulated_host() -> str | None:
    """The preset named by ``LPO_HOST_TARGET`` (None when unset or empty)."""
    value = os.environ.get(HOST_ENV, "").strip()
    return value.lower() or None


def host() -> Target:
    """The machine lpo runs on, with this process's TF_ENABLE_ONEDNN_OPTS.

    With ``LPO_HOST_TARGET=<preset>`` set, the preset instead (``detected`` False, a note names it).
    """
    return _host(os.environ.get(ENV), emulated_host())


def get_target(value=None) -> Target:
    """Return the :class:`Target` named ``value`` (a preset, ``'host'``; None means the default)."""
    if isinstance(value, Target):
        return value
    name = opts.normalize_target(opts.OPTIMIZE.target if value is None else value)
    if name == "host":
        return host()
    p = opts.TARGETS[name]
    return Target(name, p["onednn"], tuple(f for f in FEATURES if f in p["features"]), p.get("vendor", ""))


# --------------------------------------------------------------------------- form decisions
def dense_mode(dtype: str, requested: str, target: Target, shape, *, transposed: bool = False) -> str:
    """Return the concrete mode of one dense layer of weight ``shape`` at ``dtype`` for ``target``.

    ``requested`` is ``int8_dense`` (INT8) or ``dense_mode`` (BF16/FP16); ``auto`` picks the
    fastest correct form by the decision table of :mod:`lpo.options`. A compute form the
    layer cannot take (transposed operands) falls back to the target's portable form.
    """
    weights = int(shape[0]) * int(shape[1])
    if dtype == "INT8":
        if requested == "auto":
            if not target.int8_compute:  # simulate is never faster than weight-only, and less accurate
                return "weight_only"
            big = weights >= opts.INT8_COMPUTE_MIN_WEIGHTS and not transposed
            return "compute" if big else "weight_only"
        if requested == "compute" and transposed:
            return "simulate"
        return requested
    if requested == "auto":
        if dtype == "BF16" and target.bf16_compute and weights >= opts.BF16_COMPUTE_MIN_WEIGHTS:
            return "compute"
        return "weight_only"
    return requested


def requirements(modes: list[tuple[str, str]], target: Target) -> dict:
    """Return the manifest's ``requires`` for conversions of (dtype, mode); ``{}`` when portable.

    ``onednn`` is hard (int8 compute fails at the first run without it); ``cpu_features``
    are what make the forms pay on ``target`` (speed, not correctness).
    """
    int8 = sum(1 for d, m in modes if d == "INT8" and m == "compute")
    bf16 = sum(1 for d, m in modes if d in ("BF16", "FP16") and m == "compute")
    if not (int8 or bf16):
        return {}
    req: dict = {"onednn": bool(int8), "forms": {}}
    feats = []
    if int8:
        req["forms"]["int8_compute"] = int8
        req["ops"] = list(ONEDNN_OPS)
        req[ENV] = "1"
        feats += [f for f in INT8_FEATURES if target.has(f)][:1]
    if bf16:
        req["forms"]["16bit_compute"] = bf16
        feats += [f for f in BF16_FEATURES if target.has(f)][:1]
    req["cpu_features"] = feats
    return req


# --------------------------------------------------------------------------- run-time checks
def manifest_requires(model_path) -> dict:
    """The ``requires`` of an lpo-optimized SavedModel's manifest (``{}`` for other models)."""
    path = os.path.join(os.fspath(model_path), "assets.extra", "lpo_manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            req = json.load(f).get("requires") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return req if isinstance(req, dict) else {}


def needs_onednn(requires: dict) -> bool:
    """True when ``requires`` (a manifest's) asks for oneDNN (old manifests: the env var key)."""
    return bool(requires.get("onednn")) or str(requires.get(ENV, "")) == "1"


def fallback_hint() -> str:
    """How to get a model that runs without oneDNN."""
    return (f"set {ENV}=1 before TensorFlow is imported (oneDNN is off by default on CPUs without "
            "AVX512_VNNI/AVX_VNNI/AMX), or re-optimize for this CPU: `lpo optimize --target host` here, "
            "`--target portable` (runs anywhere), or --int8-dense simulate|weight_only")


def check_runnable(model_path, requires: dict | None = None) -> None:
    """Raise RequirementError when ``model_path`` needs oneDNN and this process runs without it."""
    req = manifest_requires(model_path) if requires is None else requires
    if needs_onednn(req) and not onednn_enabled():
        raise RequirementError(
            f"{os.fspath(model_path)} runs int8 kernels that exist only with oneDNN "
            f"({', '.join(req.get('ops') or ONEDNN_OPS)}), and oneDNN is off in this process "
            f"({ENV}={os.environ.get(ENV, 'unset')}); {fallback_hint()}")


def translate_run_error(err: Exception, model_path) -> Exception:
    """Map TensorFlow's "Missing 0-th output" of a oneDNN-only op to a RequirementError."""
    text = str(err)
    if "Missing 0-th output" in text or any(f"{{{{node {op}" in text for op in ONEDNN_OPS) \
            or any(op in text and "kernel" in text.lower() for op in ONEDNN_OPS):
        return RequirementError(
            f"{os.fspath(model_path)} failed at its first run: an int8 kernel that exists only with oneDNN "
            f"did not run ({ENV}={os.environ.get(ENV, 'unset')}); {fallback_hint()}")
    return err


def runtime_report(requires: dict | None = None) -> dict:
    """What this process offers against ``requires``: oneDNN, CPU features, and problems found."""
    t = host()
    req = requires or {}
    missing = [f for f in req.get("cpu_features") or [] if f not in t.features]
    problems = []
    if needs_onednn(req) and not t.onednn:
        problems.append(f"needs oneDNN, which is off here ({ENV}={os.environ.get(ENV, 'unset')})")
    if missing:
        problems.append(f"optimized for CPU features {', '.join(missing)} this CPU lacks: it runs, "
                        "but may be slower than FP32 here")
    return {"onednn": t.onednn, "cpu_features": list(t.features), "vendor": t.vendor,
            "requires": req, "ok": not any("needs oneDNN" in p for p in problems), "problems": problems}


__all__ = ["Target", "ENV", "HOST_ENV", "emulated_host", "FEATURES", "read_cpuinfo", "env_onednn", "onednn_default", "onednn_enabled", "host",
           "get_target", "dense_mode", "requirements", "manifest_requires", "needs_onednn", "check_runnable",
           "translate_run_error", "runtime_report", "fallback_hint"]
