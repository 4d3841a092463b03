"""Code conventions the architecture states, checked over the package source."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_LOGGER = re.compile(r"^(\w+) = logging\.getLogger\((.*)\)$", re.M)


def test_module_loggers_are_named_after_their_module():
    """``logging.getLogger(__name__)`` everywhere (records carry the module, all under ``lpo``)."""
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)}" for d in ("lpo", "components", "operators")
           for p in sorted((ROOT / d).rglob("*.py")) for m in MODULE_LOGGER.finditer(p.read_text(encoding="utf-8"))
           if m.group(2) != "__name__"]
    assert bad == []


def test_every_subpackage_ships_in_the_wheel():
    """pyproject's explicit package list names every package directory (a missing one installs editable only)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("lpo",) + p.parent.relative_to(ROOT / "lpo").parts) for p in (ROOT / "lpo").rglob("__init__.py")}
    found |= {"lpo.components", "lpo.operators"}  # top-level directories shipped as lpo subpackages
    assert found - listed == set()
