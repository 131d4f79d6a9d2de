"""Show what an artifact is: its lineage back to the base model (stages, options, input hashes), the
op/precision summary (GEMMs in INT8, what stays float), I/O names and shapes, engine profiles, and the
last measured quality and latency.
"""

from __future__ import annotations

from typing import Annotated

import typer


def command(
    artifact: Annotated[str, typer.Argument(help="An artifact folder, a .onnx file, or a Hugging Face folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    import json

    from bertopt.inspection import inspect_artifact, render

    res = inspect_artifact(artifact)
    if json_out:
        print(json.dumps(res, indent=2, default=str))
    else:
        render(res)
