"""Build a deployable artifact: ONNX Runtime on the CPU (default) or a TensorRT engine on NVIDIA GPUs.

onnxruntime: the offline-optimized graph + the session options it runs with (session.json); --tune measures a small search on this machine (~30-60 s).

tensorrt: a strongly typed engine (INT8 from Q/DQ, FP16 in the ONNX types, LayerNorm/Softmax in FP32), shape profiles from --profile or planned from the token lengths of --data, a persistent timing cache, and the per-layer precision map; the build fails when GEMMs the Q/DQ graph quantizes did not run in INT8.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bertopt.cli.options import Force, Out, Quiet, Verbose

PANELS = {
    "Build": ["backend", "precision", "threads", "tune", "profile", "timing_cache", "keep_fp32"],
    "Data": ["data", "text_column"],
    "Checks": ["strict"],
}


def command(
    input: Annotated[str, typer.Argument(help="Artifact folder (export, fuse, calibrate, qat) or a .onnx file.")],
    out: Out,
    backend: Annotated[str, typer.Option(help="onnxruntime (CPU) or tensorrt (NVIDIA GPU with TensorRT 10/11).")] = "onnxruntime",
    precision: Annotated[Optional[str], typer.Option(help="int8, fp16 or fp32 (default: int8 for Q/DQ graphs; ORT: the graph's own; TensorRT: fp16 for float graphs).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="TensorRT shape profiles, e.g. 'batch=1:8:32,seq=1:128:256' (';' between profiles), or 'auto' / 'auto:N' to plan them from --data (the last reaching N tokens).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Real texts: TensorRT plans profiles from their token lengths; ORT --tune times on them.")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data (csv/tsv/jsonl).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="ORT intra-op threads (default: physical cores).")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="ORT: measure session options on this machine and keep the fastest.")] = False,
    timing_cache: Annotated[Optional[str], typer.Option(help="TensorRT timing cache file (default: ~/.cache/bertopt/trt-timing.cache).")] = None,
    keep_fp32: Annotated[str, typer.Option(help="TensorRT fp16/int8: op types kept in FP32, comma-separated.")] = "LayerNormalization,Softmax",
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1) when the graph holds no BERT encoder layer.")] = False,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.backends.stage import run_build

    run_build(input, out, backend=backend, precision=precision, profile=profile, data=data, text_column=text_column,
              threads=threads, tune=tune, timing_cache=timing_cache, keep_fp32=keep_fp32, strict=strict, force=force, verbose=verbose)

