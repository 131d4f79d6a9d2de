"""Write a self-contained HTML report with plots and tables from a bench JSON.

Plots: one per measure with every artifact on the same axes (latency vs batch, throughput vs batch,
real-length batches) and quality vs latency (inline SVG, no network needed to view it). DIR/index.html; `bench --report DIR` writes the same page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bertopt.cli.options import Quiet


def command(
    bench_json: Annotated[Path, typer.Argument(help="A JSON written by `bertopt bench --json` (or a bench artifact folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write index.html into.")] = Path("bench-report"),
    quiet: Quiet = False,
) -> None:
    from bertopt.bench.report import load_report, write_report
    from bertopt.ui import stdout

    path = write_report(load_report(bench_json), out)
    stdout.print(f"report: {path}", markup=False)
