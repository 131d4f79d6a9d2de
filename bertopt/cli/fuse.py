"""Fuse attention, LayerNorm and GELU for a target runtime (graph-surgeon passes, each reporting how often it fired).

onnxruntime: MultiHeadAttention and Gelu (com.microsoft); only the fusions ONNX Runtime's CPU kernels run faster (SkipLayerNormalization, BiasGelu and EmbedLayerNormalization measured slower here are left out, and kept out of ORT's own session fusions).

tensorrt: standard ONNX ops only, LayerNorm as opset-17 LayerNormalization, attention in the shape TensorRT fuses; passes onnx.checker with full shape inference.

The fused model is checked against its input on sample text (ORT optimizations off). A pattern family the model has but that did not fuse is reported; --verbose names the passes that fired zero times and the guard that failed.
"""

from __future__ import annotations

from bertopt.cli.options import command_from


def _fuse_and_print(run, args, out, options, extra, *, force) -> None:
    from bertopt.passes.stage import summary_table
    from bertopt.ui import stdout

    stdout.print(summary_table(run(*args, out, options=options, force=force)))


command = command_from(
    "fuse", call=_fuse_and_print,
    arguments={"input": "Artifact folder (from export) or a bare .onnx file (a tokenizer/ folder beside it is used for the check)."},
)
