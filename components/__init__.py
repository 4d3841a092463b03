"""Kubeflow Pipelines components for lpo (shipped as ``lpo.components``)."""
