"""Graph passes, one module per op family, registered by name."""
from lpo.passes import dense, embedding, ev, single_value  # noqa: F401  (registers the families)
from lpo.passes.registry import get, names

__all__ = ["get", "names"]
