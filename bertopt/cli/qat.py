"""Quantization-aware training with distillation from the FP32 model, exported as Q/DQ ONNX (INT8).

The FP32 model teaches its fake-quantized copy (same Q/DQ placement as calibrate) on --data: text
alone, or text + --label-column for classifiers. Early stopping on a held-out split; a killed run
resumes from its checkpoint when started again. Data-parallel with no change:
`torchrun --nproc_per_node 2 -m bertopt qat ...` (gloo on the CPU, nccl on GPUs; rank 0 writes).
"""

from __future__ import annotations

from bertopt.cli.options import command_from

command = command_from(
    "qat",
    arguments={"model_dir": "Hugging Face model folder (the FP32 teacher), pkg:<package>, or its export artifact."},
)
