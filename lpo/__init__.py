"""lpo: low-precision optimizer for TensorFlow recommendation models.

Public API: :func:`optimize`, :func:`inspect_model`, :func:`convert_ckpt`,
:func:`merge_ckpt`, :func:`refresh`, :func:`make_calibration`, :func:`validate`, :func:`profile`, and the
:class:`LpoError` hierarchy. TensorFlow is imported lazily, on first use.
"""
from __future__ import annotations



def _package_version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lpo")
    except PackageNotFoundError:  # a checkout on sys.path that was never installed
        return "0+unknown"


__version__ = _package_version()

from lpo.errors import (  # noqa: E402
    BudgetError, CalibrationError, CheckpointError, ConfigError, DataError, InternalError, LpoError,
    ModelFormatError, OutputExistsError, RequirementError, ValidationFailed,
)

_LAZY = {
    "optimize": "lpo.core.optimizer", "inspect_model": "lpo.core.optimizer", "convert_ckpt": "lpo.core.optimizer",
    "merge_ckpt": "lpo.core.optimizer", "refresh": "lpo.core.optimizer", "load_opt_config": "lpo.options", "OptimizeResult": "lpo.core.optimizer",
    "make_calibration": "lpo.data.sources", "validate": "lpo.validation.validator", "ValidationReport": "lpo.validation.validator",
    "profile": "lpo.validation.profile", "ProfileResult": "lpo.validation.profile",
}


def __getattr__(name):
    import importlib

    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = ["__version__", "LpoError", "ModelFormatError", "ConfigError", "OutputExistsError", "CalibrationError",
           "DataError", "CheckpointError", "RequirementError", "ValidationFailed", "BudgetError", "InternalError",
           *_LAZY]
