"""Export a local Hugging Face model folder to ONNX (dynamic batch/sequence axes, parity-checked)."""

from __future__ import annotations

from bertopt.cli.options import command_from

command = command_from(
    "export",
    arguments={"model_dir": "Hugging Face model folder (config.json, weights, tokenizer), or pkg:<package>."},
)
