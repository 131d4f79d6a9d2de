"""Benchmark artifacts side by side: latency/throughput sweeps, fidelity and accuracy vs the first one.

The first ARTIFACT is the reference (a Hugging Face folder runs on PyTorch eager; an ONNX artifact or
.onnx on ONNX Runtime CPU; a TensorRT engine artifact on TensorRT). Runs are interleaved so that a
noisy machine's drift hits every artifact alike. Exit code 3 when --min-cosine/--max-accuracy-drop fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from bertopt.cli.options import Force, JsonOut, Quiet, Verbose, parse_int_list

PANELS = {
    "Shapes and timing": ["batch", "seq", "lengths", "sort", "threads", "warmup", "iters", "repeats"],
    "Data": ["data", "text_column", "samples", "max_length", "eval", "label_column", "eval_samples"],
    "Quality gates": ["output", "min_cosine", "max_accuracy_drop"],
    "Output and logging": ["report"],
}


def command(
    artifacts: Annotated[List[str], typer.Argument(help="Artifacts to run; the first is the reference.")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    seq: Annotated[str, typer.Option(help="Sequence lengths, comma-separated.")] = "128",
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="Intra-op threads (default: all cores).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls per artifact and shape.")] = 5,
    iters: Annotated[int, typer.Option(min=1, help="Timed calls per pass.")] = 30,
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved passes per shape.")] = 3,
    data: Annotated[Optional[str], typer.Option(help="Real text for inputs and fidelity: .txt, .csv, .tsv, .jsonl.")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data/--eval (csv/tsv/jsonl).")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Texts of --data used for fidelity.")] = 200,
    max_length: Annotated[int, typer.Option(min=8, help="Truncation length for fidelity/accuracy texts.")] = 128,
    eval: Annotated[Optional[str], typer.Option("--eval", help="Labeled data for task accuracy (with --label-column).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of --eval.")] = None,
    eval_samples: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N rows of --eval.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(help="Gate: fail (exit 3) if any artifact's min cosine is below this.")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Gate: fail (exit 3) if accuracy drops more points than this.")] = None,
    output: Annotated[Optional[str], typer.Option(help="Model output fidelity compares (default: chosen by shape; see README).")] = None,
    lengths: Annotated[str, typer.Option(help="fixed: the batch x seq grid; real: also batches of real --data texts padded per batch (sequences/s, tokens/s).")] = "fixed",
    sort: Annotated[bool, typer.Option("--sort", help="With --lengths real: sort texts by length before batching, as servers do.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write an HTML report with plots (self-contained) into this folder.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the report as an artifact folder.")] = None,
    json_out: JsonOut = None,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.bench.stage import run_bench
    from bertopt.errors import QualityGateError

    try:
        result = run_bench(
            artifacts, out, batch=parse_int_list(batch, "--batch"), seq=parse_int_list(seq, "--seq"), threads=threads,
            warmup=warmup, iters=iters, repeats=repeats, data=data, text_column=text_column, samples=samples,
            max_length=max_length, eval=eval, label_column=label_column, eval_samples=eval_samples,
            min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop, output=output, lengths=lengths, sort=sort,
            json_path=json_out, force=force, verbose=verbose,
        )
    except QualityGateError as e:
        # the numbers first, so a CI log shows what failed; then the gate error (exit 3)
        if getattr(e, "report", None) is not None:
            _show(e.report, json_out, report)
        raise
    _show(result, json_out, report)


def _show(result: dict, json_out, report_dir) -> None:
    from bertopt.bench.stage import render

    if str(json_out) != "-":
        render(result)
    if report_dir is not None:
        from bertopt.bench.report import write_report
        from bertopt.ui import note

        note(f"bench: report written to {write_report(result, report_dir)}")
