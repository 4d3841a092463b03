"""Calibrate step: sample calibration rows from a data source into a Dataset.

The Dataset artifact is a directory holding ``calibration.npz`` (one array per
serving input), so that its file keeps the ``.npz`` suffix lpo needs.
"""
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from lpo.components.defaults import with_defaults
from lpo.components.image import LPO_IMAGE
from lpo.options import CALIBRATE


@dsl.component(base_image=LPO_IMAGE, install_kfp_package=False)
@with_defaults(CALIBRATE)
def calibrate(
    model: Input[Model],
    source: str,
    calibration: Output[Dataset],
    *,
    num_rows: int,
    seed: int,
    data_format: str = "",
):
    """Sample ``num_rows`` rows of ``source`` into a calibration Dataset for ``model``.

    Args:
        model: FP32 SavedModel whose serving inputs the rows must match.
        source: CSV/TSV/TFRecord/npz file (a path readable in the container).
        calibration: output directory; ``calibration.npz`` is written inside it.
        num_rows: rows to reservoir-sample.
        seed: sampling seed (same seed, same rows).
        data_format: ``csv``/``tsv``/``tfrecord``/``npz``; empty: from the extension.
    """
    from lpo.log import quiet_tensorflow_process

    quiet_tensorflow_process()  # before TF loads: its start-up noise stays out of the step's log
    import os

    from lpo.orchestration.artifacts import CALIB_FILE
    from lpo.orchestration.steps import calibrate_step

    os.makedirs(calibration.path, exist_ok=True)
    result = calibrate_step(source, os.path.join(calibration.path, CALIB_FILE), model.path,
                            num_rows=num_rows, seed=seed, data_format=data_format, as_dict=False)
    calibration.metadata.update({"file": CALIB_FILE, "rows": result.rows, "source": source,
                                 "source_rows": result.source_rows, "format": result.format})


@dsl.container_component
def calibrate_cli(
    model: Input[Model],
    source: str,
    calibration: Output[Dataset],
    num_rows: int = CALIBRATE.num_rows,
):
    """The calibrate step as the ``lpo calibrate`` command in :data:`LPO_IMAGE`.

    Same layout as :func:`calibrate`: ``<calibration>/calibration.npz``.
    """
    return dsl.ContainerSpec(
        image=LPO_IMAGE,
        command=["sh", "-c", 'mkdir -p "$0" && exec lpo "$@"', calibration.path],
        args=["calibrate", source, dsl.ConcatPlaceholder([calibration.path, "/calibration.npz"]),
              "--model", model.path, "--rows", num_rows])
