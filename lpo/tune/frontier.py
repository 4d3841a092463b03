"""AUTO's frontier: every configuration tried (size, accuracy loss, latency), as tables and plots.

A trial is on the frontier when no other trial is both no larger and no worse (and better
in one). The report is written like ``lpo validate``'s (JSON, Markdown, self-contained
HTML with embedded PNG plots, through :mod:`lpo.validation.report`), with the chosen
configuration marked.
"""
from __future__ import annotations

import html
import json
import logging
import os

from lpo.fsutil import write_text as _write_text
from lpo.validation.report import (
    _CSS, _bytes, _num, html_figures, html_page_end, markdown_page, png, pyplot, report_paths, write_report_files,
)

log = logging.getLogger(__name__)

__all__ = ["pareto", "auto_tables", "render_auto_markdown", "render_auto_html", "make_auto_plots",
           "write_auto_report"]


def _score(t: dict) -> float:
    s = t.get("score")
    return t["loss"] if s is None or s != s else s


def pareto(trials: list[dict]) -> set[int]:
    """Ids of the trials not dominated in (bytes, score): no other is as small and scores as well."""
    pts = sorted(trials, key=lambda t: (t["nbytes"], _score(t), t["id"]))
    front, best = set(), float("inf")
    for t in pts:
        if _score(t) < best:
            front.add(t["id"])
            best = _score(t)
    return front


def _loss_name(d: dict) -> str:
    return {"auc": "|ΔAUC|", "soft_auc": "|ΔsoftAUC| (FP32 probabilities as labels)"}.get(
        d["budget"].get("metric"), "p99 |Δp|")


def auto_tables(d: dict) -> list:
    """The AUTO result dict as ``[(title, header, rows)]``."""
    t = []
    chosen = d.get("chosen") or {}
    conf, tune = d.get("confirm") or {}, d.get("tune") or {}
    b = d["budget"]
    limit = b.get("max_auc_drop", b.get("max_output_diff"))
    se = "jackknife, unlabelled rows" if b.get("metric") == "soft_auc" else "paired DeLong"
    margin = f" + {b['margin_sigmas']:g} SE ({se}) on the tuning rows" if b.get("margin_sigmas") else ""
    summary = [["Result", "chosen" if chosen else "no configuration within the budget"],
               ["Budget", f"{_loss_name(d)}{margin} ≤ {_num(limit)} on output {b.get('output')!r}"],
               ["Eval rows", f"{d['rows'].get('total')} ({d['rows'].get('tune')} tuning, "
                             f"{d['rows'].get('confirm')} confirmation, seed {d['rows'].get('seed')})"]]
    if chosen:
        summary += [["Size (variables, chosen / FP32)", _num(chosen["size_ratio"], 4)],
                    ["Tuning rows: loss", _num(tune.get("loss"))],
                    ["Tuning rows: ΔAUC", _num(tune.get("delta_auc"))],
                    ["Confirmation rows (never seen): loss", _num(conf.get("loss"))],
                    ["Confirmation rows: ΔAUC", _num(conf.get("delta_auc"))],
                    ["Confirmation rows: labelled ΔAUC ± SE", f"{_num(conf.get('labelled_delta_auc'))} ± "
                                                             f"{_num(conf.get('labelled_se'))}"],
                    ["Confirmation rows: p99 / max |Δp|", f"{_num(conf.get('p99_abs_diff'))} / "
                                                          f"{_num(conf.get('max_abs_diff'))}"],
                    ["Latency p50 ratio vs FP32", _num(chosen.get("latency_ratio"), 3)]]
    summary += [["Configurations tried", _num(len(d.get("trials") or []))],
                ["Stopped early", d.get("stopped") or "no"],
                ["Search time", f"{d.get('seconds', 0):.1f} s"]]
    summary += [["opt_config written to", p] for p in d.get("config_files") or []]
    t.append(("Summary", ["Item", "Value"], summary))
    confs = d.get("confirmations") or []
    if confs:
        t.append(("Confirmations (rows the search never saw)",
                  ["#", "Size", "Tuning loss", "Tuning score", "Confirmation loss", "Passed"],
                  [[c["trial"], _num(c["size_ratio"], 4), _num(c["tune_loss"]), _num(c["tune_score"]),
                    _num(c["confirm_loss"]), "yes" if c["passed"] else "no"] for c in confs]))
    nodes = d.get("nodes") or []
    cfg = chosen.get("config") or {}
    sens = d.get("sensitivity") or {}
    forms = {n["node"]: {f["form"]: f["bytes"] for f in n["forms"]} for n in nodes}
    rows = []
    for n in nodes:
        form = cfg.get(n["node"], "–")
        nbytes = forms[n["node"]].get(form)
        rows.append([n["node"], n["kind"], form + (" (pinned)" if n.get("pinned") else ""),
                     _bytes(nbytes) if nbytes is not None else "–", _bytes(n["fp32_bytes"]),
                     _num(sens.get(n["node"])), " < ".join(f["form"] for f in n["forms"])])
    t.append((f"Nodes ({len(nodes)})", ["Node", "Kind", "Chosen form", "Bytes", "FP32 bytes",
                                       "Harm of its smallest form alone (mean Δp²)", "Ladder (smallest first)"], rows))
    trials = d.get("trials") or []
    front = pareto(trials)
    rows = []
    for tr in sorted(trials, key=lambda x: (x["nbytes"], _score(x), x["id"])):
        lat = tr.get("latency_ratio")
        rows.append([tr["id"], tr["phase"], tr["how"], _num(tr["size_ratio"], 4), _num(tr.get("delta_auc")),
                     _num(tr.get("se")), _num(_score(tr)), "yes" if tr["feasible"] else "no",
                     _num(lat, 3) if lat is not None else "–", "●" if tr["id"] in front else "",
                     "★" if chosen and tr["id"] == chosen.get("trial") else "", tr.get("change", "")])
    t.append((f"Frontier: every configuration tried ({len(trials)}, smallest first)",
              ["#", "Phase", "How", "Size", "ΔAUC", "SE", "Score (budgeted)", "Within budget", "Latency ratio",
               "Pareto", "Chosen", "Change"], rows))
    return t


def render_auto_markdown(d: dict) -> str:
    """The AUTO result as Markdown."""
    return markdown_page("lpo AUTO report", auto_tables(d), d.get("notes"))


def make_auto_plots(d: dict) -> dict | None:
    """``{title: png}``: size vs loss of every trial (frontier, budget, chosen) and size vs latency."""
    plt = pyplot()
    if plt is None:
        return None
    trials = d.get("trials") or []
    if not trials:
        return {}
    chosen = (d.get("chosen") or {}).get("trial")
    b = d["budget"]
    limit = b.get("max_auc_drop", b.get("max_output_diff"))
    plots = {}
    front = pareto(trials)
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    floor = max(min((_score(t) for t in trials if _score(t) > 0), default=limit or 1e-6) / 3, 1e-12)
    y = lambda t: max(_score(t), floor)  # noqa: E731 - log axis: exact zeros drawn at the floor
    for how, marker in (("simulated", "o"), ("built", "s")):
        for ok, color in ((True, "#4C72B0"), (False, "#C44E52")):
            pts = [t for t in trials if t["how"] == how and t["feasible"] == ok]
            if pts:
                ax.scatter([t["size_ratio"] for t in pts], [y(t) for t in pts], marker=marker, s=22, alpha=0.7,
                           color=color, label=f"{how}, {'within' if ok else 'over'} budget")
    fr = sorted((t for t in trials if t["id"] in front), key=lambda t: t["size_ratio"])
    if fr:
        ax.step([t["size_ratio"] for t in fr], [y(t) for t in fr], where="post", color="#888", lw=1,
                label="Pareto frontier")
    if limit:
        ax.axhline(limit, color="#DD8452", ls="--", lw=1, label=f"budget {limit:g}")
    ch = [t for t in trials if t["id"] == chosen]
    if ch:
        ax.scatter([ch[0]["size_ratio"]], [y(ch[0])], marker="*", s=260, color="#2e7d32", edgecolor="k", zorder=5,
                   label="chosen")
    ax.set_yscale("log")
    ax.set_xlabel("size (variables bytes / FP32)")
    ax.set_ylabel("score: " + _loss_name(d) + (" + margin·SE" if b.get("margin_sigmas") else "") + " (tuning rows)")
    ax.set_title("Every configuration tried")
    ax.legend(fontsize=7, frameon=False, loc="best")
    plots["Size vs accuracy loss"] = png(fig)

    built = [t for t in trials if t.get("latency_ratio") is not None]
    if built:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for t in built:
            ax.scatter([t["size_ratio"]], [t["latency_ratio"]], marker="*" if t["id"] == chosen else "s",
                       s=200 if t["id"] == chosen else 30, color="#2e7d32" if t["id"] == chosen else
                       ("#4C72B0" if t["feasible"] else "#C44E52"), edgecolor="k" if t["id"] == chosen else None)
            ax.annotate(str(t["id"]), (t["size_ratio"], t["latency_ratio"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.axhline(1.0, color="#888", lw=1, ls="--")
        ax.set_xlabel("size (variables bytes / FP32)")
        ax.set_ylabel("p50 latency / FP32")
        ax.set_title(f"Built configurations (batch {built[0]['latency']['batch_size']})")
        plots["Size vs latency"] = png(fig)
    return plots


def render_auto_html(d: dict, plots: dict | None) -> str:
    """A self-contained HTML page for the AUTO result."""
    e = html.escape
    ok = bool(d.get("chosen"))
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>lpo AUTO report — {'chosen' if ok else 'no configuration'}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>lpo AUTO report<span class='badge {'pass' if ok else 'fail'}'>"
           f"{'CHOSEN' if ok else 'NONE'}</span></h1>"]
    for title, header, rows in auto_tables(d):
        out.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
        for r in rows:
            star = title.startswith("Frontier") and r[10] == "★"
            cls = " class='chosen'" if star else ""
            out.append(f"<tr{cls}>" +
                       "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
        out.append("</table>")
        if title.startswith("Frontier") and plots:
            out += html_figures(list(plots.items()))
    out += html_page_end(plots, d.get("notes"))
    return "\n".join(out).replace("</style>", "tr.chosen td{background:#e8f5e9!important;font-weight:600}</style>", 1)


def write_auto_report(result, report_dir, final=None) -> dict:
    """Write ``auto_report.json``/``.md``/``.html`` (and the chosen ``lpo_auto_config.json``) into ``report_dir``."""
    paths = report_paths(report_dir, "auto_report")
    if result.opt_config is not None:
        from lpo.tune.auto import CONFIG_NAME

        paths["config"] = os.path.join(os.fspath(report_dir), CONFIG_NAME)
        _write_text(paths["config"], json.dumps(result.opt_config, indent=1, sort_keys=True) + "\n")
    result.report_files = dict(paths)
    d = result.to_dict()
    if final is not None:
        d["optimize"] = final.to_dict()
    write_report_files(paths, d, render_auto_markdown(d), lambda: make_auto_plots(d), render_auto_html)
    log.info("wrote AUTO report to %s", os.fspath(report_dir))
    return paths
