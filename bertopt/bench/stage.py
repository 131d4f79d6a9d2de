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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from bertopt.params import Cosine, NonNegativeFloat, NonNegativeInt, PositiveInt, Sizes
from bertopt.errors import BertoptError, QualityGateError

SCHEMA = "bertopt.bench/1"
REPORT_FILE = "report.json"


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_bench(
    input: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    batch: Sizes = [1, 8],  # noqa: B006 - pydantic/typer read these defaults; never mutated
    seq: Sizes = [128],  # noqa: B006
    threads: PositiveInt | None = None,
    warmup: NonNegativeInt = 5,
    iters: PositiveInt = 30,
    repeats: PositiveInt = 3,
    data: str | None = None,
    text_column: str | None = None,
    samples: PositiveInt = 200,
    max_length: PositiveInt = 128,
    eval: str | None = None,  # noqa: A002 - the CLI option is --eval
    label_column: str | None = None,
    eval_samples: PositiveInt | None = None,
    min_cosine: Cosine | None = None,
    max_accuracy_drop: NonNegativeFloat | None = None,
    output: str | None = None,
    json_path: str | Path | None = None,
    force: bool = False,
    verbose: bool = False,
) -> dict:
    """Benchmark ``input`` artifacts; the first is the reference. Returns the report dict."""
    from bertopt.artifacts import describe_input, load_artifact, up_to_date, write_artifact
    from bertopt.data import load_texts
    from bertopt.ui import note, progress, skipped

    if not input:
        raise BertoptError("bench needs at least one artifact", hint="bertopt bench REFERENCE [ARTIFACT ...]")
    for name, values in (("batch", batch), ("seq", seq)):
        if not values or any(int(v) < 1 for v in values):
            raise BertoptError(f"--{name} must be positive integers, got {values}")
    if min(warmup, iters, repeats) < 0 or iters < 1 or repeats < 1:
        raise BertoptError("--iters and --repeats must be at least 1, --warmup at least 0")
    threads = threads or default_threads()
    params = {k: v for k, v in dict(batch=list(batch), seq=list(seq), threads=threads, warmup=warmup, iters=iters, repeats=repeats,
                                    data=data, text_column=text_column, samples=samples, max_length=max_length, eval=eval,
                                    label_column=label_column, eval_samples=eval_samples).items()}
    if output:
        params["output"] = output
    inputs = {f"input{i}": describe_input(_resolve(p)) for i, p in enumerate(input)}
    for extra in ("data", "eval"):
        if params[extra]:
            inputs[extra] = describe_input(_resolve(params[extra]))
    if out is not None and (done := up_to_date(out, "bench", inputs, params, force)) is not None:
        skipped("bench", out)
        report = json.loads((Path(out) / REPORT_FILE).read_text()) | {"cached": True}
        _write_json(report, json_path)
        _gates(report, min_cosine, max_accuracy_drop)
        return report

    fid_texts = load_texts(data, text_column=text_column, limit=samples) if data else None
    ev = load_texts(eval, text_column=text_column, label_column=label_column, limit=eval_samples) if eval else None
    if ev is not None and not label_column:
        raise BertoptError("--eval needs --label-column", hint="name the column that holds the labels")
    if fid_texts is None and ev is not None:
        fid_texts = load_texts(eval, text_column=text_column, limit=samples)
    if fid_texts is not None and samples and len(fid_texts) < samples:
        from bertopt.ui import note

        note(f"bench: {fid_texts.path} has {len(fid_texts)} texts, fewer than --samples {samples}; using all of them")

    from bertopt.bench.measure import accuracy, choose_output, fidelity, latency_sweep, run_texts
    from bertopt.bench.runners import describe, open_runner

    runners = []
    names: set[str] = set()
    for i, p in enumerate(input):
        r = open_runner(p, threads)
        if r.name in names:
            r.name = f"{r.name}#{i}"
        names.add(r.name)
        runners.append(r)
    if output and not any(output in r.outputs for r in runners):
        raise BertoptError(f"--output '{output}': no artifact has such an output",
                           hint="outputs: " + "; ".join(f"{r.name}: {', '.join(r.outputs)}" for r in runners))

    grid = [(int(b), int(s)) for s in seq for b in batch]
    sweep_texts = fid_texts.texts if fid_texts is not None else (ev.texts if ev is not None else None)
    runs = [describe(r) | {"results": [], "fidelity": None, "accuracy": None} for r in runners]
    n_text = (len(fid_texts) if fid_texts else 0) + (len(ev) if ev else 0)
    with progress() as prog:
        t_lat = prog.add_task("bench: latency", total=len(grid) * repeats * len(runners), status="")
        lat = latency_sweep(runners, grid, sweep_texts, warmup, iters, repeats, advance=lambda: prog.advance(t_lat))
        for run, r in zip(runs, runners):
            run["results"] = lat[r.name]
        # every artifact sees the same truncation, so fidelity compares like with like
        max_length = min([max_length] + [r.max_length for r in runners])
        if n_text:
            t_txt = prog.add_task("bench: fidelity/accuracy", total=n_text * len(runners), status="")
            ref_out = ref_choice = None
            for run, r in zip(runs, runners):
                if fid_texts is not None:
                    o = run_texts(r, fid_texts.texts, max_length, advance=lambda n: prog.advance(t_txt, n))
                    choice = choose_output(r, o, output, ref_choice)
                    note(f"bench: {r.name}: comparing output {choice.describe()}")
                    if ref_out is None:
                        ref_out, ref_choice = o, choice
                    run["fidelity"] = fidelity(ref_out, o, ref_choice, choice)
                if ev is not None:
                    o = run_texts(r, ev.texts, max_length, advance=lambda n: prog.advance(t_txt, n))
                    c = choose_output(r, o, output, ref_choice)
                    run["accuracy"] = accuracy(r, o, ev.labels, c.name) if c.kind == "logits" else None
    for run in runs:
        for res in run["results"]:
            if "skipped" in res:
                note(f"bench: {run['name']} skips batch={res['batch']} seq={res['seq']}: {res['skipped']}")
    report = {"schema": SCHEMA, "threads": threads, "grid": {"batch": list(batch), "seq": list(seq)},
              "reference": runners[0].name, "params": params, "runs": runs}

    if out is not None:
        with write_artifact(out, "bench", inputs, params) as w:
            path = w.add_output("report", REPORT_FILE)
            path.write_text(json.dumps(report, indent=2) + "\n")
            w.metrics = {"runs": len(runs)}
    _write_json(report, json_path)
    _gates(report, min_cosine, max_accuracy_drop)
    return report


def _resolve(p) -> Path:
    from bertopt.paths import resolve_path

    return resolve_path(p)


def _write_json(report: dict, json_path) -> None:
    if json_path is None:
        return
    text = json.dumps(report, indent=2) + "\n"
    if str(json_path) == "-":
        print(text, end="")
        return
    p = Path(json_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def _gates(report: dict, min_cosine: float | None, max_accuracy_drop: float | None) -> None:
    """Quality gates: exit code 3 when an artifact's fidelity/accuracy is outside the budget."""
    failures = []
    ref_acc = (report["runs"][0].get("accuracy") or {}).get("value")
    for run in report["runs"][1:]:
        fid = run.get("fidelity") or {}
        if min_cosine is not None and fid.get("cosine_min") is not None and fid["cosine_min"] < min_cosine:
            failures.append(f"{run['name']}: cosine_min {fid['cosine_min']:.4f} < {min_cosine}")
        acc = (run.get("accuracy") or {}).get("value")
        if max_accuracy_drop is not None and acc is not None and ref_acc is not None and (ref_acc - acc) * 100 > max_accuracy_drop:
            failures.append(f"{run['name']}: accuracy {acc:.4f} is {(ref_acc - acc) * 100:.2f} points below the reference {ref_acc:.4f}")
    if (min_cosine is not None or max_accuracy_drop is not None) and not any(
        (r.get("fidelity") or r.get("accuracy")) for r in report["runs"][1:]
    ):
        failures.append("a quality gate was set but no fidelity/accuracy was measured")
    if failures:
        raise QualityGateError("quality gate failed: " + "; ".join(failures), hint="pass --data/--eval, loosen the budget, or keep more layers in float")


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


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)
