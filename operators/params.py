"""DAG ``Param`` helpers shared by the lpo DAGs: path settings and the gate/publish params."""
from __future__ import annotations


def path_setting(name: str) -> str:
    """Jinja for the DAG path param ``name``: the param if set, else the Variable ``lpo_<name>``,
    else ``<root>/<default>`` where root is the Variable ``lpo_root``, else ``$LPO_AIRFLOW_ROOT``,
    else ``/data/lpo`` (defaults: :data:`lpo.orchestration.airflow_settings.DAG_PATHS`)."""
    from lpo.orchestration.airflow_settings import DAG_PATHS, airflow_root

    return (f"{{{{ params.{name} or var.value.get('lpo_{name}', '') or "
            f"(var.value.get('lpo_root', '') or {airflow_root()!r}) ~ '/{DAG_PATHS[name]}' }}}}")


def path_param(name: str, what: str):
    """A DAG ``Param`` for the path ``name`` (empty by default: see :func:`path_setting`)."""
    from airflow.sdk import Param

    from lpo.orchestration.airflow_settings import DAG_PATHS

    return Param("", type="string", description=f"{what}. Empty: Variable lpo_{name}, else <root>/{DAG_PATHS[name]}")


def gate_and_publish_params() -> dict:
    """The DAG ``Param``s of the validate gate and of publishing, shared by the retrain and refresh DAGs."""
    from airflow.sdk import Param

    from lpo.options import PUBLISH_LAYOUTS
    from lpo.orchestration.airflow_settings import AIRFLOW

    return {
        "max_auc_drop": Param(AIRFLOW.max_auc_drop, type="number",
                              description="Gate: largest allowed AUC drop (negative: off)"),
        "max_abs_diff": Param(AIRFLOW.max_abs_diff, type="number",
                              description="Gate: largest allowed |prediction difference| (negative: off)"),
        "validate_iters": Param(AIRFLOW.validate_iters, type="integer", minimum=1,
                                description="Timed runs per batch size in validation"),
        "validate_batch_sizes": Param(AIRFLOW.validate_batch_sizes, type="string",
                                      description="Latency batch sizes, comma-separated"),
        "layout": Param(AIRFLOW.layout, enum=list(PUBLISH_LAYOUTS), description="Serving layout: "
                        "versions/<v> + current symlink, or TF Serving's numeric <v> directories"),
        "version": Param("", type="string", description="Published version. Empty: the run key "
                         "(YYYYMMDDHHMMSS of the run's start)"),
    }
