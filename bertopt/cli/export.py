"""Export a local Hugging Face model folder to ONNX (dynamic batch/sequence axes, parity-checked)."""

from __future__ import annotations

from bertopt.cli.options import command_from
from bertopt.export_options import ExportOptions

command = command_from(
    ExportOptions, "bertopt.export:run_export",
    arguments={"model_dir": "Hugging Face model folder (config.json, weights, tokenizer), or pkg:<package>."},
)
