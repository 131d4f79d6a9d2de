"""``bertopt fuse``'s options (light: the CLI's ``--help`` imports this, not the passes)."""

from __future__ import annotations

import typing
from typing import Any, ClassVar, Literal

from bertopt.options import StageOptions, opt

Target = Literal["onnxruntime", "tensorrt"]
OrtFusions = Literal["measured", "all"]
AttentionOp = Literal["MultiHeadAttention", "Attention"]
TARGETS = typing.get_args(Target)
ORT_FUSIONS = typing.get_args(OrtFusions)


class FuseOptions(StageOptions):
    STAGE: ClassVar[str] = "fuse"
    PANELS: ClassVar[tuple[str, ...]] = ("Fusion", "Checks")

    target: Target = opt("onnxruntime", "onnxruntime (CPU, com.microsoft fused ops) or tensorrt (standard ONNX ops only).", panel="Fusion")
    ort_fusions: OrtFusions = opt("measured", "onnxruntime target: measured (only fusions faster on ORT's CPU kernels) or all.", panel="Fusion")
    attention_op: AttentionOp = opt("MultiHeadAttention", "onnxruntime target: MultiHeadAttention (Q/K/V GEMMs stay visible to calibrate) "
                                                          "or Attention (packed QKV).", panel="Fusion")
    output: str | None = opt(None, "Model output whose parity is printed (default: chosen by shape; all outputs are checked).", panel="Checks")
    strict: bool = opt(False, "Fail (exit 1) when the graph holds no BERT encoder layer.", panel="Checks", flag="--strict")

    def pass_options(self) -> dict[str, str]:
        """What ``fuse_model`` takes as ``options``: the onnxruntime target's choices (none for tensorrt)."""
        return {"ort_fusions": self.ort_fusions, "attention_op": self.attention_op} if self.target == "onnxruntime" else {}

    def params(self) -> dict[str, Any]:
        """The manifest params: the target, its own choices, the compared output when given."""
        return {"target": self.target} | self.pass_options() | ({"output": self.output} if self.output else {})
