"""Held-out text for accuracy budgets: which texts, and how a candidate model measures on them.

A budget is only worth something on text the calibration never saw. With ``--eval FILE`` the
held-out texts (and labels, for ``--max-accuracy-drop``) come from that file; without it a seeded
sample of the ``--data`` texts that were *not* used for calibration is held out, and the run says so.

The measured numbers are those a user gets: the candidate runs on ONNX Runtime with its
optimizations (INT8 kernels), the reference is the FP32 input model on the same feeds; the compared
vector is the model's primary output (:func:`bertopt.outputs.choose_for_onnx`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bertopt.errors import BertoptError

HOLDOUT_SEED = 0


def split_holdout(texts: Sequence[str], used: int, n: int, seed: int = HOLDOUT_SEED) -> tuple[list[int], str]:
    """Indices of up to ``n`` texts among ``texts[used:]`` (never the first ``used``, the calibration
    texts), drawn with a fixed seed, in file order; and a sentence saying where they came from."""
    pool = np.arange(used, len(texts))
    if len(pool) == 0:
        return [], "no texts left after the calibration texts"
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    return [int(i) for i in pick], f"{len(pick)} texts of --data held out (seed {seed}, disjoint from the {used} calibration texts)"


def check_budget(min_cosine: float | None, max_accuracy_drop: float | None, eval: str | None, label_column: str | None,  # noqa: A002
                 where: str = "calibrate") -> None:
    """Reject a budget that cannot mean anything, before any work is done: the rules between options.
    (The ranges, [-1, 1] and [0, 100], NaN included, are the types of ``BudgetOptions``, checked first.)"""
    if max_accuracy_drop is not None:
        if not eval or not label_column:
            raise BertoptError(f"{where}: --max-accuracy-drop needs labeled held-out text",
                               hint="pass --eval FILE --label-column COLUMN (e.g. the validation split); the calibration "
                                    "text is never used to measure accuracy")
    if label_column and not eval:
        raise BertoptError(f"{where}: --label-column needs --eval FILE", hint="labels are read from the --eval file")


@dataclass
class HeldOut:
    """Fixed held-out batches, the FP32 reference's outputs on them, and (optionally) labels."""

    evaluator: object  # bertopt.calibrators.sensitivity.Evaluator
    labels: np.ndarray | None = None
    source: str = ""
    ref_accuracy: float | None = field(default=None)

    @classmethod
    def build(cls, model, batches, threads: int | None, labels: np.ndarray | None, source: str, choice=None) -> "HeldOut":
        """``choice``: the output calibrate compares (:mod:`bertopt.outputs`; default: chosen by name and shape)."""
        from bertopt.calibrators.sensitivity import Evaluator

        ev = Evaluator.for_model(model, batches, threads, choice=choice)
        h = cls(ev, labels, source)
        if labels is not None:
            if ev.choice.kind != "logits":
                raise BertoptError(f"{source}: --max-accuracy-drop needs a classifier (its output '{ev.output}' is not logits)",
                                   hint="use --min-cosine for an encoder")
            h.ref_accuracy = float((ev.ref.argmax(1) == labels).mean())
        return h

    @property
    def n(self) -> int:
        return int(self.evaluator.ref.shape[0])

    def measure(self, model) -> dict:
        """min/mean cosine (unrounded min kept for the budget test), accuracy and its drop in points."""
        from bertopt.outputs import row_cosines

        got = self.evaluator.vectors(model)
        res = self.evaluator.compare(got)
        res["_cosine_min"] = float(row_cosines(self.evaluator.ref, got).min())  # compare() rounds it
        if self.labels is not None:
            acc = float((got.argmax(1) == self.labels).mean())
            res["accuracy"] = round(acc, 6)
            res["accuracy_fp32"] = round(self.ref_accuracy, 6)
            res["accuracy_drop_points"] = round((self.ref_accuracy - acc) * 100, 4)
        return res


def meets(res: dict, min_cosine: float | None, max_accuracy_drop: float | None) -> bool:
    ok = True
    if min_cosine is not None:
        ok &= res["_cosine_min"] >= min_cosine
    if max_accuracy_drop is not None:
        ok &= res["accuracy_drop_points"] <= max_accuracy_drop + 1e-9
    return bool(ok)


def public(res: dict) -> dict:
    return {k: v for k, v in res.items() if not k.startswith("_")}
