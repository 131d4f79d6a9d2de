"""``bertopt compare OLD.json NEW.json``: two bench reports side by side, and a CI regression gate.

Artifacts are matched by name (the name bench gave each run), shapes by (batch, seq), real-length
batches by batch size. Latency compares p50; a regression is ``new / old - 1`` of p50 (positive =
slower). Accuracy drops are in points (x100), like ``bench --max-accuracy-drop``.
"""

from __future__ import annotations

import math
from pathlib import Path

from bertopt.errors import BertoptError, QualityGateError

SCHEMA = "bertopt.compare/1"


def parse_percent(value: str | float | None, name: str) -> float | None:
    """'10%' or '10' -> 0.10 (a bare number is a percentage too)."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        v = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        raise BertoptError(f"{name}: expected a percentage like 10%, got '{value}'", hint=f"e.g. {name} 10%") from None
    if not 0 <= v < math.inf:  # also nan
        raise BertoptError(f"{name}: must be a finite percentage >= 0, got '{value}'", hint=f"e.g. {name} 10%")
    return v / 100


def _change(old: float, new: float) -> float:
    return round(new / old - 1, 4) if old else 0.0


def compare_reports(old: dict, new: dict, *, max_latency_regression: float | None = None, max_accuracy_drop: float | None = None,
                    old_path: str = "OLD", new_path: str = "NEW") -> dict:
    """Differences per artifact and shape; ``regressions`` lists every threshold crossed."""
    old_runs = {r["name"]: r for r in old["runs"]}
    new_runs = {r["name"]: r for r in new["runs"]}
    common = [n for n in new_runs if n in old_runs]
    if not common:
        raise BertoptError(f"{old_path} and {new_path} have no artifact in common (old: {', '.join(old_runs)}; new: {', '.join(new_runs)})",
                           hint="compare two runs of the same bench command (artifacts are matched by name)")
    notes, regressions, artifacts = [], [], []
    oh, nh = old.get("host") or {}, new.get("host") or {}
    if (oh.get("cpu"), old.get("threads")) != (nh.get("cpu"), new.get("threads")):
        notes.append(f"different machines or threads: old {oh.get('cpu', '?')} x{old.get('threads')}, new {nh.get('cpu', '?')} x{new.get('threads')}")
    for name in common:
        artifacts.append(_compare_run(name, old_runs[name], new_runs[name], max_latency_regression, max_accuracy_drop, regressions))
    if not any(a["shapes"] or a["real"] or a["fidelity"] or a["accuracy"] for a in artifacts):
        raise BertoptError(f"{old_path} and {new_path}: no shape or quality measured in both", hint="compare runs of the same --batch/--seq grid")
    if max_accuracy_drop is not None and not any(a["accuracy"] for a in artifacts):
        notes.append("--max-accuracy-drop given but neither report has accuracy for the same artifact (bench --eval)")
    return {"schema": SCHEMA, "old": str(old_path), "new": str(new_path),
            "thresholds": {"max_latency_regression": max_latency_regression, "max_accuracy_drop": max_accuracy_drop},
            "only_old": [n for n in old_runs if n not in new_runs], "only_new": [n for n in new_runs if n not in old_runs],
            "notes": notes, "artifacts": artifacts, "regressions": regressions, "passed": not regressions}


def run_compare(old: str | Path, new: str | Path, *, max_latency_regression: str | float | None = None,
                max_accuracy_drop: float | None = None) -> dict:
    from bertopt.bench.report import load_report

    if max_accuracy_drop is not None and not 0 <= max_accuracy_drop < math.inf:
        raise BertoptError(f"--max-accuracy-drop: must be a finite number of points >= 0, got {max_accuracy_drop}",
                           hint="e.g. --max-accuracy-drop 0.5")
    latency = parse_percent(max_latency_regression, "--max-latency-regression")
    a, b = load_report(old), load_report(new)
    return compare_reports(a, b, max_latency_regression=latency, max_accuracy_drop=max_accuracy_drop, old_path=str(old), new_path=str(new))


def raise_if_regressed(result: dict) -> None:
    if not result["passed"]:
        raise QualityGateError("regression: " + "; ".join(result["regressions"]),
                               hint="a slower/less accurate NEW report; rerun to rule out noise, or loosen the thresholds")


def render(result: dict) -> None:
    from rich.table import Table

    from bertopt.ui import stdout

    t = Table(title=f"bertopt compare  {result['old']} -> {result['new']}", title_justify="left")
    for col in ("artifact", "shape", "p50 old ms", "p50 new ms", "change", "seq/s old", "seq/s new", ""):
        t.add_column(col, justify="left" if col in ("artifact", "shape", "") else "right")
    for a in result["artifacts"]:
        for r in a["shapes"]:
            t.add_row(a["name"], f"{r['batch']}x{r['seq']}", f"{r['p50_old']:.2f}", f"{r['p50_new']:.2f}", f"{r['latency_change']:+.1%}",
                      f"{r['throughput_old']:.1f}", f"{r['throughput_new']:.1f}", "REGRESSED" if r["regressed"] else "")
        for r in a["real"]:
            t.add_row(a["name"], f"real b={r['batch']}", "", "", f"{r['latency_change']:+.1%}",
                      f"{r['sequences_per_s_old']:.1f}", f"{r['sequences_per_s_new']:.1f}", "REGRESSED" if r["regressed"] else "")
    stdout.print(t)
    if any(a["fidelity"] or a["accuracy"] for a in result["artifacts"]):
        q = Table(title="quality", title_justify="left")
        for col in ("artifact", "cosine min old", "cosine min new", "accuracy old", "accuracy new", "drop (points)", ""):
            q.add_column(col, justify="left" if col in ("artifact", "") else "right")
        for a in result["artifacts"]:
            f, acc = a["fidelity"] or {}, a["accuracy"] or {}
            q.add_row(a["name"], _f(f.get("cosine_min_old")), _f(f.get("cosine_min_new")), _f(acc.get("old")), _f(acc.get("new")),
                      "" if not acc else f"{acc['drop_points']:.2f}", "REGRESSED" if acc.get("regressed") else "")
        stdout.print(q)
    for n in result["notes"]:
        stdout.print(f"note: {n}", markup=False)
    for key, label in (("only_old", "only in old"), ("only_new", "only in new")):
        if result[key]:
            stdout.print(f"{label}: {', '.join(result[key])}", markup=False)
    if result["passed"]:
        stdout.print("compare: no threshold crossed" if any(result["thresholds"].values()) else "compare: no thresholds given", markup=False)


def _f(v) -> str:
    return "" if v is None else f"{v:.5f}"


def _compare_run(name: str, o: dict, n: dict, max_latency_regression: float | None, max_accuracy_drop: float | None,
                 regressions: list[str]) -> dict:
    """One artifact's differences (shapes, real-length batches, fidelity, accuracy); thresholds crossed go to ``regressions``."""
    entry = {"name": name, "changed_artifact": bool(o.get("sha256") and n.get("sha256") and o["sha256"] != n["sha256"]),
             "shapes": [], "real": [], "fidelity": None, "accuracy": None}
    ores = {(x["batch"], x["seq"]): x for x in o.get("results", []) if "latency_ms" in x}
    for x in n.get("results", []):
        y = ores.get((x["batch"], x["seq"]))
        if y is None or "latency_ms" not in x:
            continue
        ch = _change(y["latency_ms"]["p50"], x["latency_ms"]["p50"])
        row = {"batch": x["batch"], "seq": x["seq"], "p50_old": y["latency_ms"]["p50"], "p50_new": x["latency_ms"]["p50"],
               "latency_change": ch, "throughput_old": y["throughput"], "throughput_new": x["throughput"]}
        row["regressed"] = max_latency_regression is not None and ch > max_latency_regression
        if row["regressed"]:
            regressions.append(f"{name} batch={x['batch']} seq={x['seq']}: p50 {y['latency_ms']['p50']:.2f} -> {x['latency_ms']['p50']:.2f} ms "
                               f"(+{ch:.1%} > {max_latency_regression:.0%})")
        entry["shapes"].append(row)
    oreal = {x["batch"]: x for x in o.get("real") or [] if "skipped" not in x}
    for x in n.get("real") or []:
        y = oreal.get(x["batch"])
        if y is None or "skipped" in x:
            continue
        # slower = fewer sequences/s: the latency change of a whole pass
        ch = _change(x["sequences_per_s"], y["sequences_per_s"])
        row = {"batch": x["batch"], "sequences_per_s_old": y["sequences_per_s"], "sequences_per_s_new": x["sequences_per_s"],
               "tokens_per_s_old": y["tokens_per_s"], "tokens_per_s_new": x["tokens_per_s"], "latency_change": ch}
        row["regressed"] = max_latency_regression is not None and ch > max_latency_regression
        if row["regressed"]:
            regressions.append(f"{name} real lengths batch={x['batch']}: {y['sequences_per_s']:.1f} -> {x['sequences_per_s']:.1f} seq/s "
                               f"(+{ch:.1%} time > {max_latency_regression:.0%})")
        entry["real"].append(row)
    of, nf = o.get("fidelity") or {}, n.get("fidelity") or {}
    if of.get("cosine_min") is not None and nf.get("cosine_min") is not None:
        entry["fidelity"] = {"cosine_min_old": of["cosine_min"], "cosine_min_new": nf["cosine_min"],
                             "cosine_mean_old": of.get("cosine_mean"), "cosine_mean_new": nf.get("cosine_mean")}
    oa, na = (o.get("accuracy") or {}).get("value"), (n.get("accuracy") or {}).get("value")
    if oa is not None and na is not None:
        drop = round((oa - na) * 100, 4)
        entry["accuracy"] = {"old": oa, "new": na, "drop_points": drop,
                             "regressed": max_accuracy_drop is not None and drop > max_accuracy_drop}
        if entry["accuracy"]["regressed"]:
            regressions.append(f"{name}: accuracy {oa:.4f} -> {na:.4f} ({drop:.2f} points > {max_accuracy_drop})")
    return entry
