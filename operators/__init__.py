"""Apache Airflow operators for lpo (shipped as ``lpo.operators``).

Airflow discovers this provider through the ``apache_airflow_provider`` entry
point, which calls :func:`get_provider_info`.
"""
from __future__ import annotations


def get_provider_info() -> dict:
    """Return the provider metadata Airflow reads from the entry point."""
    return {
        "package-name": "lpo",
        "name": "lpo",
        "description": "Low-precision optimizer for TensorFlow recommendation models.",
        "versions": ["0.1.0"],
    }
