"""Write a :class:`lpo.validation.validator.ValidationReport` as JSON, Markdown and self-contained HTML.

The HTML page has no external resources: CSS is inline and the plots (matplotlib,
``Agg`` backend, imported lazily) are embedded as base64 PNGs. Without matplotlib
the page is written without plots and says so.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["write_report", "render_markdown", "render_html", "make_plots"]

_ORIG_COLOR = "#4C72B0"
_OPT_COLOR = "#DD8452"


# --------------------------------------------------------------------------- formatting
def _num(x, digits=6) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if f != f:
        return "n/a"
    if f in (float("inf"), float("-inf")):
        return "∞" if f > 0 else "-∞"
    if f == 0:
        return "0"
    if abs(f) >= 1e5 or abs(f) < 1e-4:
        return f"{f:.{max(digits - 3, 2)}e}"
    return f"{f:.{digits}g}"


def _bytes(n) -> str:
    from lpo.fsutil import human_bytes

    return "–" if n is None else human_bytes(n, 2)


def _rate(x) -> str:
    return "–" if x is None or x != x else f"{float(x):,.0f}"


def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.1f}%"


def _tables(d: dict) -> list:
    """The report as ``[(title, header, rows)]``, shared by Markdown and HTML."""
    t = []
    th = d.get("thresholds", {})
    summary = [["Result", "PASS" if d["passed"] else "FAIL"],
               ["Original model", d["original"]], ["Optimized model", d["optimized"]],
               ["Data", f"{d['data']} ({_num(d['rows'])} rows)"]]
    for k in ("max_auc_drop", "max_abs_diff", "max_latency_ratio", "min_size_reduction"):
        summary.append([f"Threshold {k}", "off" if th.get(k) is None else _num(th[k])])
    t.append(("Summary", ["Item", "Value"], summary))
    if d.get("breaches"):
        t.append(("Breached thresholds", ["Threshold", "Actual", "Limit", "Detail"],
                  [[b["threshold"], _num(b["actual"]), _num(b["limit"]), b["message"]]
                   for b in d["breaches"]]))
    acc = d.get("accuracy")
    if acc:
        t.append((f"Accuracy (output {d.get('prediction_output')!r}, label "
                  f"{acc['label_key']!r})", ["Metric", "Original", "Optimized", "Delta"],
                  [["AUC", _num(acc["auc_original"]), _num(acc["auc_optimized"]),
                    _num(acc["auc_delta"])],
                   ["Logloss", _num(acc["logloss_original"]), _num(acc["logloss_optimized"]),
                    _num(acc["logloss_delta"])]]
                  + ([["Mean prediction vs observed CTR " + _num(acc["observed_ctr"]),
                       _num(acc["mean_pred_original"]), _num(acc["mean_pred_optimized"]),
                       _num(acc["mean_pred_optimized"] - acc["mean_pred_original"])]]
                     if acc.get("observed_ctr") is not None else [])))
        rel = acc.get("reliability") or {}
        if rel.get("original"):
            t.append(("Reliability (equal-count bins of each model's predictions: mean prediction vs observed CTR)",
                      ["Bin", "Rows", "Mean pred orig", "CTR orig", "Mean pred opt", "CTR opt"],
                      [[str(i + 1), _num(o["rows"]), _num(o["mean_pred"]), _num(o["ctr"]), _num(p["mean_pred"]),
                        _num(p["ctr"])] for i, (o, p) in enumerate(zip(rel["original"], rel["optimized"]))]))
    pr = d.get("prediction") or {}
    if pr.get("abs_diff"):
        t.append((f"Prediction change |Δ {d.get('prediction_output')}| (no labels needed)", ["Statistic", "Value"],
                  [[f"|Δp| {k}", _num(v)] for k, v in pr["abs_diff"].items()]
                  + [["mean prediction original / optimized",
                      f"{_num(pr.get('mean_original'))} / {_num(pr.get('mean_optimized'))}"],
                     ["soft-label ΔAUC (original's probabilities as labels)", _num(pr.get("soft_auc_delta"))]]))
    acts = d.get("activations") or []
    if acts:
        t.append(("INT8 activations (calibration rows): clip rate and output error per layer",
                  ["Layer", "Form", "Method", "Range", "Clipped", "Output error", "Gate"],
                  [[a.get("node", ""), a.get("mode", "") + (f" (from {a['fallback_from']})" if a.get("fallback_from")
                                                             else ""),
                    a.get("calib_method") or "–",
                    "–" if not a.get("activation_range") else
                    f"[{_num(a['activation_range'][0], 4)}, {_num(a['activation_range'][1], 4)}]",
                    _pct(a.get("clipped")), "–" if a.get("output_rel_rmse") is None else
                    f"{100 * a['output_rel_rmse']:.2f}%", a.get("gate") or "–"] for a in acts]))
    if d.get("outputs"):
        t.append(("Output differences |optimized − original|",
                  ["Output", "dtype (orig → opt)", "max", "mean", "p99"],
                  [[name, f"{e['dtype_original']} → {e['dtype_optimized']}",
                    _num(e.get("max_abs_diff")), _num(e.get("mean_abs_diff")),
                    _num(e.get("p99_abs_diff"))] for name, e in d["outputs"].items()]))
    if d.get("latency"):
        rows = []
        for e in d["latency"]:
            o, p = e["original"], e["optimized"]
            rows.append([_num(e["batch_size"]), _num(o["p50_ms"], 4), _num(p["p50_ms"], 4),
                         _num(o["p99_ms"], 4), _num(p["p99_ms"], 4),
                         _rate(o["throughput_rows_s"]), _rate(p["throughput_rows_s"]),
                         _num(e["p50_ratio"], 3)])
        t.append(("Latency (ms) and throughput (rows/s), interleaved runs",
                  ["Batch", "p50 orig", "p50 opt", "p99 orig", "p99 opt", "rows/s orig",
                   "rows/s opt", "p50 ratio"], rows))
    prof = d.get("profile")
    if prof:
        t.append(profile_table(prof))
    s = d.get("size")
    if s:
        t.append(("Size", ["", "Original", "Optimized", "Ratio (opt/orig)"],
                  [["variables/", _bytes(s["original"]["variables_bytes"]),
                    _bytes(s["optimized"]["variables_bytes"]), _num(s["variables_ratio"], 4)],
                   ["whole model", _bytes(s["original"]["total_bytes"]),
                    _bytes(s["optimized"]["total_bytes"]), _num(s["total_ratio"], 4)],
                   ["variables reduction", "", "", _pct(s.get("variables_reduction"))]]))
    nodes = d.get("optimized_nodes") or []
    t.append((f"Optimized nodes ({len(nodes)})", ["Kind", "Node", "dtype", "Scheme"],
              [[n.get("kind") or "", n.get("node") or "", n.get("dtype") or "",
                n.get("scheme") or ""] for n in nodes] or [["–", "none listed", "", ""]]))
    rt = d.get("runtime") or {}
    tgt = (d.get("manifest") or {}).get("target") or {}
    if rt.get("requires") or tgt:
        req = rt.get("requires") or {}
        t.append(("Runtime requirements (optimized model vs this machine)", ["", "Required / target", "Here"],
                  [["target CPU", tgt.get("name", "–"), ""],
                   ["oneDNN", "required" if req.get("onednn") else "not required", "on" if rt.get("onednn") else "off"],
                   ["CPU features", ", ".join(req.get("cpu_features") or []) or "–",
                    ", ".join(rt.get("cpu_features") or []) or "–"],
                   ["forms", ", ".join(f"{k} x{v}" for k, v in (req.get("forms") or {}).items()) or "portable", ""]]))
    env = dict(d.get("environment") or {})
    st = d.get("settings") or {}
    env_rows = [[k, str(v)] for k, v in env.items()]
    env_rows += [[f"setting {k}", str(v)] for k, v in st.items()]
    env_rows += [[f"time {k}", f"{v:.2f} s"] for k, v in (d.get("timings") or {}).items()
                 if isinstance(v, (int, float))]
    t.append(("Environment", ["Key", "Value"], env_rows))
    return t


def profile_table(prof: dict) -> tuple:
    """The report's profile (lpo.validation.profile) as ``(title, header, rows)``: totals, then the top op types."""
    o, p = prof["original"], prof["optimized"]
    rows = [["all nodes (op time)", _num(o["nodes_per_run"]), _num(p["nodes_per_run"]), _num(o["op_ms"] * 1e3, 4),
             _num(p["op_ms"] * 1e3, 4)],
            ["added by lpo", _num(o["lpo_nodes"]), _num(p["lpo_nodes"]), "", ""]]
    rows += [[r["op"], _num(r["nodes"]), _num(r["nodes_compare"]), _num(r["us"], 4), _num(r["us_compare"], 4)]
             for r in prof["rows"]]
    return (f"Profile at batch {prof['batch_size']} (FULL_TRACE, median of {prof['runs']} runs): nodes per run "
            "and op time per op type", ["Op type", "nodes orig", "nodes opt", "µs orig", "µs opt"], rows)


# --------------------------------------------------------------------------- markdown
def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(d: dict) -> str:
    """The report dict as Markdown tables."""
    return markdown_page(f"lpo validation report — {'PASS' if d['passed'] else 'FAIL'}", _tables(d), d.get("notes"))


def markdown_page(heading: str, tables, notes=None) -> str:
    """A Markdown page: ``# heading``, one table per ``(title, header, rows)``, then the notes."""
    lines = [f"# {heading}", ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(_md_cell(h) for h in header) + " |",
                  "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def png(fig) -> bytes:
    """Render and close a matplotlib figure; return its PNG bytes."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def make_plots(report) -> dict | None:
    """Return ``{title: png_bytes}`` of the report's plots, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    d = report.to_dict()
    plots = {}

    samples = getattr(report, "samples", None) or {}
    a, b = samples.get("original"), samples.get("optimized")
    if a is not None and b is not None and len(a):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = b - a
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        if np.all(diff == 0):
            ax.bar([0.0], [len(diff)], width=1.0, color=_OPT_COLOR)
            ax.set_xlim(-1, 1)
            ax.set_title("Prediction differences (all exactly 0)")
        else:
            ax.hist(diff, bins=60, color=_OPT_COLOR)
            ax.set_title("Prediction differences (optimized − original)")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        ax.set_xlabel(f"Δ {report.prediction_output}")
        ax.set_ylabel("rows")
        plots["Prediction differences"] = png(fig)

        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        ax.scatter(a, b, s=3, alpha=0.4, color=_ORIG_COLOR, linewidths=0)
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        ax.plot([lo, hi], [lo, hi], color="#888", lw=1, ls="--", label="y = x")
        ax.set_xlabel("original")
        ax.set_ylabel("optimized")
        ax.set_title(f"Predictions: original vs optimized ({len(a):,} rows)")
        ax.legend(loc="upper left", frameon=False)
        plots["Original vs optimized predictions"] = png(fig)

    s = d.get("size")
    if s:
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        cats = ["variables/", "whole model"]
        x = np.arange(len(cats))
        mib = 1024.0 * 1024.0
        ov = [s["original"]["variables_bytes"] / mib, s["original"]["total_bytes"] / mib]
        nv = [s["optimized"]["variables_bytes"] / mib, s["optimized"]["total_bytes"] / mib]
        r1 = ax.bar(x - 0.2, ov, 0.4, label="original", color=_ORIG_COLOR)
        r2 = ax.bar(x + 0.2, nv, 0.4, label="optimized", color=_OPT_COLOR)
        ax.bar_label(r1, fmt="%.2f", fontsize=8)
        ax.bar_label(r2, fmt="%.2f", fontsize=8)
        ax.set_xticks(x, cats)
        ax.set_ylabel("MiB")
        ax.set_title("Model size")
        ax.margins(y=0.15)
        ax.legend(frameon=False)
        plots["Model size"] = png(fig)

    rel = (d.get("accuracy") or {}).get("reliability") or {}
    if rel.get("original"):
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        top = 0.0
        for key, color in (("original", _ORIG_COLOR), ("optimized", _OPT_COLOR)):
            xs, ys = [r["mean_pred"] for r in rel[key]], [r["ctr"] for r in rel[key]]
            ax.plot(xs, ys, marker="o", ms=3, color=color, label=key)
            top = max(top, max(xs), max(ys))
        ax.plot([0, top], [0, top], color="#888", lw=1, ls="--", label="y = x")
        ax.set_xlabel("mean prediction (bin)")
        ax.set_ylabel("observed CTR (bin)")
        ax.set_title("Reliability curve")
        ax.legend(frameon=False, loc="upper left")
        plots["Reliability curve"] = png(fig)

    lat = d.get("latency") or []
    if lat:
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
        labels = [str(e["batch_size"]) for e in lat]
        x = np.arange(len(lat))
        for ax, q in zip(axes, ("p50_ms", "p99_ms")):
            o = [e["original"][q] or 0 for e in lat]
            p = [e["optimized"][q] or 0 for e in lat]
            ax.bar(x - 0.2, o, 0.4, label="original", color=_ORIG_COLOR)
            ax.bar(x + 0.2, p, 0.4, label="optimized", color=_OPT_COLOR)
            ax.set_xticks(x, labels)
            ax.set_xlabel("batch size")
            ax.set_ylabel("ms")
            ax.set_title(f"Latency {q[:3]}")
            ax.margins(y=0.2)
            ax.legend(frameon=False, loc="upper left")
        plots["Latency"] = png(fig)
    prof = d.get("profile")
    if prof and prof.get("rows"):
        plots["Time per op type"] = profile_plot(plt, prof)
    return plots


def profile_plot(plt, prof: dict) -> bytes:
    """Horizontal bars: op time per op type (top rows), original against optimized, with nodes per run."""
    rows = prof["rows"][::-1]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9.0, 0.9 + 0.32 * len(rows)))
    ax.barh(y + 0.2, [r["us"] for r in rows], 0.4, label=f"original ({prof['original']['nodes_per_run']:,} nodes/run)",
            color=_ORIG_COLOR)
    ax.barh(y - 0.2, [r["us_compare"] for r in rows], 0.4,
            label=f"optimized ({prof['optimized']['nodes_per_run']:,} nodes/run)", color=_OPT_COLOR)
    ax.set_yticks(y, [f"{r['op']} ({r['nodes']}→{r['nodes_compare']})" for r in rows], fontsize=8)
    ax.set_xlabel(f"µs per run at batch {prof['batch_size']} (op type (nodes per run))")
    ax.set_title("Time per op type")
    ax.legend(frameon=False, loc="lower right")
    return png(fig)


# --------------------------------------------------------------------------- html
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1080px;color:#222;line-height:1.4;padding:0 16px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}
.badge{display:inline-block;padding:4px 14px;border-radius:14px;color:#fff;font-weight:700;
font-size:16px;vertical-align:middle;margin-left:10px}
.pass{background:#2e7d32}.fail{background:#c62828}
.sub{color:#666;font-size:13px;margin-bottom:12px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #ddd;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f3f5f8}tr:nth-child(even) td{background:#fafbfc}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td{word-break:break-word;max-width:620px}
.breach td{background:#fdecea!important}
.plots{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:6px;background:#fff}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;text-align:center}
.note{background:#fff8e1;border-left:4px solid #f9a825;padding:6px 10px;margin:6px 0;font-size:13px}
"""


def _is_num_cell(c: str) -> bool:
    s = str(c).replace(",", "").replace("%", "").replace("–", "").strip()
    s = s.split(" ")[0] if s.endswith(("B", "iB")) else s
    try:
        float(s)
        return True
    except ValueError:
        return s in ("n/a", "∞", "-∞")


def render_html(d: dict, plots: dict | None) -> str:
    """A self-contained HTML page (inline CSS, base64 PNG plots) for the report dict."""
    e = html.escape
    ok = d["passed"]
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>lpo validation report — {'PASS' if ok else 'FAIL'}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>lpo validation report<span class='badge {'pass' if ok else 'fail'}'>"
           f"{'PASS' if ok else 'FAIL'}</span></h1>",
           f"<div class='sub'>{e(os.path.basename(d['original'].rstrip('/')) or d['original'])}"
           f" → {e(os.path.basename(d['optimized'].rstrip('/')) or d['optimized'])} on "
           f"{_num(d['rows'])} rows</div>"]
    if not ok:
        out.append("<div class='note'><b>Breached:</b> " + "; ".join(
            e(b["message"]) for b in d.get("breaches", [])) + "</div>")
    tables = _tables(d)
    plot_after = {"Size": ["Model size"], "Latency": ["Latency"], "Profile": ["Time per op type"],
                  "Reliability": ["Reliability curve"],
                  "Output differences": ["Prediction differences",
                                         "Original vs optimized predictions"]}
    for title, header, rows in tables:
        out.append(f"<h2>{e(title)}</h2><table><tr>" +
                   "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
        breach = title.startswith("Breached")
        for r in rows:
            cells = "".join(f"<td class='n'>{e(str(c))}</td>" if _is_num_cell(c) and k > 0
                            else f"<td>{e(str(c))}</td>" for k, c in enumerate(r))
            cls = " class='breach'" if breach or (title == "Summary" and r[1] == "FAIL") else ""
            out.append(f"<tr{cls}>{cells}</tr>")
        out.append("</table>")
        if plots:
            for key, names in plot_after.items():
                if title.startswith(key):
                    out += html_figures([(n, plots[n]) for n in names if n in plots])
    out += html_page_end(plots, d.get("notes"))
    return "\n".join(out)


def html_figures(figs: list) -> list[str]:
    """HTML of ``(name, png bytes)`` figures in one row (nothing for none)."""
    if not figs:
        return []
    e = html.escape
    out = ["<div class='plots'>"]
    for n, data in figs:
        b64 = base64.b64encode(data).decode("ascii")
        out.append(f"<figure><img alt='{e(n)}' src='data:image/png;base64,{b64}'><figcaption>{e(n)}</figcaption>"
                   "</figure>")
    out.append("</div>")
    return out


def html_page_end(plots: dict | None, notes) -> list[str]:
    """The end of a report page: a note when matplotlib is missing (``plots`` None), the notes, closing tags."""
    e = html.escape
    out = []
    if plots is None:
        out.append("<div class='note'>matplotlib is not installed: plots omitted (pip install matplotlib).</div>")
    if notes:
        out.append("<h2>Notes</h2>")
        out += [f"<div class='note'>{e(n)}</div>" for n in notes]
    out.append("</body></html>")
    return out


# --------------------------------------------------------------------------- API
def report_paths(report_dir, stem: str) -> dict:
    """Create ``report_dir``; return where ``<stem>.json``/``.md``/``.html`` go."""
    report_dir = os.fspath(report_dir)
    os.makedirs(report_dir, exist_ok=True)
    return {"json": os.path.join(report_dir, f"{stem}.json"), "markdown": os.path.join(report_dir, f"{stem}.md"),
            "html": os.path.join(report_dir, f"{stem}.html")}


def write_report_files(paths: dict, d: dict, markdown: str, plots, html_page) -> None:
    """Write the JSON of ``d``, the ``markdown`` and ``html_page(d, plots())`` atomically (a plot error loses only the plots)."""
    from lpo.fsutil import write_text

    write_text(paths["json"], json.dumps(d, indent=2, sort_keys=False, allow_nan=False) + "\n")
    write_text(paths["markdown"], markdown)
    try:
        figs = plots()
    except Exception as ex:  # noqa: BLE001 - a plotting bug must not lose the report
        log.warning("could not draw plots: %s", ex)
        figs = {}
    if figs is None:
        log.warning("matplotlib is not installed: %s has no plots", os.path.basename(paths["html"]))
    write_text(paths["html"], html_page(d, figs))


def write_report(report, report_dir) -> dict:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``report_dir``.

    Creates ``report_dir`` if needed and replaces existing report files. Returns
    ``{"json": path, "markdown": path, "html": path}``.
    """
    paths = report_paths(report_dir, "report")
    report.report_files = dict(paths)
    d = report.to_dict()
    write_report_files(paths, d, render_markdown(d), lambda: make_plots(report), render_html)
    log.info("wrote validation report to %s", os.fspath(report_dir))
    return paths
