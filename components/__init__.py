"""Kubeflow Pipelines (KFP v2) components for lpo (shipped as ``lpo.components``).

One module per step; each has a Python-function component (``calibrate``,
``optimize``, ``validate``, ``refresh``) that runs the public API, and a
container component (``*_cli``) that runs the ``lpo`` CLI, both in
:data:`lpo.components.image.LPO_IMAGE`. Requires the ``kfp`` extra.
"""
from lpo.components.image import LPO_IMAGE

__all__ = ["LPO_IMAGE"]
