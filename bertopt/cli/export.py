"""Export a local Hugging Face model folder to ONNX (dynamic batch/sequence axes, parity-checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bertopt.cli.options import Force, Out, Quiet, Verbose

PANELS = {"Export": ["task", "pooling", "normalize", "opset", "exporter"], "Checks": ["tolerance"]}


def command(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face model folder (config.json, weights, tokenizer), or pkg:<package>.")],
    out: Out,
    task: Annotated[Optional[str], typer.Option(help="feature-extraction or sequence-classification (default: from config.json).")] = None,
    pooling: Annotated[str, typer.Option(help="Sentence embedding output: auto (sentence-transformers config), mean, cls, none.")] = "auto",
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalize the pooled embedding (default: as the model's modules.json).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 gives LayerNormalization).")] = 17,
    exporter: Annotated[str, typer.Option(help="legacy (TorchScript, default: fusable, needed by qat) or dynamo.")] = "legacy",
    tolerance: Annotated[float, typer.Option(help="Max abs difference allowed between PyTorch and ONNX Runtime.")] = 1e-4,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.export import run_export

    run_export(str(model_dir), out, task=task, pooling=pooling, normalize=normalize, opset=opset, exporter=exporter,
               tolerance=tolerance, force=force, verbose=verbose)
