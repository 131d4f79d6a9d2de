"""``TrainingOptions``: the distillation run's options, which ``qat`` and ``compress`` both take (``bertopt.distill.train``)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from bertopt.errors import BertoptError
from bertopt.options import StageOptions, opt
from bertopt.params import Epochs, HalfOpenFraction, MaxLength, NonNegativeFloat, OpenFraction, PositiveFloat, PositiveInt, Steps


class TrainingOptions(StageOptions):
    """Distillation training on text (+ labels), as ``qat`` and ``compress`` both run it (``bertopt.distill.train``)."""

    data: str = opt(help="Training text: .txt (one per line), .csv, .tsv, .jsonl.", panel="Data", fingerprint=False)  # an input (hashed)
    text_column: str | None = opt(None, "Text column of --data (csv/tsv/jsonl).", panel="Data")
    label_column: str | None = opt(None, "Label column: adds the task loss (classifiers).", panel="Data")
    val_data: str | None = opt(None, "Held-out file for early stopping (default: --val-fraction of --data).", panel="Data", fingerprint=False)
    val_fraction: OpenFraction = opt(0.1, "Fraction of --data held out for early stopping.", panel="Data")
    samples: PositiveInt | None = opt(None, "Use only the first N texts of --data (default: all).", panel="Data")
    max_length: MaxLength = opt(128, "Truncate texts to this many tokens.", panel="Data")
    epochs: Epochs = opt(1.0, "Training epochs (fractions allowed).", panel="Training")
    steps: Steps | None = opt(None, "Training steps (overrides --epochs); a step is one batch per process.", panel="Training")
    batch_size: PositiveInt = opt(32, "Batch size per process.", panel="Training")
    lr: PositiveFloat = opt(2e-5, "Peak AdamW learning rate (linear warmup, linear decay).", panel="Training")
    warmup_ratio: HalfOpenFraction = opt(0.1, "Fraction of the steps with a linear learning-rate warmup.", panel="Training")
    eval_every: PositiveInt | None = opt(None, "Steps between held-out evaluations/checkpoints (default: a tenth of the run).", panel="Training")
    patience: PositiveInt = opt(3, "Stop after this many held-out evaluations without improvement (accuracy with labels, else "
                                   "distillation loss).", panel="Training")
    min_delta: HalfOpenFraction = opt(0.01, "At equal held-out accuracy, the held-out loss must fall by more than this fraction to "
                                            "count as better.", panel="Training")
    temperature: PositiveFloat = opt(2.0, "Distillation temperature for logits.", panel="Training")
    output_weight: NonNegativeFloat = opt(1.0, "Weight of the output distillation loss (logits KL / embedding cosine).", panel="Training")
    hidden_weight: NonNegativeFloat = opt(1.0, "Weight of the hidden-state distillation loss (0 turns it off).", panel="Training")
    task_weight: NonNegativeFloat = opt(1.0, "Weight of the task loss (with --label-column).", panel="Training")
    seed: int = opt(0, "Seed for the held-out split, the batch order (and dropout, if kept).", panel="Training")
    checkpoint_dir: str | None = opt(None, "Where checkpoints go (default: .<out>.{stage}-checkpoint beside --out).", panel="Training",
                                     fingerprint=False)
    resume: bool = opt(True, "Resume a killed run from its checkpoint.", panel="Training", fingerprint=False)

    def distillation_weights(self) -> dict[str, float]:
        """The distillation losses' weights by option name (qat adds attention)."""
        return {"output_weight": self.output_weight, "hidden_weight": self.hidden_weight}

    @model_validator(mode="after")
    def _some_distillation(self):
        w = self.distillation_weights()
        if sum(w.values()) == 0:
            raise BertoptError("loss weights must be >= 0 and at least one distillation weight positive",
                               hint=", ".join("--" + k.replace("_", "-") for k in w))
        return self

    def _effective(self, p: dict[str, Any]) -> dict[str, Any]:
        """None where an option has no effect: ``val_fraction`` with ``val_data``, ``epochs`` with ``steps``,
        ``task_weight`` without labels."""
        p = super()._effective(p)
        if self.val_data:
            p["val_fraction"] = None
        if self.steps:
            p["epochs"] = None
        if not self.label_column:
            p["task_weight"] = None
        return p
