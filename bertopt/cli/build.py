"""Build a deployable artifact: ONNX Runtime (default) or OpenVINO on the CPU, or a TensorRT engine on NVIDIA GPUs.

onnxruntime: the offline-optimized graph + the session options it runs with (session.json); --tune measures a small search on this machine (~30-60 s).

openvino: an OpenVINO IR compiled (and cached in the artifact) with dynamic shapes and per --shapes bucket (BATCHxSEQ, or auto from --data's token lengths); float ops in f32 unless --inference-precision; the build fails when a GEMM the Q/DQ graph quantizes does not run as an INT8 layer.

auto: builds both CPU backends, times them interleaved on --data's texts at their real lengths in the --batch sizes, and keeps the faster (both timings in the manifest).

tensorrt: a strongly typed engine (INT8 from Q/DQ, FP16 in the ONNX types, LayerNorm/Softmax in FP32), shape profiles from --profile or planned from the token lengths of --data, a persistent timing cache, and the per-layer precision map; the build fails when GEMMs the Q/DQ graph quantizes did not run in INT8.
"""

from __future__ import annotations

from bertopt.cli.options import command_from

command = command_from(
    "build",
    arguments={"input": "Artifact folder (export, fuse, calibrate, qat, compress) or a .onnx file."},
)
