"""``run_build(backend="auto")``: build the input for ONNX Runtime and for OpenVINO, time both on the user's
traffic (``--data``'s texts at their real lengths, in the ``--batch`` sizes, interleaved in one process),
keep the faster. The artifact is the winner's, with both timings and the choice in ``manifest["build"]["auto"]``.
OpenVINO failing to build (not installed, compile refused on this host) leaves ONNX Runtime, with a note.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from bertopt.artifacts import MANIFEST, Artifact, load_artifact, up_to_date, write_artifact
from bertopt.backends.options import BuildOptions
from bertopt.errors import BertoptError
from bertopt.ui import note, skipped

CANDIDATES = ("onnxruntime", "openvino")
TEXTS = 128  # texts of --data timed per batch size
REPEATS = 3


def build_stage(art: Artifact, src: Path, out: Path, o: BuildOptions, data_path: Path, *, force: bool) -> Artifact:
    from bertopt.backends.stage import builder, stage_inputs

    inputs = stage_inputs(art, src, data_path)
    params = o.params(backend="auto")
    if (done := up_to_date(out, "build", inputs, params, force)) is not None:
        skipped("build", out)
        return done
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.auto-", dir=out.parent))
    try:
        built, notes = {}, []
        for backend in CANDIDATES:
            sub = BuildOptions.parse(_candidate_options(o, backend))
            try:
                built[backend] = builder(backend)(art, src, work / backend, sub, data_path, force=True)
            except BertoptError as e:
                if backend == "onnxruntime":
                    raise
                notes.append(f"{backend} did not build ({e.message}); kept onnxruntime")
                note(f"build: auto: {notes[-1]}")
        timing = _time(built, data_path, o) if len(built) > 1 else {}
        choice = _choose(timing) if timing else "onnxruntime"
        with write_artifact(out, "build", inputs, params) as w:
            _take(w, built[choice].path)
            w.extra["build"]["auto"] = {"candidates": list(built), "chosen": choice, "timings": timing, "notes": notes,
                                        "texts": str(data_path), "batch": list(o.batch)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(out, choice, timing, notes)
    return load_artifact(out)


def _candidate_options(o: BuildOptions, backend: str) -> dict:
    keep = {"precision", "threads", "data", "text_column", "strict"}
    keep |= {"tune"} if backend == "onnxruntime" else {"shapes", "inference_precision"}
    return {"backend": backend} | {k: getattr(o, k) for k in keep}


def _time(built: dict[str, Artifact], data_path: Path, o: BuildOptions) -> dict:
    """Per batch size and backend, sequences/s over the same real texts (padded per batch), passes interleaved."""
    from bertopt.bench.runners import open_runner
    from bertopt.bench.traffic import real_traffic
    from bertopt.data import load_texts

    texts = load_texts(data_path, text_column=o.text_column, limit=TEXTS).texts
    runners = [open_runner(a.path, o.threads, name=b, spinning=False) for b, a in built.items()]
    max_length = min(r.max_length for r in runners)
    real = real_traffic(runners, texts, list(o.batch), max_length, sort=False, warmup=2, repeats=REPEATS)
    return {name: {str(x["batch"]): {"sequences_per_s": x["sequences_per_s"], "batch_latency_ms_p50": x["batch_latency_ms"]["p50"]}
                   for x in rows if "skipped" not in x} for name, rows in real.items()}


def _choose(timing: dict) -> str:
    """The backend with the highest geometric mean of sequences/s over the batch sizes."""
    def score(rows: dict) -> float:
        return math.exp(sum(math.log(r["sequences_per_s"]) for r in rows.values()) / max(len(rows), 1)) if rows else 0.0

    return max(timing, key=lambda b: score(timing[b]))


def _take(w, src: Path) -> None:
    """Move the winning artifact's files into the artifact being written, with its outputs, model facts and build record."""
    import json

    m = json.loads((src / MANIFEST).read_text())
    for p in src.iterdir():
        if p.name != MANIFEST:
            shutil.move(str(p), str(w.dir / p.name))
    for key, entry in m.get("outputs", {}).items():
        w.add_output(key, entry["path"] if isinstance(entry, dict) else entry)
    w.model = dict(m.get("model") or {})
    w.metrics.update(m.get("metrics") or {})
    w.timings.update({f"{m.get('build', {}).get('backend')}_{k}": v for k, v in (m.get("timings") or {}).items() if k != "total"})
    w.extra["build"] = dict(m.get("build") or {})


def _report(out: Path, choice: str, timing: dict, notes: list[str]) -> None:
    if timing:
        from rich.table import Table

        from bertopt.ui import console

        batches = sorted({b for rows in timing.values() for b in rows}, key=int)
        t = Table(title="build --backend auto: real-length traffic, sequences/s (interleaved)")
        t.add_column("backend")
        for b in batches:
            t.add_column(f"batch {b}", justify="right")
        for name, rows in timing.items():
            t.add_row(name + (" (chosen)" if name == choice else ""), *(f"{rows[b]['sequences_per_s']:.1f}" if b in rows else "-" for b in batches))
        console.print(t)
    note(f"build: auto: kept {choice} -> {out}" + (f" ({'; '.join(notes)})" if notes else ""))
