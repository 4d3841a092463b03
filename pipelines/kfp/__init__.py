"""Kubeflow pipeline definitions for lpo; ``python -m pipelines.kfp.compile`` writes the IR YAML."""
