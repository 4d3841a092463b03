"""Publishing: an atomic, durable copy of a validated model into a serving directory.

Layouts: ``current`` (``versions/<v>`` and a ``current`` symlink) and ``tf_serving``
(numeric ``<v>`` directories). Each published copy carries a publish record
(:data:`lpo.orchestration.discovery.PUBLISH_RECORD`) that refresh runs read.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lpo.errors import ConfigError, DataError, OutputExistsError
from lpo.orchestration.airflow_settings import AIRFLOW
from lpo.orchestration.discovery import PUBLISH_RECORD, is_saved_model, read_publish_record

log = logging.getLogger(__name__)


def run_key(when: Any = None) -> str:
    """A run's key, ``YYYYMMDDHHMMSS`` (UTC) of ``when`` (a datetime; default now).

    Used for work directories and as the published version: numeric (as TF Serving
    wants) and increasing with time.
    """
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(when, str):
        when = _dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    return when.strftime("%Y%m%d%H%M%S")


@dataclass
class PublishResult:
    """Where :func:`publish_model` put a model."""

    published: str
    version: str
    layout: str
    serving_dir: str
    current: Optional[str] = None
    unchanged: bool = False
    record: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


def _version_dir(serving_dir: str, version: str, layout: str) -> str:
    if layout == "tf_serving":
        return os.path.join(serving_dir, version)
    return os.path.join(serving_dir, "versions", version)


def _clean_version(version: Any, layout: str) -> str:
    text = str(version).strip() if version is not None else ""
    if layout == "tf_serving":
        if not text.isdigit() or int(text) <= 0 or int(text) >= 2 ** 63:
            raise ConfigError(f"version {version!r} is not a positive integer; TF Serving only loads "
                              "numeric version directories (e.g. 20250102030405)")
        return str(int(text))
    clean = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text).lstrip(".")
    if not clean:
        raise ConfigError(f"version {version!r} is empty; pass a version name such as 20250102030405")
    return clean


def check_serving_dir(serving_dir: str) -> None:
    """Raise ConfigError unless ``serving_dir`` is a writable directory, or can be created as one.

    A missing ``serving_dir`` is created by publishing, but not its parent: a missing parent
    is more likely a typo (or an unmounted volume) than a wish.
    """
    from lpo.fsutil import check_parent_writable

    if not os.path.lexists(serving_dir):
        check_parent_writable(serving_dir)
    elif not os.path.isdir(serving_dir):
        raise ConfigError(f"serving directory {serving_dir} exists and is not a directory; pass the directory "
                          "the models are published into")
    elif not os.access(serving_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"serving directory {serving_dir} is not writable; choose another one or fix its "
                          "permissions")


def publish_model(model_path: str, serving_dir: str, version: Any, *, layout: str = AIRFLOW.layout,
                  inputs: Optional[dict] = None) -> dict:
    """Publish ``model_path`` into ``serving_dir`` as ``version``; return a :class:`PublishResult` dict.

    Layouts (:data:`lpo.options.PUBLISH_LAYOUTS`):

    * ``current``: the model goes to ``serving_dir/versions/<version>``, then the
      symlink ``serving_dir/current`` is switched to it;
    * ``tf_serving``: the model goes to ``serving_dir/<version>`` (a positive integer),
      the directory TF Serving's file system poller watches.

    The copy is built in a temporary sibling, fsynced, and renamed into place
    (:func:`lpo.fsutil.atomic_output_dir`); the ``current`` link is replaced in one
    step (:func:`lpo.fsutil.atomic_symlink`). A reader therefore sees the old model or
    the new one, complete, never neither. Publishing a version again with the same
    model is a no-op (an Airflow retry); with a different model it replaces the
    version in one atomic exchange (``current`` layout) or is refused
    (``tf_serving``: a server does not reload a version it has loaded). ``serving_dir`` is
    checked first (:func:`check_serving_dir`): a missing one is created, its parent is not.
    The published copy gets ``assets.extra/lpo_publish.json`` (source, checksum,
    ``inputs``, time), which refresh runs read to find what is served.
    """
    from lpo.fsutil import atomic_output_dir, atomic_symlink, check_not_inside, cleanup_stale_temps, tree_checksum
    from lpo.options import PUBLISH_LAYOUTS, choice

    layout = choice(layout, PUBLISH_LAYOUTS, "layout")
    if not os.path.isdir(model_path) or not is_saved_model(model_path):
        raise DataError(f"model to publish not found or not a complete SavedModel: {model_path}")
    version = _clean_version(version, layout)
    serving_dir = os.path.abspath(serving_dir)
    check_serving_dir(serving_dir)
    dest = _version_dir(serving_dir, version, layout)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    cleanup_stale_temps(dest)  # left by a killed publish
    checksum = tree_checksum(model_path)
    record = {"version": version, "source": os.path.abspath(model_path), "source_checksum": checksum,
              "inputs": dict(inputs or {}),
              "published_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    old = read_publish_record(dest) if os.path.isdir(dest) else None
    unchanged = old is not None and old.get("source_checksum") == checksum and is_saved_model(dest)
    if unchanged:
        record = old
        log.info("Version %s in %s already holds this model; not copied again", version, serving_dir)
    else:
        check_not_inside(dest, model_path)
        if os.path.lexists(dest) and layout == "tf_serving":
            raise OutputExistsError(
                f"version {version} already exists in {serving_dir} with another model; TF Serving does not "
                "reload a version it has loaded: publish under a new (higher) version number")
        with atomic_output_dir(dest, overwrite=True) as tmp:
            shutil.copytree(model_path, tmp, symlinks=False, dirs_exist_ok=True)
            extra = os.path.join(tmp, "assets.extra")
            os.makedirs(extra, exist_ok=True)
            with open(os.path.join(extra, PUBLISH_RECORD), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2, sort_keys=True)
    current = None
    if layout == "current":
        current = os.fspath(atomic_symlink(os.path.join("versions", version), os.path.join(serving_dir, "current")))
    log.info("Published %s as %s%s", model_path, dest, f" (current -> versions/{version})" if current else "")
    return PublishResult(published=dest, version=version, layout=layout, serving_dir=serving_dir,
                         current=current, unchanged=unchanged, record=record).to_dict()
