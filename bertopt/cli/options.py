"""Options shared by the subcommands, as ``Annotated`` aliases (one definition, one spelling)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Out = Annotated[Path, typer.Option("--out", "-o", help="Output artifact folder (replaced atomically).")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write machine-readable results to this JSON file ('-' for stdout).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say more, e.g. which passes fired zero times and why.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Redo the work even when the output is up to date.")]
Threads = Annotated[int, typer.Option("--threads", "-t", min=1, help="Intra-op threads for ONNX Runtime / PyTorch.")]


def parse_int_list(value: str, name: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] with a usage error that names the option."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got '{value}'", param_hint=name) from None
    if not out or any(v < 1 for v in out):
        raise typer.BadParameter(f"expected positive integers, got '{value}'", param_hint=name)
    return out
