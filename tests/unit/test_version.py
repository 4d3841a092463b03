"""The version is written once (pyproject.toml) and read from the package metadata everywhere."""
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import lpo
from lpo.components.image import LPO_IMAGE
from lpo.operators import get_provider_info

ROOT = Path(__file__).resolve().parents[2]


def test_one_version_source():
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert lpo.__version__ == version("lpo") == pyproject
    assert LPO_IMAGE.endswith(f":{pyproject}")
    assert get_provider_info()["versions"] == [pyproject]
    out = subprocess.run([sys.executable, "-m", "lpo", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["lpo", pyproject]


def test_no_other_literal_version_in_the_package():
    pyproject = version("lpo")
    hits = [str(p.relative_to(ROOT)) for d in ("lpo", "components", "operators") for p in (ROOT / d).rglob("*.py")
            if f'"{pyproject}"' in p.read_text(encoding="utf-8")]
    assert hits == []
