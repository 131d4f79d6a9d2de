"""``bertopt export``'s options (light: the CLI's ``--help`` imports this, not torch)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from bertopt.models import TASKS
from bertopt.options import POOLING, StageOptions, opt
from bertopt.params import Opset, PositiveFloat

Exporter = Literal["legacy", "dynamo"]


class ExportOptions(StageOptions):
    STAGE: ClassVar[str] = "export"
    PANELS: ClassVar[tuple[str, ...]] = ("Export", "Checks")

    task: Literal[TASKS] | None = opt(None, "feature-extraction or sequence-classification (default: from config.json).", panel="Export")
    pooling: POOLING = opt("auto", "Sentence embedding output: auto (sentence-transformers config), mean, cls, none.", panel="Export")
    normalize: bool | None = opt(None, "L2-normalize the pooled embedding (default: as the model's modules.json).", panel="Export")
    opset: Opset = opt(17, "ONNX opset (17 gives LayerNormalization).", panel="Export")
    exporter: Exporter = opt("legacy", "legacy (TorchScript, default: fusable, needed by qat) or dynamo.", panel="Export")
    tolerance: PositiveFloat = opt(1e-4, "Max abs difference allowed between PyTorch and ONNX Runtime.", panel="Checks")

    def params(self, *, task: str, pooling: str, normalize: bool) -> dict[str, Any]:
        """The manifest params, with the head as resolved against the model."""
        return super().params(task=task, pooling=pooling, normalize=normalize)
