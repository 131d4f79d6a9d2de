"""INT8 post-training calibration: FP32 ONNX + text -> Q/DQ ONNX (TensorRT's explicit form, real int8 kernels on ONNX Runtime).

Writes model.onnx (Q/DQ), ranges.json (portable ranges + hashes; regenerate with --ranges) and
calibration.cache (TensorRT's text format, for TensorRT 10 implicit INT8). GEMM inputs are
equalized first (smoothing + shifting, exact in float), weights are per-channel INT8 with bias
correction, activations per-tensor. --report prints/saves per-GEMM sensitivity; --skip-sensitive N
leaves the N worst GEMMs in float. --min-cosine / --max-accuracy-drop set a budget on held-out text:
GEMMs go back to float, most sensitive first, until it holds (exit 3 with the best model found if
nothing does).
"""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from bertopt.cli.options import Force, Out, Quiet, Verbose, split_items

PANELS = {
    "Data": ["data", "text_column", "samples", "max_length", "batch_size", "threads"],
    "Quantization": ["method", "percentile", "smooth", "shift", "bias_correction", "quantize_bmm", "quantize_head", "exclude",
                     "skip_sensitive", "ranges", "trt_cache"],
    "Checks and budget": ["eval", "label_column", "eval_samples", "output", "min_cosine", "max_accuracy_drop", "max_float", "report"],
}


def command(
    input: Annotated[str, typer.Argument(help="FP32 artifact from export or fuse (or a .onnx with tokenizer/ beside it).")],
    out: Out,
    data: Annotated[Optional[str], typer.Option(help="Calibration text: .txt, .csv, .tsv, .jsonl (pkg: paths work).")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data (csv/tsv/jsonl).")] = None,
    method: Annotated[str, typer.Option(help="Activation range calibrator: max, percentile, entropy, mse.")] = "percentile",
    percentile: Annotated[float, typer.Option(help="Percentile kept by --method percentile.")] = 99.999,
    samples: Annotated[int, typer.Option(min=1, help="Calibration texts (the first N of --data).")] = 2048,
    max_length: Annotated[int, typer.Option(min=8, help="Truncate texts to this many tokens.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per calibration batch.")] = 16,
    smooth: Annotated[float, typer.Option(min=0.0, max=1.0, help="Smoothing strength alpha (0 turns smoothing off).")] = 0.9,
    shift: Annotated[bool, typer.Option("--shift/--no-shift", help="Centre each GEMM input channel before quantizing.")] = True,
    bias_correction: Annotated[bool, typer.Option("--bias-correction/--no-bias-correction", help="Correct the mean output shift of INT8 weights.")] = True,
    quantize_bmm: Annotated[bool, typer.Option("--quantize-bmm", help="Also quantize the attention batched MatMuls.")] = False,
    exclude: Annotated[Optional[List[str]], typer.Option(help="Leave these nodes (names or globs, e.g. '*/layer.5/output/*') in float; repeatable, commas too.")] = None,
    quantize_head: Annotated[bool, typer.Option("--quantize-head", help="Also quantize the pooler/classifier GEMMs (float by default).")] = False,
    skip_sensitive: Annotated[int, typer.Option(min=0, help="Leave the N most sensitive GEMMs in float.")] = 0,
    report: Annotated[bool, typer.Option("--report", help="Per-GEMM sensitivity report (report.json + table).")] = False,
    eval_samples: Annotated[int, typer.Option(min=1, help="Held-out texts from --data after the --samples ones: fidelity check, --report, budget without --eval.")] = 64,
    ranges: Annotated[Optional[str], typer.Option(help="Regenerate from this ranges.json instead of calibrating (no --data needed).")] = None,
    trt_cache: Annotated[bool, typer.Option("--trt-cache/--no-trt-cache", help="Also write TensorRT's calibration cache.")] = True,
    output: Annotated[Optional[str], typer.Option(help="Model output the fidelity check compares (default: chosen by shape; see README).")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(help="Budget: min cosine of the output vs FP32 over held-out texts; GEMMs go back to float until it holds.")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Budget: classifier accuracy on --eval at most this many points below FP32.")] = None,
    eval: Annotated[Optional[str], typer.Option("--eval", help="Held-out text for the budget (default: a seeded split of --data's texts after --samples).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of --eval (for --max-accuracy-drop).")] = None,
    max_float: Annotated[Optional[int], typer.Option(help="Budget search: at most this many GEMMs back in float (default: a quarter).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="Intra-op threads for ONNX Runtime.")] = None,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.calibrators.stage import run_calibrate

    run_calibrate(input, out, data=data, text_column=text_column, method=method, percentile=percentile, samples=samples,
                  max_length=max_length, batch_size=batch_size, smooth=smooth, shift=shift, bias_correction=bias_correction,
                  quantize_bmm=quantize_bmm, exclude=split_items(exclude) or None, quantize_head=quantize_head,
                  skip_sensitive=skip_sensitive, report=report, eval_samples=eval_samples, ranges=ranges, trt_cache=trt_cache,
                  output=output, min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop, eval=eval, label_column=label_column,
                  max_float=max_float, threads=threads, force=force, verbose=verbose)
