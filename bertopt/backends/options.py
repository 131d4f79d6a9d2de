"""``bertopt build``'s options (light: the CLI's ``--help`` imports this, not a backend)."""

from __future__ import annotations

import typing
from typing import ClassVar, Literal

from pydantic import model_validator

from bertopt.errors import BertoptError
from bertopt.options import StageOptions, opt
from bertopt.params import PositiveInt

Backend = Literal["onnxruntime", "tensorrt"]
Precision = Literal["int8", "fp16", "fp32"]
BACKENDS = typing.get_args(Backend)
PRECISIONS = typing.get_args(Precision)
DEFAULT_KEEP_FP32 = "LayerNormalization,Softmax"


class BuildOptions(StageOptions):
    STAGE: ClassVar[str] = "build"
    PANELS: ClassVar[tuple[str, ...]] = ("Build", "Data", "Checks", "Triton")

    backend: Backend = opt("onnxruntime", "onnxruntime (CPU) or tensorrt (NVIDIA GPU with TensorRT 10/11).", panel="Build")
    precision: Precision | None = opt(None, "int8, fp16 or fp32 (default: int8 for Q/DQ graphs; ORT: the graph's own; TensorRT: fp16 "
                                            "for float graphs).", panel="Build")
    threads: PositiveInt | None = opt(None, "ORT intra-op threads (default: physical cores).", panel="Build", flag=["--threads", "-t"])
    tune: bool = opt(False, "ORT: measure session options on this machine and keep the fastest.", panel="Build", flag="--tune")
    profile: str | None = opt(None, "TensorRT shape profiles, e.g. 'batch=1:8:32,seq=1:128:256' (';' between profiles), or 'auto' / "
                                    "'auto:N' to plan them from --data (the last reaching N tokens).", panel="Build")
    timing_cache: str | None = opt(None, "TensorRT timing cache file (default: ~/.cache/bertopt/trt-timing.cache).", panel="Build")
    keep_fp32: str = opt(DEFAULT_KEEP_FP32, "TensorRT fp16/int8: op types kept in FP32, comma-separated.", panel="Build")
    data: str | None = opt(None, "Real texts: TensorRT plans profiles from their token lengths; ORT --tune times on them.", panel="Data")
    text_column: str | None = opt(None, "Text column of --data (csv/tsv/jsonl).", panel="Data")
    strict: bool = opt(False, "Fail (exit 1) when the graph holds no BERT encoder layer.", panel="Checks", flag="--strict")
    triton: str | None = opt(None, "Also write a Triton Inference Server model repository here: REPO/<name>/config.pbtxt + "
                                   "REPO/<name>/1/<model file>.", panel="Triton")
    triton_name: str | None = opt(None, "The model's name in --triton (default: the --out folder's name; its parent's for an --out "
                                        "named 'build').", panel="Triton")

    @model_validator(mode="after")
    def _backend_options(self):
        if self.backend == "onnxruntime":
            for name in ("profile", "timing_cache"):
                if getattr(self, name):
                    raise BertoptError(
                        f"--{name.replace('_', '-')} applies to --backend tensorrt only",
                        hint="ONNX Runtime handles dynamic shapes without profiles; drop the option or build for tensorrt",
                    )
        elif self.tune:
            raise BertoptError("--tune applies to --backend onnxruntime only", hint="TensorRT times its own tactics while building")
        if self.triton_name and not self.triton:
            raise BertoptError("--triton-name names the model in a --triton repository, but no --triton was given",
                               hint="add --triton REPO, or drop --triton-name")
        return self
