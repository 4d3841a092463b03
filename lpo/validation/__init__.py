"""Running models and comparing them: the signature runner, metrics, ``validate`` and its report."""
