"""Benchmark artifacts side by side: latency/throughput sweeps, fidelity and accuracy vs the first one.

The first ARTIFACT is the reference (a Hugging Face folder runs on PyTorch eager; an ONNX artifact or
.onnx on ONNX Runtime CPU; a TensorRT engine artifact on TensorRT). Runs are interleaved so that a
noisy machine's drift hits every artifact alike. Exit code 3 when --min-cosine/--max-accuracy-drop fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from bertopt.cli.command import COMMON_PANEL
from bertopt.cli.options import JsonOut, command_from

# Command-only options: what the command does with the stage's result (--report, --json), and where
# the report artifact goes (optional for bench).
EXTRA = {
    "report": (Annotated[Optional[Path], typer.Option("--report", help="Write an HTML report with plots (self-contained) into this folder.",
                                                      rich_help_panel=COMMON_PANEL)], None),
    "out": (Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the report as an artifact folder.")], None),
    "json_out": (JsonOut, None),
}


def _bench_and_show(run, args, out, options, extra, *, force) -> None:
    from bertopt.errors import QualityGateError

    try:
        result = run(args[0], extra["out"], options=options, json_path=extra["json_out"], force=force)
    except QualityGateError as e:
        # the numbers first, so a CI log shows what failed; then the gate error (exit 3)
        if getattr(e, "report", None) is not None:
            _show(e.report, extra["json_out"], extra["report"])
        raise
    _show(result, extra["json_out"], extra["report"])


command = command_from(
    "bench", call=_bench_and_show, out=None, extra=EXTRA,
    arguments={"artifacts": Annotated[List[str], typer.Argument(help="Artifacts to run; the first is the reference.")]},
)


def _show(result: dict, json_out, report_dir) -> None:
    from bertopt.bench.stage import render

    if str(json_out) != "-":
        render(result)
    if report_dir is not None:
        from bertopt.bench.report import write_report
        from bertopt.ui import note

        note(f"bench: report written to {write_report(result, report_dir)}")
