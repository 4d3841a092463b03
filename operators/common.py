"""Shared by the lpo operators: error mapping, TF log quieting, rendered-path checks, run keys, Asset events."""
from __future__ import annotations

import functools
import logging
import os
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from lpo.errors import ConfigError, LpoError

log = logging.getLogger(__name__)


def quiet(execute):
    """Run ``execute`` with TF's log level set before TF loads and its start-up noise filtered."""

    @functools.wraps(execute)
    def wrapper(self, context):
        from lpo.log import quiet_tensorflow

        with quiet_tensorflow():
            return execute(self, context)

    return wrapper


def fail_fast(execute):
    """Map an :class:`lpo.LpoError` raised by ``execute`` to ``AirflowFailException``.

    LpoErrors are deterministic (a bad input or option, a breached gate): a retry cannot help,
    so the task fails at once with the error's one line.
    """

    @functools.wraps(execute)
    def wrapper(self, context):
        try:
            return execute(self, context)
        except LpoError as e:
            raise AirflowFailException(f"{type(e).__name__}: {e}") from e

    return wrapper


def path_arg(name: str, value: Any, *, must_exist: bool = False) -> str:
    """A rendered path param: a non-empty string (that exists, with ``must_exist``); ConfigError otherwise."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{name} must be a non-empty path, got {value!r}")
    value = os.fspath(value)
    if must_exist and not os.path.exists(value):
        raise ConfigError(f"{name} does not exist: {value}")
    return value


def make_parent(name: str, path: str) -> None:
    """Create the missing parent directories of the output ``path`` (``mkdir -p``); ConfigError if impossible."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{name}: cannot create the directory {parent} ({e.strerror or e})") from None


def task_run_key(context) -> str:
    """The run's key from ``dag_run.run_after`` (set for manual, scheduled and Asset runs alike)."""
    from lpo.orchestration import run_key

    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    return run_key(getattr(dag_run, "run_after", None))


def emit_outlet_events(op: BaseOperator, context, extra: dict) -> None:
    """Attach ``extra`` to the Asset events this task emits for its outlets."""
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    for outlet in op.outlets or []:
        try:
            events[outlet].extra.update(extra)
        except (KeyError, TypeError, AttributeError):  # not an Asset (e.g. a plain string outlet)
            log.debug("outlet %r takes no event extra", outlet)


def event_path(context) -> str:
    """The ``path`` in the newest Asset event that triggered this run ('' if none)."""
    events = context.get("triggering_asset_events") if hasattr(context, "get") else None
    newest, path = None, ""
    for seq in (events.values() if events else []):
        for event in seq:
            extra = getattr(event, "extra", None) or {}
            stamp = getattr(event, "timestamp", None)
            if extra.get("path") and (newest is None or (stamp is not None and stamp >= newest)):
                newest, path = stamp, str(extra["path"])
    return path
