"""Show what an artifact is: lineage back to the base model, INT8/float summary, I/O, profiles, last measurement.

Each stage back to the base model with its options and input hashes (checked against the disk), the
op/precision summary (GEMMs in INT8, what stays float), I/O names and shapes, ONNX Runtime session
options or TensorRT profiles, and the newest bench artifact beside it that measured it. --json PATH (- for stdout) for tools.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bertopt.cli.options import JsonOut, Quiet


def command(
    artifact: Annotated[str, typer.Argument(help="An artifact folder, a .onnx file, or a Hugging Face folder.")],
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    from bertopt.inspection import inspect_artifact, render
    from bertopt.ui import write_json

    from bertopt.errors import BertoptError

    res = inspect_artifact(artifact)
    write_json(res, json_out)
    if str(json_out) != "-":
        render(res)
    if res.get("integrity", "ok") != "ok":
        # shown above; the exit code tells a CI step that the artifact is not the one its manifest describes
        raise BertoptError(f"integrity check failed: {res['integrity']}", hint="re-run the stage that wrote it (recipes: `bertopt run --force`)")
