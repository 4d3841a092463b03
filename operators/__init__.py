"""Apache Airflow operators for lpo (shipped as ``lpo.operators``).

Airflow discovers this provider through the ``apache_airflow_provider`` entry
point, which calls :func:`get_provider_info`. The operators live in one module per step
(``calibrate``, ``optimize``, ``validate``, ``refresh``, ``publish``, ``inputs``, ``shards``) and are
all re-exported by :mod:`lpo.operators.operators` (import it only where Airflow is installed)::

    from lpo.operators.operators import LpoOptimizeOperator
"""
from __future__ import annotations

from lpo import __version__

OPERATOR_CLASSES = ("LpoCalibrateOperator", "LpoOptimizeOperator", "LpoValidateOperator",
                    "LpoRefreshOperator", "LpoPublishOperator", "LpoFindInputsOperator", "LpoMarkReadyOperator",
                    "LpoConvertShardOperator", "LpoMergeCkptOperator")


def get_provider_info() -> dict:
    """Return the provider metadata Airflow reads from the entry point (provider.yaml layout)."""
    return {
        "package-name": "lpo",
        "name": "lpo",
        "description": "Low-precision optimizer for TensorFlow recommendation models.",
        "versions": [__version__],
        "integrations": [{
            "integration-name": "lpo",
            "external-doc-url": "https://github.com/lpo-project/lpo",
            "tags": ["software"],
        }],
        "operators": [{"integration-name": "lpo", "python-modules": ["lpo.operators.operators"]}],
    }


def __getattr__(name):
    if name in OPERATOR_CLASSES:
        from lpo.operators import operators

        return getattr(operators, name)
    raise AttributeError(f"module 'lpo.operators' has no attribute {name!r}")
