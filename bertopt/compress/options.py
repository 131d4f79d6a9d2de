"""``bertopt compress``'s options: the training run (``TrainingOptions``) and the student's shape."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import field_validator

from bertopt.distill.options import TrainingOptions
from bertopt.models import TASKS
from bertopt.options import POOLING, opt
from bertopt.params import Epochs, NonNegativeFloat, PositiveFloat, PositiveInt


class CompressOptions(TrainingOptions):
    STAGE: ClassVar[str] = "compress"
    PANELS: ClassVar[tuple[str, ...]] = ("Student", "Data", "Training")

    layers: PositiveInt | None = opt(None, "Teacher layers the student keeps (default: all).", panel="Student")
    select: str = opt("spaced", "Which layers: spaced (evenly spread, last kept), first, or 0-based numbers '1,3,5'.", panel="Student",
                      fingerprint=False)  # in params as the layers it picks
    ffn_size: PositiveInt | None = opt(None, "FFN neurons kept per layer, the most important on --data (default: all).", panel="Student")
    importance_batches: PositiveInt = opt(32, "Training batches the FFN neuron importance is measured on.", panel="Student")
    task: Literal[TASKS] | None = opt(None, "feature-extraction or sequence-classification (default: from config.json).", panel="Data")
    pooling: POOLING = opt("auto", "Sentence embedding the output loss compares: auto, mean, cls, none.", panel="Data")
    data: list[str] = opt(help="Training text, one or more files read in order (repeat --data, or a,b): .txt (one per line), .csv, .tsv, "
                               ".jsonl.", panel="Data", split=True,
                          fingerprint=False)  # inputs (hashed)
    embedding_loss: Literal["cosine", "mse", "cosine+mse"] = opt(
        "cosine", "Encoders: output loss on the pooled sentence embedding vs the teacher's: 1-cosine, MSE (relative), or both.",
        panel="Training")
    similarity_weight: NonNegativeFloat = opt(0.0, "Encoders: weight of the in-batch cosine-similarity matrix MSE vs the teacher's "
                                                   "(neighbour structure).", panel="Training")
    select_on: Literal["neighbours", "loss"] = opt(
        "neighbours", "Encoders: early stopping keeps the best held-out neighbour agreement@10 with the teacher, or the lowest loss.",
        panel="Training")
    # a smaller student trains longer and faster than qat's copy of the teacher
    epochs: Epochs = TrainingOptions.with_default("epochs", 3.0)
    lr: PositiveFloat = TrainingOptions.with_default("lr", 1e-4)

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_more(cls, v):
        return [v] if isinstance(v, str) else v

    def params(self, *, task: str, pooling: str, layers: list[int], ffn_size: int, prunes_ffn: bool) -> dict[str, Any]:
        """The manifest params: the options as resolved against the teacher (kept layers, FFN size),
        None where an option has no effect; the embedding losses only for an encoder with a pooled output."""
        p = super().params(task=task, pooling=pooling, layers=layers, ffn_size=ffn_size,
                           importance_batches=self.importance_batches if prunes_ffn else None)
        if not (task == "feature-extraction" and pooling != "none"):
            for k in ("embedding_loss", "similarity_weight", "select_on"):
                del p[k]
        return p
