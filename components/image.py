"""The one container image every lpo component runs in.

Built from the repository's ``Dockerfile`` by ``make image`` (which reads this
constant), pushed by the release job. Its tag is the package version (``pyproject.toml``, the
one version source).
"""
from lpo import __version__

#: Pinned image of lpo with the ``kfp`` extra; the entry point is the ``lpo`` CLI.
LPO_IMAGE = f"ghcr.io/lpo-project/lpo:{__version__}"
