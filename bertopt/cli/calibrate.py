"""INT8 post-training calibration: FP32 ONNX + text -> Q/DQ ONNX (TensorRT's explicit form, real int8 kernels on ONNX Runtime).

Writes model.onnx (Q/DQ), ranges.json (portable ranges + hashes; regenerate with --ranges) and
calibration.cache (TensorRT's text format, for TensorRT 10 implicit INT8). GEMM inputs are
equalized first (smoothing + shifting, exact in float), weights are per-channel INT8 with bias
correction, activations per-tensor. --sensitivity-report prints/saves per-GEMM sensitivity; --skip-sensitive N
leaves the N worst GEMMs in float. --min-cosine / --max-accuracy-drop set a budget on held-out text:
GEMMs go back to float, most sensitive first, until it holds (exit 3 with the best model found if
nothing does).
"""

from __future__ import annotations

from bertopt.cli.options import command_from

command = command_from(
    "calibrate",
    arguments={"input": "FP32 artifact from export or fuse (or a .onnx with tokenizer/ beside it)."},
)
