"""``bertopt compress``'s options: the training run (``TrainingOptions``) and the student's shape."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from bertopt.models import TASKS
from bertopt.distill.options import TrainingOptions
from bertopt.options import POOLING, opt
from bertopt.params import PositiveFloat, PositiveInt


class CompressOptions(TrainingOptions):
    STAGE: ClassVar[str] = "compress"
    PANELS: ClassVar[tuple[str, ...]] = ("Student", "Data", "Training")

    layers: PositiveInt | None = opt(None, "Teacher layers the student keeps (default: all).", panel="Student")
    select: str = opt("spaced", "Which layers: spaced (evenly spread, last kept), first, or 0-based numbers '1,3,5'.", panel="Student")
    ffn_size: PositiveInt | None = opt(None, "FFN neurons kept per layer, the most important on --data (default: all).", panel="Student")
    importance_batches: PositiveInt = opt(32, "Training batches the FFN neuron importance is measured on.", panel="Student")
    task: Literal[TASKS] | None = opt(None, "feature-extraction or sequence-classification (default: from config.json).", panel="Data")
    pooling: POOLING = opt("auto", "Sentence embedding the output loss compares: auto, mean, cls, none.", panel="Data")
    # a smaller student trains longer and faster than qat's copy of the teacher
    epochs: PositiveFloat = TrainingOptions.with_default("epochs", 3.0)
    lr: PositiveFloat = TrainingOptions.with_default("lr", 1e-4)

    def params(self, *, task: str, pooling: str, layers: list[int], ffn_size: int, prunes_ffn: bool) -> dict[str, Any]:
        """The manifest params: the options as resolved against the teacher (kept layers, FFN size),
        None where an option has no effect."""
        return {"task": task, "pooling": pooling} | self.training_params() | {
            "layers": layers, "ffn_size": ffn_size, "importance_batches": self.importance_batches if prunes_ffn else None,
            "temperature": self.temperature, "output_weight": self.output_weight, "hidden_weight": self.hidden_weight,
            "task_weight": self.task_weight if self.label_column else None, "seed": self.seed,
        }
