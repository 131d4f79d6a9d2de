"""``bertopt qat``'s options: the training run (``TrainingOptions``), a budget (``BudgetOptions``) and qat's own."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import model_validator

from bertopt.errors import BertoptError
from bertopt.models import TASKS
from bertopt.distill.options import TrainingOptions
from bertopt.options import POOLING, BudgetOptions, opt
from bertopt.params import Cosine, NonNegativeFloat, Opset, PositiveInt


class QatOptions(TrainingOptions, BudgetOptions):
    STAGE: ClassVar[str] = "qat"
    PANELS: ClassVar[tuple[str, ...]] = ("Data", "Training", "Quantization", "Checks and budget", "Export")

    attention_weight: NonNegativeFloat = opt(0.0, "Weight of the attention-probability distillation loss.", panel="Training")
    dropout: bool = opt(False, "Keep the model's dropout in the student while it trains (off: it matches the teacher's deterministic "
                               "outputs).", panel="Training")
    init_from: str | None = opt(None, "A `bertopt calibrate` artifact: start from its quantizer ranges (and float layers).", panel="Quantization",
                                fingerprint=False)  # an input (hashed)
    start: Literal["calibrate", "max"] = opt("calibrate", "Without --init-from: 'calibrate' (export + bertopt calibrate on --data first, "
                                                          "default) or 'max' (modelopt max calibration).", panel="Quantization")
    calib_batches: PositiveInt = opt(16, "Training batches for the initial max calibration (--start max).", panel="Quantization")
    exclude: list[str] | None = opt(None, "Modules (names or globs) kept in float; repeatable, commas too (default: pooler,classifier; "
                                          "'' for none).", panel="Quantization", split=True)
    quantize_bmm: bool = opt(False, "Also quantize the attention batched MatMuls.", panel="Quantization")
    parity_min_mean_cosine: Cosine = opt(0.99, "Export check: the ONNX model (ORT int8) vs the fake-quant torch model, minimum MEAN "
                                               "cosine over held-out texts (was --min-cosine).", panel="Checks and budget")
    output: str | None = opt(None, "Output the export parity check compares (default: chosen by shape; see README).", panel="Checks and budget",
                             fingerprint="given")
    task: Literal[TASKS] | None = opt(None, "feature-extraction or sequence-classification (default: from the model, as export).",
                                      panel="Export")
    pooling: POOLING = opt("auto", "Sentence embedding output, as export: auto, mean, cls, none.", panel="Export")
    normalize: bool | None = opt(None, "L2-normalize the pooled embedding (default: as export).", panel="Export")
    opset: Opset = opt(17, "ONNX opset of the exported Q/DQ model.", panel="Export")

    def distillation_weights(self) -> dict[str, float]:
        return super().distillation_weights() | {"attention_weight": self.attention_weight}

    @model_validator(mode="after")
    def _budget_rules(self):
        from bertopt.budget import check_budget

        if self.eval and not self.budget:
            raise BertoptError("qat: --eval is the held-out text of a budget, and no budget is given",
                               hint="add --min-cosine X and/or --max-accuracy-drop P (early stopping reads --val-data)")
        labels = self.label_column if (self.eval or self.max_accuracy_drop is not None) else None
        check_budget(self.min_cosine, self.max_accuracy_drop, self.eval, labels, where="qat")
        return self

    def _effective(self, p: dict[str, Any]) -> dict[str, Any]:
        """None where an option has no effect (the start with ``init_from``, ...); the budget only when given."""
        p = super()._effective(p)
        if self.init_from:
            p["start"] = p["calib_batches"] = None
        if not self.budget:
            for k in ("min_cosine", "max_accuracy_drop", "eval", "eval_samples", "max_float"):
                del p[k]
        elif self.eval:
            p["eval_samples"] = None
        return p
