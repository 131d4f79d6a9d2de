"""Options shared by the subcommands, as ``Annotated`` aliases (one definition, one spelling)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Out = Annotated[Path, typer.Option("--out", "-o", help="Output artifact folder (replaced atomically).")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write machine-readable results to this JSON file ('-' for stdout).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say more, e.g. which passes fired zero times and why.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Redo the work even when the output is up to date.")]
QUIET_HELP = "Print only errors and the results (no progress, no notes)."
# Every command declares ``quiet: Quiet = False``; BertoptCommand (cli/command.py) applies it before the command runs.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)]
Threads = Annotated[int, typer.Option("--threads", "-t", min=1, help="Intra-op threads for ONNX Runtime / PyTorch.")]


def split_items(values: list[str] | None) -> list[str] | None:
    """A repeatable option that also takes commas: ``--exclude a --exclude b,c`` -> ['a', 'b', 'c'];
    None when not given (``--exclude ''`` gives [], i.e. "none")."""
    if values is None:
        return None
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def parse_int_list(value: str, name: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] with a usage error that names the option."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got '{value}'", param_hint=name) from None
    if not out or any(v < 1 for v in out):
        raise typer.BadParameter(f"expected positive integers, got '{value}'", param_hint=name)
    return out
