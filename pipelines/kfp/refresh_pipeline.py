"""``refresh_pipeline``: refresh (convert checkpoint) -> validate (defined in ``lpo.components.pipelines``)."""
from lpo.components.pipelines import refresh_pipeline

__all__ = ["refresh_pipeline"]
