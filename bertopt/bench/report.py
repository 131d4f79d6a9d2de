"""A bench report as one self-contained HTML page: plots (inline SVG, drawn with matplotlib) and tables.

No scripts, no fonts, no network at view time: the page opens from a CI artifact store or an e-mail.
``bench --report DIR`` and ``bertopt report BENCH.json -o DIR`` write ``DIR/index.html``; a bench
artifact folder (``bench --out``, recipe bench steps) carries the same page as ``report.html``.

Plots, one per measure with every artifact on the same axes (a report exists to compare them): latency
(p50) vs batch and throughput vs batch (a line per artifact and sequence length), the real-length
batches of ``--lengths real`` (sequences/s vs batch), and quality (accuracy, else fidelity cosine) vs
latency: the trade-off.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

from bertopt.errors import BertoptError

INDEX = "index.html"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px} th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} .meta{color:#555;font-size:13px}
.plots{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;border:1px solid #eee;padding:6px}
figcaption{font-size:13px;font-weight:600} .pass{color:#1a7f37;font-weight:700} .fail{color:#c62828;font-weight:700}
"""


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog/doctype: inline SVG in HTML


def _figure():
    import matplotlib

    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small files, the page's font
    matplotlib.rcParams["svg.hashsalt"] = "bertopt"  # stable ids: the same report gives the same page
    return Figure


# measure -> (title, y label, the points of one run: [(series label, [(batch, value)])])
def _latency(run: dict) -> list:
    return _per_seq(run, lambda r: r["latency_ms"]["p50"])


def _throughput(run: dict) -> list:
    return _per_seq(run, lambda r: r["throughput"])


def _per_seq(run: dict, value) -> list:
    seqs = sorted({r["seq"] for r in run["results"] if "latency_ms" in r})
    return [(f"seq {s}", sorted((r["batch"], value(r)) for r in run["results"] if r["seq"] == s and "latency_ms" in r)) for s in seqs]


def _real(run: dict) -> list:
    pts = sorted((x["batch"], x["sequences_per_s"]) for x in run.get("real") or [] if "skipped" not in x)
    return [("real lengths", pts)] if pts else []


MEASURES = {
    "latency": ("latency vs batch", "latency p50 (ms / batch)", _latency),
    "throughput": ("throughput vs batch", "throughput (sequences/s)", _throughput),
    "real": ("real-length batches: throughput vs batch", "sequences/s (real token lengths)", _real),
}
MARKERS = ("o", "^", "s", "D", "v")
LINESTYLES = ("-", "--", ":", "-.")


def measure_plot(report: dict, measure: str) -> str | None:
    """One measure of every artifact on one set of axes (a colour per artifact, a marker and line style
    per sequence length); None when no artifact has that measure."""
    title, ylabel, points = MEASURES[measure]
    series = [(run["name"], points(run)) for run in report["runs"]]
    if not any(pts for _, lines in series for _, pts in lines):
        return None
    Figure = _figure()
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.subplots()
    several = len({label for _, lines in series for label, pts in lines if pts}) > 1
    labels = sorted({label for _, lines in series for label, _ in lines}, key=lambda x: (len(x), x))
    for i, (name, lines) in enumerate(series):
        for label, pts in lines:
            if not pts:
                continue
            k = labels.index(label)
            b, v = zip(*pts)
            ax.plot(b, v, color=f"C{i % 10}", marker=MARKERS[k % len(MARKERS)], linestyle=LINESTYLES[k % len(LINESTYLES)],
                    label=f"{name} ({label})" if several else name)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({b for _, lines in series for _, pts in lines for b, _ in pts}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    values = [v for _, lines in series for _, pts in lines for _, v in pts]
    if min(values) > 0 and max(values) / min(values) > 20:  # PyTorch eager next to INT8: a linear axis flattens the fast ones
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: no line hidden behind it
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def tradeoff_points(report: dict) -> tuple[str, str, list[tuple[str, float, float]]]:
    """(quality metric, shape label, [(artifact, p50 ms, quality)]) at the largest shape every artifact ran."""
    runs = report["runs"]
    metric = "accuracy" if any(r.get("accuracy") for r in runs) else "fidelity cosine mean"
    shapes = None
    for r in runs:
        s = {(x["batch"], x["seq"]) for x in r["results"] if "latency_ms" in x}
        shapes = s if shapes is None else shapes & s
    if not shapes:
        return metric, "", []
    b, s = max(shapes, key=lambda bs: (bs[0] * bs[1], bs[0]))
    pts = []
    for r in runs:
        q = (r.get("accuracy") or {}).get("value") if metric == "accuracy" else (r.get("fidelity") or {}).get("cosine_mean")
        lat = next(x["latency_ms"]["p50"] for x in r["results"] if (x["batch"], x["seq"]) == (b, s) and "latency_ms" in x)
        if q is not None:
            pts.append((r["name"], lat, q))
    return metric, f"batch {b}, seq {s}", pts


def tradeoff_plot(report: dict) -> str | None:
    metric, shape, pts = tradeoff_points(report)
    if not pts:
        return None
    Figure = _figure()
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    color = {run["name"]: f"C{i % 10}" for i, run in enumerate(report["runs"])}  # each artifact's colour in the other plots
    for name, lat, q in pts:
        ax.scatter([lat], [q], s=40, color=color[name])
        ax.annotate(name, (lat, q), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"latency p50 (ms, {shape})")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{metric} vs latency (up and left is better)", fontsize=10)
    return _svg(fig)


def _table(headers: list[str], rows: list[list], left: int = 1) -> str:
    e = html.escape
    th = "".join(f'<th class="l">{e(h)}</th>' if i < left else f"<th>{e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{e(str(c))}</td>' if i < left else f"<td>{e(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _f(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def render_html(report: dict) -> str:
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("bertopt.bench/") or not report.get("runs"):
        raise BertoptError("not a bertopt bench report (no 'schema': 'bertopt.bench/N' with runs)", hint="pass the JSON written by `bertopt bench --json`")
    e = html.escape
    runs = report["runs"]
    host = report.get("host") or {}
    versions = report.get("versions") or {}
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bertopt bench report</title><style>{CSS}</style></head><body>",
             "<h1>bertopt bench report</h1>",
             '<p class="meta">' + e(" · ".join(x for x in (
                 f"created {report.get('created', '?')}", f"host {host.get('hostname', '?')}", host.get("cpu", ""),
                 f"threads {report.get('threads')}", f"reference: {report.get('reference')}",
                 ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("bertopt", "onnxruntime", "torch", "tensorrt"))) if x)) + "</p>"]
    parts += _gates_html(report.get("gates"))
    parts.append("<h2>Latency, throughput and quality: every artifact on the same axes</h2><div class='plots'>")
    for measure, svg in [(m, measure_plot(report, m)) for m in MEASURES] + [("tradeoff", tradeoff_plot(report))]:
        if svg:
            parts.append(f'<figure class="plot" data-plot="{measure}">{svg}</figure>')
    parts.append("</div>")
    parts += _tables_html(runs)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _gates_html(g: dict | None) -> list[str]:
    parts: list[str] = []
    if g:
        cls, word = ("pass", "passed") if g["passed"] else ("fail", "FAILED")
        parts.append(f'<p>quality gates: <span class="{cls}">{word}</span></p>')
        parts.append(_table(["artifact", "metric", "value", "threshold", "passed"],
                            [[c["artifact"], c["metric"], c["value"], c["threshold"], "yes" if c["passed"] else "NO"] for c in g["checks"]], left=2))
        for f in g["failures"] if not g["checks"] else []:
            parts.append(f'<p class="fail">{html.escape(f)}</p>')
    return parts


def _tables_html(runs: list[dict]) -> list[str]:
    """The tables under the plots: latency, real-length batches, fidelity and accuracy, the artifacts."""
    parts = ["<h2>Latency</h2>"]
    rows = []
    for run in runs:
        for r in run["results"]:
            if "skipped" in r:
                rows.append([run["name"], run.get("precision", ""), r["batch"], r["seq"], "skipped: " + r["skipped"], "", "", "", ""])
                continue
            lat = r["latency_ms"]
            rows.append([run["name"], run.get("precision", ""), r["batch"], r["seq"], f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
                         f"{r['throughput']:.1f}", _f(r.get("speedup"), ".2f")])
    parts.append(_table(["artifact", "precision", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "seq/s", "speed-up"], rows, left=2))
    if any(r.get("real") for r in runs):
        parts.append("<h2>Real-length batches</h2>")
        rows = []
        for run in runs:
            for x in run.get("real") or []:
                if "skipped" in x:
                    rows.append([run["name"], x["batch"], "skipped: " + x["skipped"], "", "", "", "", ""])
                else:
                    rows.append([run["name"], x["batch"], x["texts"], "yes" if x.get("sorted") else "no", f"{x['padding']:.0%}",
                                 f"{x['sequences_per_s']:.1f}", f"{x['tokens_per_s']:.0f}", f"{x['batch_latency_ms']['p50']:.2f}"])
        parts.append(_table(["artifact", "batch", "texts", "sorted", "padding", "seq/s", "tokens/s", "batch p50 ms"], rows))
    if any(r.get("fidelity") or r.get("accuracy") for r in runs):
        parts.append("<h2>Fidelity and accuracy</h2>")
        rows = []
        for run in runs:
            f, a = run.get("fidelity") or {}, run.get("accuracy") or {}
            rows.append([run["name"], f.get("compared", ""), f.get("n", a.get("n", "")), _f(f.get("cosine_min"), ".5f"), _f(f.get("cosine_mean"), ".5f"),
                         _f(f.get("max_abs_diff"), ".2e"), _f(f.get("top1_agreement"), ".4f"), _f(a.get("value"), ".4f")])
        parts.append(_table(["artifact", "compared", "n", "cosine min", "cosine mean", "max |diff|", "top-1 agree", "accuracy"], rows, left=2))
    parts.append("<h2>Artifacts</h2>")
    parts.append(_table(["artifact", "backend", "precision", "stage", "path", "sha256"],
                        [[r["name"], r.get("backend", ""), r.get("precision", ""), r.get("stage", ""), r.get("path", ""), (r.get("sha256") or "")[:16]] for r in runs],
                        left=6))
    return parts


def write_html(report: dict, path: str | Path) -> Path:
    path = Path(path)
    text = render_html(report)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_report(report: dict, out_dir: str | Path) -> Path:
    """``out_dir/index.html``; ``out_dir`` is created (an existing file there is a user error)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BertoptError(f"{out}: exists and is not a folder", hint="--report/-o takes a folder; the page is written as index.html inside it")
    out.mkdir(parents=True, exist_ok=True)
    return write_html(report, out / INDEX)


def load_report(path: str | Path) -> dict:
    """A bench JSON, with an error naming the file when it is not one."""
    import json

    p = Path(path)
    if p.is_dir() and (p / "report.json").is_file():  # a bench artifact folder
        p = p / "report.json"
    if not p.is_file():
        raise BertoptError(f"{p}: no such file", hint="pass a JSON written by `bertopt bench --json FILE` (or a bench artifact folder)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertoptError(f"{p}: not valid JSON ({e})", hint="pass a JSON written by `bertopt bench --json FILE`") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("bertopt.bench/") or not isinstance(data.get("runs"), list):
        raise BertoptError(f"{p}: not a bertopt bench report (schema {data.get('schema') if isinstance(data, dict) else None!r})",
                           hint="pass a JSON written by `bertopt bench --json FILE` (schema bertopt.bench/1)")
    return data
