"""Compare two bench reports (latency, throughput, fidelity, accuracy); exit 3 on a regression.

Artifacts are matched by name, shapes by batch x seq. Exit code 3 when NEW crosses a threshold
against OLD, a CI regression gate: `bertopt compare baseline.json new.json --max-latency-regression 10% --max-accuracy-drop 0.5`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bertopt.cli.options import JsonOut, Quiet

PANELS = {"Regression gates": ["max_latency_regression", "max_accuracy_drop"]}


def command(
    old: Annotated[Path, typer.Argument(help="The baseline bench JSON (or a bench artifact folder).")],
    new: Annotated[Path, typer.Argument(help="The new bench JSON (or a bench artifact folder).")],
    max_latency_regression: Annotated[Optional[str], typer.Option(help="Gate: fail (exit 3) if any p50 latency grows more than this, e.g. 10%.")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(min=0, help="Gate: fail (exit 3) if any accuracy drops more points than this.")] = None,
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:

    from bertopt.bench.compare import raise_if_regressed, render, run_compare
    from bertopt.ui import write_json

    result = run_compare(old, new, max_latency_regression=max_latency_regression, max_accuracy_drop=max_accuracy_drop)
    write_json(result, json_out)
    if str(json_out) != "-":
        render(result)
    raise_if_regressed(result)
