"""The one container image every lpo component runs in.

Built from the repository's ``Dockerfile`` by ``make image`` (which reads this
constant), pushed by the release job. Bump it together with ``pyproject.toml``.
"""

#: Pinned image of lpo with the ``kfp`` extra; the entry point is the ``lpo`` CLI.
LPO_IMAGE = "ghcr.io/lpo-project/lpo:0.1.0"
