"""Run a YAML recipe: the stages in order, skipping those whose inputs and options did not change."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from bertopt.cli.options import Force, JsonOut, Quiet, Verbose

PANELS = {"Recipe": ["workdir", "only", "check"]}


def command(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (see recipes/).")],
    workdir: Annotated[Optional[Path], typer.Option(help="Override the recipe's workdir.")] = None,
    only: Annotated[Optional[List[str]], typer.Option(help="Run only this step (repeatable); others' outputs are reused.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the recipe and exit.")] = False,
    json_out: JsonOut = None,
    force: Force = False,
    verbose: Verbose = False,  # applied by BertoptCommand.invoke (bertopt.log's level)
    quiet: Quiet = False,
) -> None:

    from rich.table import Table

    from bertopt.recipe import load_recipe, run_recipe, summary_line
    from bertopt.ui import stdout, write_json

    if check:
        r = load_recipe(recipe, workdir)
        stdout.print(f"{recipe}: valid; steps: " + ", ".join(f"{s['name']} ({s['stage']})" for s in r["steps"]), markup=False)
        return
    from bertopt.bench.stage import render
    from bertopt.errors import QualityGateError

    try:
        rows = run_recipe(recipe, workdir=workdir, force=force, only=only)
    except QualityGateError as e:
        if getattr(e, "report", None) is not None:  # a bench step's gate: its numbers before the error
            render(e.report)
        raise

    for row in rows:
        if "report" in row:
            render(row["report"])
    t = Table(title=f"bertopt run {recipe}", title_justify="left")
    for col in ("step", "stage", "status", "seconds", "output", "notes"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for row in rows:
        t.add_row(row["step"], row["stage"], row["status"], f"{row['seconds']:.1f}", row["out"], summary_line(row))
    stdout.print(t)
    if json_out is not None:
        write_json({"schema": "bertopt.run/1", "recipe": str(recipe), "steps": rows}, json_out)
