"""The one exception hierarchy of lpo.

Every error a user can cause derives from :class:`LpoError`. Messages say what
was wrong and what to do about it. ``exit_code`` is what the CLI exits with:
2 for a user error (bad input, bad option), 3 for a failed validation, 4 when an
output's file system is full, 1 for an internal failure.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class LpoError(Exception):
    """Base class of every error lpo raises on purpose."""

    exit_code = 2


class ModelFormatError(LpoError):
    """The input is not a SavedModel lpo can read (missing, corrupt, wrong tags)."""


class UnsupportedOpsError(ModelFormatError):
    """The model uses ops this TensorFlow build does not have (e.g. DeepRec's Kv* ops)."""

    def __init__(self, message: str, ops=()):
        super().__init__(message)
        self.ops = list(ops)


class ConfigError(LpoError):
    """An option, opt_config entry, data type or threshold is invalid."""


class OutputExistsError(ConfigError):
    """The output path exists and is not empty, and overwrite was not asked for."""


class CalibrationError(LpoError):
    """Calibration data is missing, unreadable or does not match the signature."""


class DataError(LpoError):
    """A data source (CSV, TFRecord, npz) is missing, empty or malformed."""


class CheckpointError(LpoError):
    """A checkpoint is missing, truncated or does not match the optimized model."""


class OutOfSpaceError(LpoError):
    """The file system of an output ran out of space (or quota) before lpo could finish writing it."""

    exit_code = 4


class RequirementError(LpoError):
    """The optimized model needs something this process lacks (oneDNN for int8 kernels)."""


class ValidationFailed(LpoError):
    """The optimized model breached one or more validation thresholds."""

    exit_code = 3

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class BudgetError(LpoError):
    """AUTO found no configuration within the accuracy budget (or it failed on unseen rows).

    ``result`` is the search's :class:`lpo.tune.AutoResult` (every configuration tried).
    """

    exit_code = 3

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class InternalError(LpoError):
    """A bug in lpo: please report it with the --debug traceback."""

    exit_code = 1


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` names from ``candidates`` closest to ``name``.

    Falls back to substring matches, so a short key such as ``C1`` still finds
    ``input_layer/C1_embedding/embedding_weights``.
    """
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if len(found) < n:
        low = name.lower()
        for c in candidates:
            if c not in found and (low in c.lower() or c.lower().endswith(low.split("/")[-1])):
                found.append(c)
            if len(found) >= n:
                break
    return found[:n]
