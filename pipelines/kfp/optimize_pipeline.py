"""``optimize_pipeline``: calibrate -> optimize -> validate (defined in ``lpo.components.pipelines``)."""
from lpo.components.pipelines import optimize_pipeline

__all__ = ["optimize_pipeline"]
