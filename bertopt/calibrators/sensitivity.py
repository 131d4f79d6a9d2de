"""How far a model's output moves from the FP32 reference, and which GEMMs move it most.

The compared vector is the one a user consumes, chosen by :func:`bertopt.outputs.choose_output`
(``sentence_embedding``, ``logits``, a mean-pooled hidden state, a pooled vector; ``--output NAME``). Candidate
models run on ONNX Runtime with its optimizations on, i.e. with the INT8 kernels a user gets.

Per-layer sensitivity (``calibrate --sensitivity-report``) is the output error when only that GEMM is quantized
(with its equalization and bias correction), everything else in float: the error it adds alone.
``calibrate --skip-sensitive N`` leaves the N worst in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bertopt.budget import HeldOut
from bertopt.calibrators.collect import Batch
from bertopt.calibrators.qdq import GemmTarget
from bertopt.errors import BertoptError
from bertopt.graph import ort_session
from bertopt.outputs import OutputChoice, row_cosines


@dataclass
class Evaluator:
    """Runs models over fixed batches and compares their primary output with the reference's."""

    batches: list[Batch]
    choice: OutputChoice
    ref: np.ndarray
    threads: int | None = None

    @property
    def output(self) -> str:
        return self.choice.name

    @classmethod
    def for_model(cls, model, batches: Sequence[Batch], threads: int | None = None, choice: OutputChoice | None = None) -> "Evaluator":
        from bertopt.outputs import choose_for_onnx

        ev = cls(list(batches), choice or choose_for_onnx(model), np.zeros(0), threads)
        ev.ref = ev.vectors(model)
        return ev

    def vectors(self, model) -> np.ndarray:
        sess = ort_session(model, "ORT_ENABLE_ALL", self.threads)
        rows = []
        order = []
        for b in self.batches:
            y = sess.run([self.output], b.feeds)[0]
            rows.append(self.choice.vectors(y, b.feeds.get("attention_mask")))
            order += b.indices
        out = np.concatenate(rows)
        return out[np.argsort(order, kind="stable")]

    def compare(self, got: np.ndarray) -> dict:
        a, b = self.ref, got
        cos = row_cosines(a, b)
        rel = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30)
        res = {
            "output": self.output,
            "kind": self.choice.kind,
            "n": int(len(cos)),
            "cosine_min": round(float(cos.min()), 6),
            "cosine_mean": round(float(cos.mean()), 6),
            "rel_error_mean": float(rel.mean()),
            "rel_error_max": float(rel.max()),
        }
        if self.choice.kind == "logits":
            res["top1_agreement"] = round(float((a.argmax(1) == b.argmax(1)).mean()), 6)
        return res

    def error(self, model) -> dict:
        return self.compare(self.vectors(model))


def held_out(model, batches, threads: int | None, labels: np.ndarray | None, source: str, choice=None) -> HeldOut:
    """The budget's held-out measure (:class:`bertopt.budget.HeldOut`) of ``model``'s FP32 outputs on ``batches``;
    ``choice``: the output calibrate compares (:mod:`bertopt.outputs`; default: chosen by name and shape)."""
    ev = Evaluator.for_model(model, batches, threads, choice=choice)
    h = HeldOut(ev, labels, source)
    if labels is not None:
        if ev.choice.kind != "logits":
            raise BertoptError(f"{source}: --max-accuracy-drop needs a classifier (its output '{ev.output}' is not logits)",
                               hint="use --min-cosine for an encoder")
        h.ref_accuracy = float((ev.ref.argmax(1) == labels).mean())
    return h


def layer_sensitivity(
    targets: Sequence[GemmTarget],
    build: Callable[[Sequence[GemmTarget]], object],
    evaluator: Evaluator,
    advance: Callable[[int], None] = lambda n: None,
) -> list[dict]:
    """One row per target, worst first: the output error with only that GEMM quantized."""
    rows = []
    for t in targets:
        res = evaluator.error(build([t]))
        rows.append({"node": t.node, "kind": t.kind, "module": t.module, **res})
        advance(1)
    rows.sort(key=lambda r: (-r["rel_error_mean"], r["node"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows
