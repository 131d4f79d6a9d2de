"""The accuracy budget, one for calibrate and qat: the held-out text a candidate is measured on, how far a
measurement is inside the budget, and the gate (a written artifact whose manifest says ``budget.passed``
false raises :class:`~bertopt.errors.QualityGateError`, exit 3, naming the best candidate found). The
search is calibrate's (:mod:`bertopt.calibrators.budget`), the choice between QAT candidates qat's
(:mod:`bertopt.qat.budget`).

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

from bertopt.artifacts import Artifact
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

    evaluator: object  # bertopt.calibrators.sensitivity.Evaluator (made by sensitivity.held_out)
    labels: np.ndarray | None = None
    source: str = ""
    ref_accuracy: float | None = field(default=None)

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


def margin(r: dict, min_cosine: float | None, max_accuracy_drop: float | None) -> float:
    """How far a measurement is inside the budget (negative: outside), the tighter of the two limits
    (accuracy points as a fraction); 0.0 without a budget. qat's choice between candidates uses it too."""
    m = []
    if min_cosine is not None:
        m.append(r["_cosine_min"] - min_cosine)
    if max_accuracy_drop is not None:
        m.append((max_accuracy_drop - r["accuracy_drop_points"]) / 100.0)
    return min(m) if m else 0.0



# what to try next, per stage
HINTS = {"calibrate": "relax the budget, raise --max-float, or calibrate on more text (--samples)",
         "qat": "relax the budget, raise --max-float, or train/calibrate on more text"}


def best_found(record: dict) -> str:
    """The best candidate of a budget record: calibrate's search (``result``) or qat's choice (``chosen``)."""
    if "result" in record:
        r = record["result"]
        return (f"{r['quantized_gemms']} GEMMs INT8, {len(r['float_gemms'])} in float, cosine min {r['cosine_min']:.5f} mean {r['cosine_mean']:.5f}"
                + (f", accuracy {r['accuracy']:.4f} vs FP32 {r['accuracy_fp32']:.4f} ({r['accuracy_drop_points']:.2f} points)" if "accuracy" in r else ""))
    c = record["candidates"][record["chosen"]]
    return (f"'{record['chosen']}', cosine min {c['cosine_min']:.5f}"
            + (f", accuracy drop {c['accuracy_drop_points']:.2f} points" if "accuracy_drop_points" in c else ""))


def gate(art: Artifact) -> None:
    """Exit 3 (QualityGateError) when ``art`` was written with a budget that nothing met."""
    from bertopt.errors import QualityGateError

    b = art.manifest.get("metrics", {}).get("budget")
    if b and not b.get("passed", True):
        raise QualityGateError(f"{art.stage}: no candidate met the budget on {b['held_out']['n']} held-out texts; best found: {best_found(b)}"
                               f" (written to {art.path}, manifest budget.passed false)", hint=HINTS[art.stage])
