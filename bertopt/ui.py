"""Terminal output shared by the stages: a stderr console and rich progress bars.

Stages print progress and notes to stderr so that stdout stays clean for ``--json -`` and pipes.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import sys

# Tables are wide: when output goes to a file or CI log (no terminal), don't wrap them at 80 columns.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def progress(transient: bool = False) -> Progress:
    """``with progress() as p: t = p.add_task("calibrating", total=n); p.advance(t)``"""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=transient,
    )


def note(msg: str) -> None:
    console.print(msg, markup=False)


def skipped(stage: str, out) -> None:
    console.print(f"{stage}: {out} is up to date (inputs and parameters unchanged); --force redoes it", markup=False, style="dim")
