"""``bertopt build``'s options (light: the CLI's ``--help`` imports this, not a backend)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from bertopt.errors import BertoptError
from bertopt.options import StageOptions, opt
from bertopt.params import PositiveInt, Sizes

Backend = Literal["onnxruntime", "tensorrt", "openvino", "auto"]
InferencePrecision = Literal["f32", "bf16", "f16"]
Precision = Literal["int8", "fp16", "fp32"]
DEFAULT_KEEP_FP32 = "LayerNormalization,Softmax"


class BuildOptions(StageOptions):
    STAGE: ClassVar[str] = "build"
    PANELS: ClassVar[tuple[str, ...]] = ("Build", "Data", "Checks", "Triton")

    backend: Backend = opt("onnxruntime", "onnxruntime (CPU), openvino (CPU), auto (build both CPU backends, time them on --data, keep the "
                                          "faster) or tensorrt (NVIDIA GPU with TensorRT 10/11).", panel="Build")
    precision: Precision | None = opt(None, "int8, fp16 or fp32 (default: int8 for Q/DQ graphs; ORT: the graph's own; TensorRT: fp16 "
                                            "for float graphs).", panel="Build")
    threads: PositiveInt | None = opt(None, "Intra-op threads of ORT and OpenVINO (default: physical cores).", panel="Build", flag=["--threads", "-t"])
    tune: bool = opt(False, "ORT: measure session options on this machine and keep the fastest.", panel="Build", flag="--tune")
    short_calls: str = opt("auto", "ORT: send short calls to a 1-thread session beside the --threads one: 'auto' (time both at batch 1 "
                                   "x 8..64 tokens, keep the lengths 1 thread wins by 10%), 'off', or N (calls of at most N tokens).", panel="Build")
    profile: str | None = opt(None, "TensorRT shape profiles, e.g. 'batch=1:8:32,seq=1:128:256' (';' between profiles), or 'auto' / "
                                    "'auto:N' to plan them from --data (the last reaching N tokens).", panel="Build")
    timing_cache: str | None = opt(None, "TensorRT timing cache file (default: ~/.cache/bertopt/trt-timing.cache).", panel="Build")
    shapes: str | None = opt(None, "OpenVINO: dynamic (default), static buckets BATCHxSEQ (e.g. '1x16,1x32,8x128'), 'auto' / 'auto:N' "
                                   "(batch-1 buckets planned from --data's token lengths), or both ('auto,8x128').", panel="Build")
    inference_precision: InferencePrecision = opt("f32", "OpenVINO: INFERENCE_PRECISION_HINT of the ops left in float (f32, or bf16/f16 "
                                                         "where the CPU has them).", panel="Build")
    keep_fp32: str = opt(DEFAULT_KEEP_FP32, "TensorRT fp16/int8: op types kept in FP32, comma-separated.", panel="Build")
    batch: Sizes = opt([1, 8], "auto: batch sizes of the --data traffic both backends are timed on, comma-separated.", panel="Build",
                       split=True)
    data: str | None = opt(None, "Real texts: TensorRT plans profiles from their token lengths; ORT --tune and auto time on them; "
                                 "OpenVINO plans --shapes auto from them.", panel="Data")
    text_column: str | None = opt(None, "Text column of --data (csv/tsv/jsonl).", panel="Data")
    strict: bool = opt(False, "Fail (exit 1) when the graph holds no BERT encoder layer.", panel="Checks", flag="--strict")
    triton: str | None = opt(None, "Also write a Triton Inference Server model repository here: REPO/<name>/config.pbtxt + "
                                   "REPO/<name>/1/<model file>.", panel="Triton", fingerprint=False)
    triton_name: str | None = opt(None, "The model's name in --triton (default: the --out folder's name; its parent's for an --out "
                                        "named 'build').", panel="Triton", fingerprint=False)

    @field_validator("short_calls", mode="before")
    @classmethod
    def _short_calls_text(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _backend_options(self):
        only = {"profile": "tensorrt", "timing_cache": "tensorrt", "tune": "onnxruntime", "shapes": "openvino"}
        for name, backend in only.items():
            if getattr(self, name) and self.backend not in (backend, "auto" if backend != "tensorrt" else backend):
                raise BertoptError(f"--{name.replace('_', '-')} applies to --backend {backend} only",
                                   hint=_WHY.get((name, self.backend), "drop the option, or build for " + backend))
        if self.short_calls not in ("auto", "off") and not (self.short_calls.isdigit() and 1 <= int(self.short_calls) <= 1_000_000):
            raise BertoptError(f"--short-calls must be auto, off or a token count from 1 to 1000000, got {self.short_calls!r}",
                               hint="e.g. --short-calls 32 sends calls of at most 32 tokens (batch x length) to a 1-thread session")
        if self.short_calls != "auto" and self.backend not in ("onnxruntime", "auto"):
            raise BertoptError("--short-calls applies to --backend onnxruntime only",
                               hint="OpenVINO takes --shapes; TensorRT runs one engine per call")
        if self.batch != [1, 8] and self.backend != "auto":
            raise BertoptError("--batch applies to --backend auto only", hint="it sets the batch sizes auto times both backends at")
        if self.backend == "auto" and not self.data:
            raise BertoptError("--backend auto times both CPU backends on real traffic, but no --data was given",
                               hint="pass --data FILE (the texts you serve; --text-column for csv/jsonl)")
        if self.inference_precision != "f32" and self.backend not in ("openvino", "auto"):
            raise BertoptError("--inference-precision applies to --backend openvino only",
                               hint="ONNX Runtime runs the graph's own types; TensorRT takes --precision")
        if self.triton_name and not self.triton:
            raise BertoptError("--triton-name names the model in a --triton repository, but no --triton was given",
                               hint="add --triton REPO, or drop --triton-name")
        return self


_WHY = {
    ("profile", "onnxruntime"): "ONNX Runtime handles dynamic shapes without profiles; drop the option or build for tensorrt",
    ("timing_cache", "onnxruntime"): "ONNX Runtime handles dynamic shapes without profiles; drop the option or build for tensorrt",
    ("tune", "tensorrt"): "TensorRT times its own tactics while building",
    ("profile", "openvino"): "OpenVINO takes --shapes (static buckets or dynamic)",
}
