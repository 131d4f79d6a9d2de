"""``bertopt bench``: latency/throughput sweeps, fidelity and task accuracy against the first artifact.

The JSON report (``--json``) has a stable schema, ``bertopt.bench/1``:

    {"schema": "bertopt.bench/1", "threads": 2, "grid": {"batch": [1, 8], "seq": [128]},
     "reference": "<name of the first artifact>",
     "runs": [{"name", "path", "backend", "precision", "stage", "task",
               "results": [{"batch", "seq", "latency_ms": {"p50", "p90", "p99", "mean"},
                            "throughput", "speedup", "pass_medians_ms", "calls"}
                           | {"batch", "seq", "skipped": "<why>"}],   # e.g. outside a TensorRT engine's profiles
               "fidelity": {"cosine_min", "cosine_mean", "max_abs_diff", "top1_agreement", "n", "compared"} | null,
               "accuracy": {"value", "n"} | null}]}

``speedup`` and ``fidelity`` are relative to the first artifact (the reference). A report that a
recipe re-used because nothing changed carries ``"cached": true``.

Fields added within /1 (older reports lack them; nothing above changed meaning):

    "bertopt_version", "created" (UTC, ISO 8601), "versions": {"bertopt", "onnxruntime", "torch", "tensorrt", ...},
    "host": {"hostname", "cpu", "logical_cores", "platform", "python"},
    "units": {"latency_ms": ..., "throughput": "sequences/s", ...},
    "runs": [{..., "sha256": <the input's identity, as stage manifests record it>, "model_sha256": <its model file's> | null,
              "real": [{"batch", "sorted", "texts", "tokens", "padded_tokens", "padding", "seconds",
                        "sequences_per_s", "tokens_per_s", "batch_latency_ms": {"p50", "p90", "p99"}, "pass_seconds"}
                       | {"batch", "skipped"}] | null}],          # --lengths real
    "runs": [{..., "quality": {"k", "neighbours": {"agreement", "n"}, "knn": {"accuracy", "n", "relative"},
                               "retrieval": {"n", "recall@1", "recall@10", "mrr", "relative": {...}}} | null}],
              # embedding models (bench.tasks): neighbours kept vs the reference on --data, k-NN accuracy
              # with --label-column, retrieval with --pairs; "relative" = fraction of the reference's score
    "gates": {"min_cosine", "max_accuracy_drop", "checks": [{"artifact", "metric", "value", "threshold", "passed"}],
              "failures": [...], "passed"} | null                  # null when no gate was set

A failed gate (exit 3) still writes the report (``--json``, ``--out``), with ``"gates": {"passed": false}``;
a rerun re-checks the gates on the cached numbers and fails again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from bertopt.bench.options import BenchOptions
from bertopt.errors import BertoptError, QualityGateError

SCHEMA = "bertopt.bench/1"
REPORT_FILE = "report.json"
HTML_FILE = "report.html"
UNITS = {
    "latency_ms": "milliseconds per call (one batch of batch x seq)",
    "throughput": "sequences/s at p50 latency",
    "speedup": "reference p50 / this p50",
    "real.sequences_per_s": "texts/s over the whole pass",
    "real.tokens_per_s": "non-padding tokens/s over the whole pass",
    "accuracy.value": "fraction correct (drops are in points: x100)",
}


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_bench(input: Sequence[str | Path], out: str | Path | None = None, options: BenchOptions | None = None, *,
              json_path: str | Path | None = None, force: bool = False, **kwargs: Any) -> dict:
    """Benchmark ``input`` artifacts; the first is the reference. Returns the report dict.

    The options are a :class:`~bertopt.bench.options.BenchOptions` (``options=``) or its fields as
    keywords (``run_bench([a, b], batch=[1], seq=[128])``); ``json_path``: also write the report there
    (``-``: stdout)."""
    from bertopt.artifacts import describe_input, up_to_date
    from bertopt.bench.runners import describe
    from bertopt.ui import note, skipped

    o = BenchOptions.of(options, kwargs)
    if not input:
        raise BertoptError("bench needs at least one artifact", hint="bertopt bench REFERENCE [ARTIFACT ...]")
    threads = o.threads or default_threads()
    params = o.params(threads=threads)
    inputs = {f"input{i}": describe_input(_resolve(p)) for i, p in enumerate(input)}
    for extra in ("data", "eval", "pairs"):
        if params.get(extra):
            inputs[extra] = describe_input(_resolve(params[extra]))
    if out is not None and up_to_date(out, "bench", inputs, params, force) is not None:
        skipped("bench", out)
        report = json.loads((Path(out) / REPORT_FILE).read_text()) | {"cached": True}
        # the gates are re-checked on the cached numbers: a failed gate fails again, never "up to date"
        report["gates"] = gate_verdict(report, o.min_cosine, o.max_accuracy_drop)
        _write_json(report, json_path)
        _raise_if_failed(report)
        return report

    from bertopt.bench import tasks
    from bertopt.bench.memory import check_grid_fits

    check_grid_fits([_resolve(p) for p in input], [int(b) for b in o.batch], [int(s) for s in o.seq])
    fid_texts, ev = _texts(o.data, o.eval, o.text_column, o.label_column, o.samples, o.eval_samples)
    pairs = tasks.load_pairs(o)
    tasks.check_k(o, fid_texts, tasks.labelled_texts(fid_texts, ev))
    runners = _open_runners(input, threads, o.output, o.seq)
    runs = [describe(r) | {"sha256": inputs[f"input{i}"]["sha256"], "model_sha256": _model_sha256(r.path), "results": [],
                           "fidelity": None, "accuracy": None, "quality": None} for i, r in enumerate(runners)]
    _measure(runners, runs, fid_texts, ev, pairs, o)
    if o.concurrency > 1:
        _concurrent(runners, runs, fid_texts or ev, o, threads)
    for r, run in zip(runners, runs):
        if r.short_calls:  # how the calls were routed (session.json's short_calls): warm-up and every timed call
            run["short_calls"] = {"max_tokens": r.short_calls["max_tokens"], "calls": dict(r.short_calls["calls"])}
            c = run["short_calls"]["calls"]
            note(f"bench: {r.name}: {c['short']} calls of at most {r.short_calls['max_tokens']} tokens ran on its 1-thread session, "
                 f"{c['long']} on the {threads or 'default'}-thread one (session.json short_calls)")
    for run in runs:
        for res in run["results"]:
            if "skipped" in res:
                note(f"bench: {run['name']} skips batch={res['batch']} seq={res['seq']}: {res['skipped']}")
    report = {"schema": SCHEMA, "bertopt_version": _version(), "created": _now(), "threads": threads,
              "grid": {"batch": list(o.batch), "seq": list(o.seq)}, "reference": runners[0].name, "params": params,
              "versions": _versions(), "host": host_info(), "units": UNITS, "runs": runs}
    report["gates"] = gate_verdict(report, o.min_cosine, o.max_accuracy_drop)
    if out is not None:
        _write_report(out, inputs, params, report)
    _write_json(report, json_path)
    _raise_if_failed(report)
    return report


def _texts(data, eval, text_column, label_column, samples, eval_samples):  # noqa: A002
    """(texts for the fidelity check, labelled texts for accuracy), either None."""
    from bertopt.data import load_texts
    from bertopt.ui import note

    # without --eval, --label-column labels --data (k-NN accuracy of embedding models)
    fid_texts = load_texts(data, text_column=text_column, label_column=None if eval else label_column, limit=samples) if data else None
    ev = load_texts(eval, text_column=text_column, label_column=label_column, limit=eval_samples) if eval else None
    if ev is not None and not label_column:
        raise BertoptError("--eval needs --label-column", hint="name the column that holds the labels")
    if fid_texts is None and ev is not None:
        fid_texts = load_texts(eval, text_column=text_column, limit=samples)
    if fid_texts is not None and samples and len(fid_texts) < samples:
        note(f"bench: {fid_texts.path} has {len(fid_texts)} texts, fewer than --samples {samples}; using all of them")
    return fid_texts, ev


def _open_runners(input, threads: int, output: str | None, seq) -> list:  # noqa: A002
    """One runner per artifact (unique names), checked against ``--output`` and the sequence lengths."""
    from bertopt.bench.runners import open_runner

    runners = []
    names: set[str] = set()
    for i, p in enumerate(input):
        r = open_runner(p, threads, spinning=len(input) == 1)  # interleaved sessions: spinning off
        if r.name in names:
            r.name = f"{r.name}#{i}"
        names.add(r.name)
        runners.append(r)
    if output and not any(output in r.outputs for r in runners):
        raise BertoptError(f"--output '{output}': no artifact has such an output",
                           hint="outputs: " + "; ".join(f"{r.name}: {', '.join(r.outputs)}" for r in runners))
    _check_seq(runners, seq)
    return runners


def _measure(runners, runs, fid_texts, ev, pairs, o: BenchOptions) -> None:
    """Latency over the grid (and real-length batches), then fidelity, accuracy and the embedding tasks, into ``runs``."""
    from bertopt.bench.measure import latency_sweep
    from bertopt.ui import progress

    grid = [(int(b), int(s)) for s in o.seq for b in o.batch]
    sweep_texts = fid_texts.texts if fid_texts is not None else (ev.texts if ev is not None else None)
    with progress() as prog:
        t_lat = prog.add_task("bench: latency", total=len(grid) * o.repeats * len(runners), status="")
        lat = latency_sweep(runners, grid, sweep_texts, o.warmup, o.iters, o.repeats, advance=lambda: prog.advance(t_lat))
        for run, r in zip(runs, runners):
            run["results"] = lat[r.name]
        if o.lengths == "real":
            from bertopt.bench.traffic import real_traffic

            texts = fid_texts.texts if fid_texts is not None else ev.texts
            t_real = prog.add_task("bench: real-length batches", total=len(o.batch) * o.repeats * len(runners), status="")
            real = real_traffic(runners, texts, [int(b) for b in o.batch], min([o.max_length] + [r.max_length for r in runners]),
                                sort=o.sort, warmup=min(o.warmup, 2), repeats=o.repeats, advance=lambda: prog.advance(t_real))
            for run, r in zip(runs, runners):
                run["real"] = real[r.name]
        _measure_texts(runners, runs, fid_texts, ev, pairs, o, prog)


def _measure_texts(runners, runs, fid_texts, ev, pairs, o: BenchOptions, prog) -> None:
    """Fidelity and accuracy on the texts, then the held-out embedding tasks (``bench.tasks``)."""
    from bertopt.bench import tasks
    from bertopt.bench.measure import accuracy, fidelity, pooled, run_texts
    from bertopt.outputs import choose_for_arrays
    from bertopt.ui import note

    # every artifact sees the same truncation, so fidelity compares like with like
    max_length = min([o.max_length] + [r.max_length for r in runners])
    n_text = (len(fid_texts) if fid_texts else 0) + (len(ev) if ev else 0) + (2 * len(pairs) if pairs else 0)
    if not n_text:
        return
    t_txt = prog.add_task("bench: fidelity/accuracy", total=n_text * len(runners), status="")
    ref_out = ref_choice = None
    vecs = []
    for run, r in zip(runs, runners):
        v = {"choice": None}
        if fid_texts is not None:
            out = run_texts(r, fid_texts.texts, max_length, advance=lambda n: prog.advance(t_txt, n))
            choice = choose_for_arrays(out, r.task, o.output, ref_choice, where=str(r.path))
            note(f"bench: {r.name}: comparing output {choice.describe()}")
            if ref_out is None:
                ref_out, ref_choice = out, choice
            run["fidelity"] = fidelity(ref_out, out, ref_choice, choice)
            v = {"choice": choice, "data": pooled(out, choice)[1]}
            if ev is None and fid_texts.labels is not None:
                v["eval"] = v["data"]
        if ev is not None:
            out = run_texts(r, ev.texts, max_length, advance=lambda n: prog.advance(t_txt, n))
            c = choose_for_arrays(out, r.task, o.output, ref_choice, where=str(r.path))
            run["accuracy"] = accuracy(r, out, ev.labels, c.name) if c.kind == "logits" else None
            v = v | {"choice": v["choice"] or c, "eval": pooled(out, c)[1]}
        vecs.append(v)
    if vecs[0]["choice"] is None and pairs is not None:  # pairs alone: the reference's output choice from its queries
        for v, r in zip(vecs, runners):
            out = run_texts(r, pairs.queries[:2], max_length)
            v["choice"] = choose_for_arrays(out, r.task, o.output, vecs[0]["choice"], where=str(r.path))
    tasks.add_quality(runners, runs, vecs, tasks.labelled_texts(fid_texts, ev), pairs, o, max_length,
                      advance=lambda n: prog.advance(t_txt, n))


def _concurrent(runners, runs, texts, o: BenchOptions, threads: int) -> None:
    from bertopt.bench.traffic import concurrent_traffic
    from bertopt.ui import console

    with console.status(f"bench: {o.concurrency} callers at once"):
        got = concurrent_traffic(runners, texts.texts, [int(b) for b in o.batch], min([o.max_length] + [r.max_length for r in runners]),
                                 callers=o.concurrency, threads=threads, repeats=o.repeats, single={r["name"]: r.get("real") or [] for r in runs})
    for run in runs:
        run["concurrent"] = got.get(run["name"])


def _write_report(out, inputs: dict, params: dict, report: dict) -> None:
    """The bench artifact: report.json, report.html and the manifest."""
    from bertopt.artifacts import write_artifact
    from bertopt.bench.report import write_html

    with write_artifact(out, "bench", inputs, params) as w:
        path = w.add_output("report", REPORT_FILE)
        path.write_text(json.dumps(report, indent=2) + "\n")
        write_html(report, w.add_output("html", HTML_FILE))
        w.metrics = {"runs": len(report["runs"])} | ({"gates_passed": report["gates"]["passed"]} if report["gates"] else {})


def _model_sha256(path: Path) -> str | None:
    """sha256 of the model file an artifact's manifest lists (a bare .onnx: of the file); None for HF folders."""
    from bertopt.artifacts import MANIFEST, read_manifest, sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if not (p / MANIFEST).is_file():
        return None
    entry = read_manifest(p / MANIFEST).get("outputs", {}).get("model")
    return entry.get("sha256") if isinstance(entry, dict) else None


def _check_seq(runners, seq) -> None:
    """--seq beyond a model's position embeddings: a user error before any timing (a TensorRT engine's
    profiles are handled per shape: bench skips what they do not cover)."""
    for r in runners:
        if r.refuses is None and max(seq) > r.max_length:
            raise BertoptError(f"--seq {max(seq)} is beyond what {r.name} takes ({r.max_length} positions)",
                               hint=f"use --seq values of at most {r.max_length}")


def _version() -> str:
    from bertopt import __version__

    return __version__


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict:
    from bertopt.artifacts import tool_versions

    return tool_versions()


def host_info() -> dict:
    import platform
    import socket
    import sys

    from bertopt.backends.onnxruntime import cpu_name

    return {"hostname": socket.gethostname(), "cpu": cpu_name(), "logical_cores": os.cpu_count(),
            "allowed_cores": default_threads(), "platform": platform.platform(), "python": sys.version.split()[0]}


def _resolve(p) -> Path:
    from bertopt.paths import resolve_path

    return resolve_path(p)


def _write_json(report: dict, json_path) -> None:
    from bertopt.ui import write_json

    # a failed gate's verdict is in the file, but the file must not satisfy a Makefile target
    write_json(report, json_path, stale=(report.get("gates") or {}).get("passed") is False)


def gate_verdict(report: dict, min_cosine: float | None, max_accuracy_drop: float | None) -> dict | None:
    """The quality gates' verdict: each check's value, threshold and outcome; None when no gate was set."""
    if min_cosine is None and max_accuracy_drop is None:
        return None
    checks, failures = [], []
    ref_acc = (report["runs"][0].get("accuracy") or {}).get("value")
    for run in report["runs"][1:]:
        fid = run.get("fidelity") or {}
        if min_cosine is not None and fid.get("cosine_min") is not None:
            ok = fid["cosine_min"] >= min_cosine
            checks.append({"artifact": run["name"], "metric": "cosine_min", "value": fid["cosine_min"], "threshold": min_cosine, "passed": ok})
            if not ok:
                failures.append(f"{run['name']}: cosine_min {fid['cosine_min']:.4f} < {min_cosine}")
        acc = (run.get("accuracy") or {}).get("value")
        if max_accuracy_drop is not None and acc is not None and ref_acc is not None:
            drop = round((ref_acc - acc) * 100, 4)
            ok = drop <= max_accuracy_drop
            checks.append({"artifact": run["name"], "metric": "accuracy_drop_points", "value": drop, "threshold": max_accuracy_drop, "passed": ok})
            if not ok:
                failures.append(f"{run['name']}: accuracy {acc:.4f} is {drop:.2f} points below the reference {ref_acc:.4f}")
    if not checks:
        failures.append("a quality gate was set but no fidelity/accuracy was measured")
    return {"min_cosine": min_cosine, "max_accuracy_drop": max_accuracy_drop, "checks": checks, "failures": failures, "passed": not failures}


def _raise_if_failed(report: dict) -> None:
    """Exit code 3 when the verdict says so; the error carries the report so the CLI prints the tables first."""
    g = report.get("gates")
    if g and not g["passed"]:
        again = f" (numbers cached from {report.get('created', 'an earlier run')}; --force re-measures)" if report.get("cached") else ""
        err = QualityGateError("quality gate failed" + again + ": " + "; ".join(g["failures"]),
                               hint="pass --data/--eval, loosen the budget, or keep more layers in float")
        err.report = report
        raise err


def render(report: dict) -> None:
    """The report as rich tables on stdout: latency per shape, then fidelity/accuracy."""
    from rich.table import Table

    from bertopt.ui import stdout

    t = Table(title=f"bertopt bench  (threads={report['threads']}, reference={report['reference']})", title_justify="left")
    for col in ("artifact", "backend", "precision", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "seq/s", "speed-up"):
        t.add_column(col, justify="right" if col not in ("artifact", "backend", "precision") else "left")
    for run in report["runs"]:
        for res in run["results"]:
            if "skipped" in res:
                t.add_row(run["name"], run["backend"], run["precision"], str(res["batch"]), str(res["seq"]), "skipped", "", "", "", "")
                continue
            lat = res["latency_ms"]
            t.add_row(run["name"], run["backend"], run["precision"], str(res["batch"]), str(res["seq"]),
                      f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{res['throughput']:.1f}",
                      f"{res['speedup']:.2f}x" if "speedup" in res else "")
    stdout.print(t)
    if any(r.get("fidelity") or r.get("accuracy") for r in report["runs"]):
        q = Table(title="fidelity vs reference / task accuracy", title_justify="left")
        for col in ("artifact", "compared", "n", "cosine min", "cosine mean", "max |diff|", "top-1 agree", "accuracy"):
            q.add_column(col, justify="left" if col in ("artifact", "compared") else "right")
        for run in report["runs"]:
            f = run.get("fidelity") or {}
            a = run.get("accuracy") or {}
            q.add_row(run["name"], str(f.get("compared", "")), str(f.get("n", a.get("n", ""))),
                      _fmt(f.get("cosine_min"), ".5f"), _fmt(f.get("cosine_mean"), ".5f"), _fmt(f.get("max_abs_diff"), ".2e"),
                      _fmt(f.get("top1_agreement"), ".4f"), _fmt(a.get("value"), ".4f"))
        stdout.print(q)
    from bertopt.bench.tasks import render as render_tasks

    render_tasks(report)
    if any(r.get("real") for r in report["runs"]):
        rt = Table(title="real-length batches (padded per batch" + (", length-sorted)" if report["params"].get("sort") else ")"),
                   title_justify="left")
        for col in ("artifact", "precision", "batch", "texts", "padding", "seq/s", "tokens/s", "batch p50 ms", "batch p99 ms", "speed-up"):
            rt.add_column(col, justify="left" if col in ("artifact", "precision") else "right")
        ref = {x["batch"]: x for x in report["runs"][0].get("real") or [] if "skipped" not in x}
        for run in report["runs"]:
            for x in run.get("real") or []:
                if "skipped" in x:
                    rt.add_row(run["name"], run["precision"], str(x["batch"]), "skipped", "", "", "", "", "", "")
                    continue
                base = ref.get(x["batch"])
                rt.add_row(run["name"], run["precision"], str(x["batch"]), str(x["texts"]), f"{x['padding']:.0%}",
                           f"{x['sequences_per_s']:.1f}", f"{x['tokens_per_s']:.0f}", f"{x['batch_latency_ms']['p50']:.2f}",
                           f"{x['batch_latency_ms']['p99']:.2f}", f"{x['sequences_per_s'] / base['sequences_per_s']:.2f}x" if base else "")
        stdout.print(rt)
    if any(r.get("concurrent") for r in report["runs"]):
        _render_concurrent(report)
    g = report.get("gates")
    if g:
        verdict = "[bold green]passed[/]" if g["passed"] else "[bold red]FAILED[/]"
        stdout.print(f"quality gates: {verdict}" + "".join(
            f"\n  {'ok  ' if c['passed'] else 'FAIL'} {c['artifact']}: {c['metric']} {c['value']} (limit {c['threshold']})" for c in g["checks"])
            + "".join(f"\n  FAIL {f}" for f in g["failures"] if not g["checks"]))


def _render_concurrent(report: dict) -> None:
    from rich.table import Table

    from bertopt.ui import stdout

    ct = Table(title=f"real-length batches served by {report['params'].get('concurrency')} callers at once", title_justify="left")
    for col in ("artifact", "batch", "callers x threads", "seq/s", "one caller seq/s", "vs one caller"):
        ct.add_column(col, justify="left" if col == "artifact" else "right")
    for run in report["runs"]:
        for x in run.get("concurrent") or []:
            if "skipped" in x:
                ct.add_row(run["name"], str(x["batch"]), "skipped", "", "", "")
                continue
            ct.add_row(run["name"], str(x["batch"]), f"{x['callers']} x {x['threads_per_caller']}", f"{x['sequences_per_s']:.1f}",
                       _fmt(x.get("single_caller_sequences_per_s"), ".1f"), _fmt(x.get("speedup_vs_single"), ".2f") + ("x" if x.get("speedup_vs_single") else ""))
    stdout.print(ct)


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)
