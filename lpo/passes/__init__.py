"""Graph passes, one module per op family, registered by name."""
from lpo.passes import dense, embedding, ev, grouping, interaction, single_value  # noqa: F401  (registers them)
from lpo.passes.registry import fold_names, get, is_fold, names

__all__ = ["get", "names", "fold_names", "is_fold"]
