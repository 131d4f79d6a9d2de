"""Accuracy budget for ``qat``, and the rule that its output is never less faithful than its start.

The budget is calibrate's (:mod:`bertopt.calibrators.budget`, :mod:`bertopt.budget`):
``--min-cosine X`` (min over held-out texts of the primary output's cosine vs the FP32 model) and/or
``--max-accuracy-drop P`` with ``--eval FILE --label-column`` (classifier accuracy, points below FP32),
checked up front by the same :func:`~bertopt.budget.check_budget` and measured by the same
:class:`~bertopt.budget.HeldOut` (ONNX Runtime, INT8 kernels, vs the FP32 export).

Held-out texts are never training, early-stopping or calibration texts: ``--eval FILE``, or else
``--eval-samples`` texts carved out of ``--data`` with a fixed seed (after ``--samples`` when there are
texts beyond it); the rest of ``--data`` is what the internal calibration and training see.

After training, the candidates are measured on those texts: the QAT export and its start (the
calibrated model it was initialized from, ``--init-from`` or the internal calibration). The more
faithful one is written (so QAT never returns a model worse than where it started). If neither meets
the budget, calibrate's own search runs on the same export, calibration texts and held-out texts
(sensitivity-ranked GEMMs back to float, re-measured, pruned) and its result is the third candidate.
Nothing meets it: the best candidate is written, ``budget.passed`` is false in the manifest and qat
exits 3. Without a budget the same start-vs-QAT comparison runs on the early-stopping texts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bertopt.budget import HOLDOUT_SEED, HeldOut, check_budget, meets, public, split_holdout
from bertopt.errors import BertoptError, QualityGateError
from bertopt.ui import console, note

__all__ = ["check_budget", "HeldText", "carve", "Chooser"]

CHECK_TEXTS = 256  # without a budget: early-stopping texts used to compare QAT with its start


@dataclass
class HeldText:
    texts: list[str]
    labels: list | None
    source: str
    train_file: Path | None = None  # --data without the held-out rows (None: --data is used as it is)
    eval_file: Path | None = None  # the held-out rows as CSV (text[,label]) for calibrate's --eval


def _write_csv(path: Path, texts: Sequence[str], labels: Sequence | None, text_column: str | None, label_column: str | None) -> Path:
    """A CSV with the user's column names, so ``--text-column``/``--label-column`` read it as they read ``--data``."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([text_column or "text"] + ([label_column or "label"] if labels is not None else []))
        for i, t in enumerate(texts):
            w.writerow([t] + ([labels[i]] if labels is not None else []))
    return path


def carve(data_path: Path, *, text_column: str | None, label_column: str | None, eval: str | None,  # noqa: A002
          eval_samples: int, limit: int | None, tmp: Path) -> HeldText:
    """The budget's held-out texts, and (without ``eval``) a copy of ``--data`` without them."""
    from bertopt.data import load_texts
    from bertopt.paths import resolve_path

    if eval:
        ev = load_texts(resolve_path(eval), text_column=text_column, label_column=label_column)
        h = HeldText(list(ev.texts), list(ev.labels) if label_column else None, f"{ev.path.name} ({len(ev)} texts)")
    else:
        td = load_texts(data_path, text_column=text_column, label_column=label_column)
        n = len(td.texts)
        start = limit if limit and limit < n else 0
        idx, how = split_holdout(td.texts, start, eval_samples, HOLDOUT_SEED)
        keep = [i for i in range(n) if i not in set(idx)][: limit or n]
        if len(keep) < 10:
            raise BertoptError(f"{data_path}: {n} texts leave {len(keep)} for training once {len(idx)} are held out for the budget",
                               hint="pass --eval FILE (held-out text), or use a larger --data file / smaller --eval-samples")
        labels = list(td.labels) if label_column else None
        h = HeldText([td.texts[i] for i in idx], [labels[i] for i in idx] if labels else None,
                     f"{len(idx)} texts of --data held out (seed {HOLDOUT_SEED}; never trained, early-stopped or calibrated on)")
        h.train_file = _write_csv(tmp / "train.csv", [td.texts[i] for i in keep], [labels[i] for i in keep] if labels else None,
                                  text_column, label_column)
        note(f"qat: the budget is measured on {h.source}")
    h.eval_file = _write_csv(tmp / "heldout.csv", h.texts, h.labels, text_column, label_column)
    return h


def _margin(r: dict, min_cosine: float | None, max_drop: float | None) -> tuple:
    """Sort key, larger is better: distance to the budget (calibrate's measure), then accuracy, min and mean cosine."""
    from bertopt.budget import margin

    return (margin(r, min_cosine, max_drop), r.get("accuracy", 0.0), r["_cosine_min"], r["cosine_mean"])


@dataclass
class Chooser:
    """Measures the candidates on held-out text against the FP32 export and picks the one to write."""

    fp32_onnx: Path
    texts: list[str]
    labels: list | None
    source: str
    max_length: int
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None
    id2label: dict | None = None
    output: str | None = None
    threads: int | None = None
    held: HeldOut | None = field(default=None, repr=False)

    @property
    def budget(self) -> bool:
        return self.min_cosine is not None or self.max_accuracy_drop is not None

    def _held(self) -> HeldOut:
        if self.held is None:
            import onnx

            from bertopt.calibrators.collect import make_batches
            from bertopt.calibrators.sensitivity import held_out
            from bertopt.data import encode_labels, load_tokenizer
            from bertopt.outputs import choose_for_onnx

            model = onnx.load(str(self.fp32_onnx))
            tok = load_tokenizer(self.fp32_onnx.parent / "tokenizer", str(self.fp32_onnx))
            names = [i.name for i in model.graph.input]
            batches = make_batches(tok, self.texts, names, self.max_length, 16)
            y = None
            if self.labels is not None:
                y = encode_labels(self.labels, self.id2label)
            choice = choose_for_onnx(model, requested=self.output, where=str(self.fp32_onnx)) if self.output else None
            self.held = held_out(model, batches, self.threads, y, self.source, choice=choice)
        return self.held

    def measure(self, onnx_path: Path) -> dict:
        import onnx

        return self._held().measure(onnx.load(str(onnx_path)))

    def choose(self, candidates: dict[str, Path], fallback=None) -> dict:
        """Measure ``candidates`` (name -> .onnx, the QAT export first); with a budget that none meets,
        ``fallback()`` -> (name, .onnx, extra record) adds calibrate's budget search. Returns the record;
        ``record['chosen_path']`` is the file to write."""
        res = {name: self.measure(p) for name, p in candidates.items()}
        paths = dict(candidates)
        extra: dict = {}
        ok = {n: meets(r, self.min_cosine, self.max_accuracy_drop) for n, r in res.items()} if self.budget else {}
        if self.budget and not any(ok.values()) and fallback is not None:
            name, path, extra = fallback()
            if path is not None:
                paths[name], res[name] = path, self.measure(path)
                ok[name] = meets(res[name], self.min_cosine, self.max_accuracy_drop)
        first = next(iter(candidates))
        best = max(res, key=lambda n: (_margin(res[n], self.min_cosine, self.max_accuracy_drop), n == first))
        if self.budget and any(ok.values()) and not ok[best]:  # cannot happen (margin >= 0 iff met); kept explicit
            best = next(n for n in res if ok[n])
        h = self._held()
        rec = {
            "held_out": {"source": self.source, "n": h.n, "output": h.evaluator.output},
            "candidates": {n: public(r) | ({"meets_budget": ok[n]} if self.budget else {}) for n, r in res.items()},
            "chosen": best,
            "chosen_path": paths[best],
        }
        if self.budget:
            rec = {"min_cosine": self.min_cosine, "max_accuracy_drop": self.max_accuracy_drop, "passed": bool(ok[best])} | rec
        if extra:
            rec["fallback"] = extra
        return rec


def render(rec: dict, title: str) -> None:
    from rich.table import Table

    acc = any("accuracy" in r for r in rec["candidates"].values())
    t = Table(title=title, title_justify="left")
    for col in ["candidate", "cosine min", "cosine mean"] + (["accuracy", "drop (points)"] if acc else []) + ["chosen"]:
        t.add_column(col, justify="left" if col == "candidate" else "right")
    for n, r in rec["candidates"].items():
        t.add_row(n, f"{r['cosine_min']:.5f}", f"{r['cosine_mean']:.5f}",
                  *([f"{r.get('accuracy', float('nan')):.4f}", f"{r.get('accuracy_drop_points', float('nan')):.2f}"] if acc else []),
                  "yes" if n == rec["chosen"] else "")
    console.print(t)


def fallback_calibrate(fp32_dir: Path, out: Path, o, *, data: Path, eval_file: Path, max_length: int):
    """calibrate's budget search (qat's options ``o`` for the budget and columns, calibrate's defaults otherwise)
    on the same export, calibration and held-out texts. Returns (name, its .onnx or None, a record of what it kept in float)."""
    from bertopt.artifacts import load_artifact
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.outdir import forget_outputs_under

    note("qat: neither the QAT model nor its start meets the budget: calibrate's search on the same texts "
         "(GEMMs back to float, most sensitive first, re-measured)")
    try:
        art = run_calibrate(fp32_dir, out, data=str(data), text_column=o.text_column, eval=str(eval_file),
                            label_column=o.label_column if o.max_accuracy_drop is not None else None, min_cosine=o.min_cosine,
                            max_accuracy_drop=o.max_accuracy_drop, max_float=o.max_float, max_length=max_length, trt_cache=False)
    except QualityGateError:
        art = load_artifact(out, verify=False) if (out / "manifest.json").is_file() else None
    forget_outputs_under(out)
    if art is None:
        return "calibrate-budget", None, {}
    b = art.manifest.get("metrics", {}).get("budget") or {}
    r = b.get("result", {})
    return "calibrate-budget", art.model_path, {"float_gemms": r.get("float_gemms", []), "quantized_gemms": r.get("quantized_gemms"),
                                                "est_latency_ms": r.get("est_latency_ms"), "steps": b.get("steps", []),
                                                "latency_ms": b.get("latency_ms")}
