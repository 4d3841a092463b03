#!/usr/bin/env python3
"""Write (or check) the README's parameter tables from the code.

Usage: python scripts/params_doc.py [--check] [README.md]

Two marked regions of the README are generated: ``<!-- params:begin -->`` ..
``<!-- params:end -->`` (every Airflow DAG param: default and description, read from
the DAG files in pipelines/airflow) and ``<!-- kfp-params:begin -->`` ..
``<!-- kfp-params:end -->`` (every KFP component and pipeline input: type and
default, read from lpo.components). ``--check`` exits 1 if the README differs.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAG_FILES = ("lpo_retrain_dag.py", "lpo_refresh_dag.py", "lpo_ready_dags.py", "lpo_sharded_refresh_dag.py")


def _cell(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else (f'"{value}"' if value == "" else value)
    return "`" + text.replace("|", "\\|") + "`"


def _desc(text) -> str:
    text = " ".join(str(text or "").split())
    if text and not text.endswith("."):
        text += "."
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def dag_tables() -> str:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="lpo-params-doc-"))
    os.environ.pop("LPO_AIRFLOW_ROOT", None)  # document the built-in default
    from airflow.sdk import DAG

    out = []
    for name in DAG_FILES:
        path = os.path.join(REPO, "pipelines", "airflow", name)
        spec = importlib.util.spec_from_file_location(f"lpo_doc_{name[:-3]}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        dags = sorted({d.dag_id: d for d in vars(mod).values() if isinstance(d, DAG)}.items())
        for dag_id, dag in dags:
            out += [f"`{dag_id}` ({name}):", "", "| param | default | description |", "|---|---|---|"]
            for key, param in dag.params.items():
                schema = param.schema or {}
                default = param.value if param.has_value else None
                extra = f" One of: {', '.join(map(str, schema['enum']))}." if "enum" in schema else ""
                out.append(f"| `{key}` | {_cell(default)} | {_desc(param.description)}{extra} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _doc_args(func) -> dict:
    """``Args:`` entries of a Google-style docstring, with ``a, b: text`` spread over a and b."""
    doc = inspect.getdoc(func) or ""
    m = re.search(r"^Args:\n(.*?)(?:\n\S|\Z)", doc, flags=re.S | re.M)
    out: dict = {}
    if not m:
        return out
    entries = re.split(r"\n(?=    \S)", "\n" + m.group(1))
    for entry in entries:
        entry = entry.strip()
        if ":" not in entry:
            continue
        names, text = entry.split(":", 1)
        for n in names.split(","):
            out[n.strip()] = " ".join(text.split())
    return out


def kfp_tables() -> str:
    from kfp.dsl.base_component import BaseComponent

    import lpo.components as pkg

    comps = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"lpo.components.{info.name}")
        for obj in vars(mod).values():
            func = getattr(obj, "python_func", None) or getattr(obj, "pipeline_func", None)
            if isinstance(obj, BaseComponent) and getattr(func, "__module__", None) == mod.__name__:
                comps[obj.name] = (info.name, obj)
    out = []
    for cname, (mname, comp) in sorted(comps.items(), key=lambda kv: (kv[1][0], kv[0])):
        func = getattr(comp, "pipeline_func", None) or getattr(comp, "python_func", None)
        docs = _doc_args(func) if func else {}
        kind = "pipeline" if type(comp).__name__ == "GraphComponent" else "component"
        out += [f"`lpo.components.{mname}` {kind} `{cname}`:", "",
                "| input | type | default | description |", "|---|---|---|---|"]
        for key, spec in comp.component_spec.inputs.items():
            typ = str(spec.type).split("@")[0].replace("system.", "")
            if spec.default is not None:
                default = _cell(spec.default)
            else:
                default = "optional" if spec.optional else "required"
            desc = spec.description or docs.get(key, "")
            twin = comps.get(cname[:-len("-cli")]) if cname.endswith("-cli") else None
            if not desc and twin is not None and key in twin[1].component_spec.inputs:
                desc = twin[1].component_spec.inputs[key].description or ""  # same input as the Python form
            out.append(f"| `{key}` | {typ} | {default} | {_desc(desc)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(readme: str) -> str:
    for tag, make in (("params", dag_tables), ("kfp-params", kfp_tables)):
        begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
        if begin not in readme or end not in readme:
            raise SystemExit(f"README has no {begin} ... {end} region")
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{begin}\n{make()}{end}{tail}"
    return readme


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    path = args[0] if args else os.path.join(REPO, "README.md")
    with open(path, encoding="utf-8") as f:
        old = f.read()
    new = render(old)
    if check:
        if new != old:
            diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md",
                                                "generated", n=1))
            print(f"{path} parameter tables are out of date; run: python scripts/params_doc.py\n{diff}")
            return 1
        return 0
    if new != old:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
