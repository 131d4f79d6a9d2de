"""Fuse attention, LayerNorm and GELU for a target runtime (graph-surgeon passes, each reporting how often it fired).

onnxruntime: MultiHeadAttention and Gelu (com.microsoft); only the fusions ONNX Runtime's CPU kernels run faster (SkipLayerNormalization, BiasGelu and EmbedLayerNormalization measured slower here are left out, and kept out of ORT's own session fusions).

tensorrt: standard ONNX ops only, LayerNorm as opset-17 LayerNormalization, attention in the shape TensorRT fuses; passes onnx.checker with full shape inference.

The fused model is checked against its input on sample text (ORT optimizations off). A pattern family the model has but that did not fuse is reported; --verbose names the passes that fired zero times and the guard that failed.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bertopt.cli.options import Force, Out, Quiet, Verbose

PANELS = {"Fusion": ["target", "ort_fusions", "attention_op"], "Checks": ["output", "strict"]}


def command(
    input: Annotated[str, typer.Argument(help="Artifact folder (from export) or a bare .onnx file (a tokenizer/ folder beside it is used for the check).")],
    out: Out,
    target: Annotated[str, typer.Option(help="onnxruntime (CPU, com.microsoft fused ops) or tensorrt (standard ONNX ops only).")] = "onnxruntime",
    ort_fusions: Annotated[str, typer.Option(help="onnxruntime target: measured (only fusions faster on ORT's CPU kernels) or all.")] = "measured",
    attention_op: Annotated[str, typer.Option(help="onnxruntime target: MultiHeadAttention (Q/K/V GEMMs stay visible to calibrate) or Attention (packed QKV).")] = "MultiHeadAttention",
    output: Annotated[Optional[str], typer.Option(help="Model output whose parity is printed (default: chosen by shape; all outputs are checked).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1) when the graph holds no BERT encoder layer.")] = False,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.passes.pipeline import run_fuse, summary_table
    from bertopt.ui import stdout

    art = run_fuse(input, out, target=target, ort_fusions=ort_fusions, attention_op=attention_op, output=output, strict=strict, verbose=verbose, force=force)
    stdout.print(summary_table(art))
