"""Graph passes, one module per op family, registered by name."""
from lpo.passes import dense, embedding, ev, grouping, interaction, single_value  # noqa: F401  (registers them)
from lpo.passes.registry import get, names, structural

__all__ = ["get", "names", "structural"]
