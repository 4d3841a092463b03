"""Airflow 3 operators for lpo: find inputs, calibrate, optimize, validate, refresh, publish, mark ready,
convert a shard, merge shards.

One module per step (:mod:`~lpo.operators.inputs`, :mod:`~lpo.operators.calibrate`,
:mod:`~lpo.operators.optimize`, :mod:`~lpo.operators.validate`, :mod:`~lpo.operators.refresh`,
:mod:`~lpo.operators.publish`, :mod:`~lpo.operators.shards`), the DAG param helpers in
:mod:`~lpo.operators.params`; this module re-exports them all, so DAGs import from one place.

Every path and option is a template field, so ``{{ run_id }}``, ``{{ params.x }}``,
``{{ var.value.x }}``, XCom pulls and XComArgs work (manual and Asset-triggered runs
have no logical date: ``{{ ds }}``/``{{ ts_nodash }}`` are undefined there; use
``{{ dag_run.run_after | ts_nodash }}``). Arguments are checked in ``execute``
(after rendering) and passed to the step functions of :mod:`lpo.orchestration.steps`
(the ones the CLI and the KFP components call); each operator returns a JSON-able dict
(pushed to XCom as ``return_value``). A breached validation threshold or a bad input fails
the task without retries: every ``execute`` maps an :class:`lpo.LpoError` (bad paths and
numbers included) to ``AirflowFailException`` (:func:`lpo.operators.common.fail_fast`);
nothing to do skips it (``AirflowSkipException``). TensorFlow's native start-up noise is
kept out of the task log (:func:`lpo.log.quiet_tensorflow`).
"""
from __future__ import annotations

from lpo.operators.calibrate import LpoCalibrateOperator
from lpo.operators.inputs import LpoFindInputsOperator, LpoMarkReadyOperator
from lpo.operators.optimize import LpoOptimizeOperator
from lpo.operators.params import gate_and_publish_params, path_param, path_setting
from lpo.operators.publish import LpoPublishOperator
from lpo.operators.refresh import LpoRefreshOperator
from lpo.operators.shards import LpoConvertShardOperator, LpoMergeCkptOperator
from lpo.operators.validate import LpoValidateOperator

__all__ = [
    "LpoCalibrateOperator", "LpoOptimizeOperator", "LpoValidateOperator", "LpoRefreshOperator", "LpoPublishOperator",
    "LpoFindInputsOperator", "LpoMarkReadyOperator", "LpoConvertShardOperator", "LpoMergeCkptOperator",
    "gate_and_publish_params", "path_param", "path_setting",
]
