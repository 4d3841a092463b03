"""The calibrate step as an Airflow operator."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from airflow.sdk import BaseOperator

from lpo.errors import ConfigError
from lpo.operators.common import fail_fast, make_parent, path_arg, quiet
from lpo.options import CALIBRATE
from lpo.orchestration.steps import calibrate_step


class LpoCalibrateOperator(BaseOperator):
    """Sample calibration rows from a data source (``lpo.make_calibration``).

    Args:
        source: CSV/TSV/TFRecord/npz data file.
        save_path: output ``.npz``.
        model_path: SavedModel whose serving inputs to match.
        num_rows: rows to reservoir-sample.
        seed: sampling seed.
        data_format: ``csv``/``tsv``/``tfrecord``/``npz`` (default: from the extension).
        overwrite: replace an existing ``save_path`` (default True: reruns are idempotent).
    """

    template_fields: Sequence[str] = ("source", "save_path", "model_path", "num_rows", "seed",
                                      "data_format", "overwrite")
    ui_color = "#e8f4e4"

    def __init__(self, *, source: str, save_path: str, model_path: str, num_rows: Any = CALIBRATE.num_rows,
                 seed: Any = CALIBRATE.seed, data_format: Optional[str] = None, overwrite: Any = True, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.save_path = save_path
        self.model_path = model_path
        self.num_rows = num_rows
        self.seed = seed
        self.data_format = data_format
        self.overwrite = overwrite

    @fail_fast
    @quiet
    def execute(self, context) -> dict:
        source = path_arg("source", self.source, must_exist=True)
        model = path_arg("model_path", self.model_path, must_exist=True)
        save = path_arg("save_path", self.save_path)
        if not save.endswith(".npz"):
            raise ConfigError(f"save_path must end with .npz, got {save!r}")
        make_parent("save_path", save)
        return calibrate_step(source, save, model, num_rows=self.num_rows, seed=self.seed,
                              data_format=self.data_format, overwrite=self.overwrite)
