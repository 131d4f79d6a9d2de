"""Accuracy budget for ``calibrate``: find the fastest Q/DQ model that meets it on held-out text.

``--min-cosine X`` (min over held-out texts of the primary output's cosine vs the FP32 input model)
and/or ``--max-accuracy-drop P`` (classifier accuracy on labeled held-out text, in points below
FP32). The calibrated model is measured first; when it misses the budget, GEMMs go back to float
one at a time, most sensitive first (the ``--sensitivity-report`` ranking: output error with only that GEMM
quantized, on the held-out text), each candidate re-measured, until the budget holds. Then the
walk is pruned backwards: each GEMM it put in float is tried in INT8 again, latest first, and stays
INT8 when the budget still holds (on MiniLM the min cosine hangs on one GEMM, layer 5's FFN output,
ranked 8th by mean error: the pruning returns the seven before it to INT8). Ranking by what each
GEMM alone buys (leave-one-out) was tried and measured worse: the min cosine is a joint effect. It gives up after ``max_float`` GEMMs (default: a quarter of them;
a model mostly in float is not an INT8 model) and then keeps the best candidate it measured.

Every step is recorded (which GEMM, what it bought, what it costs). The cost of a float GEMM is
estimated from its FLOPs at this project's measured CPU rates (FP32 GEMM ~148 GFLOP/s, INT8 GEMM
~0.7 TOP/s with 2 threads, see ANCHORS.md), per 128-token sequence; the start and the chosen model
are also timed on ONNX Runtime (batch 1, seq 128, interleaved, briefly: noisy on a shared machine).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from bertopt.budget import HeldOut, margin, meets, public
from bertopt.ui import note

FP32_GEMM_FLOPS_PER_S = 148e9  # measured, 2 threads (ANCHORS.md)
INT8_GEMM_OPS_PER_S = 0.7e12
EST_TOKENS = 128


def float_cost_ms(target) -> float:
    """Estimated extra ms per 128-token sequence when ``target`` runs in float instead of INT8."""
    if not target.shape or len(target.shape) != 2:
        return 0.0
    k, n = target.shape
    ops = 2.0 * k * n * EST_TOKENS
    return 1e3 * ops * (1.0 / FP32_GEMM_FLOPS_PER_S - 1.0 / INT8_GEMM_OPS_PER_S)


def search(
    quant: Sequence,
    ranking: Sequence[str],
    build: Callable[[Sequence], object],
    held: HeldOut,
    limits,
    *,
    max_float: int,
    advance: Callable[[int], None] = lambda n: None,
    start: dict | None = None,
) -> tuple[list, dict]:
    """Returns (the GEMMs to quantize, the record for the manifest). ``build(subset)`` is the model to
    measure; ``limits`` holds the budget (``min_cosine``, ``max_accuracy_drop``: the options object)."""
    quant = list(quant)
    order = [n for n in ranking if any(t.node == n for t in quant)]
    min_cosine, max_accuracy_drop = limits.min_cosine, limits.max_accuracy_drop

    def measure(subset):  # a candidate measured is one step of the progress bar
        r = held.measure(build(subset))
        advance(1)
        return r

    start = start or held.measure(build(quant))
    advance(1)
    walk = _Walk(quant, {t.node: t for t in quant}, measure, min_cosine, max_accuracy_drop)
    walk.tried.append((list(quant), start))
    passed = meets(start, min_cosine, max_accuracy_drop)
    if not passed:
        passed = walk.walk(order[:max_float], start)
    if passed:
        chosen, best = walk.prune(*walk.tried[-1])
    else:  # the candidate closest to the budget
        chosen, best = max(walk.tried, key=lambda cr: margin(cr[1], min_cosine, max_accuracy_drop))
    floated = [t.node for t in quant if t not in chosen]
    record = {
        "min_cosine": min_cosine,
        "max_accuracy_drop": max_accuracy_drop,
        "held_out": {"source": held.source, "n": held.n, "output": held.evaluator.output},
        "max_float": max_float,
        "passed": passed,
        "start": public(start) | {"quantized_gemms": len(quant)},
        "steps": walk.steps,
        "result": public(best) | {"quantized_gemms": len(chosen), "float_gemms": floated,
                                  "est_latency_ms": round(sum(float_cost_ms(walk.by_node[n]) for n in floated), 4)},
        "latency_estimate": f"extra ms per {EST_TOKENS}-token sequence for a GEMM in float: its FLOPs at "
                            f"{FP32_GEMM_FLOPS_PER_S / 1e9:.0f} GFLOP/s (FP32) instead of {INT8_GEMM_OPS_PER_S / 1e12:.1f} TOP/s (INT8), this project's measured 2-thread rates",
    }
    return chosen, record


@dataclass
class _Walk:
    """The search's state: every candidate measured (``tried``) and the steps recorded for the manifest."""

    quant: list
    by_node: dict
    measure: Callable
    min_cosine: float | None
    max_accuracy_drop: float | None
    steps: list[dict] = field(default_factory=list)
    tried: list = field(default_factory=list)

    def walk(self, order: Sequence[str], start: dict) -> bool:
        """Put the GEMMs of ``order`` in float one at a time, measuring each candidate, until the budget
        holds; True if it did."""
        cur = list(self.quant)
        res = start
        for node in order:
            cur = [t for t in cur if t.node != node]
            if not cur:
                break
            prev = res
            res = self.measure(cur)
            self.steps.append({
                "float": node,
                "cosine_min": res["cosine_min"], "cosine_mean": res["cosine_mean"],
                "cosine_min_gain": round(res["_cosine_min"] - prev["_cosine_min"], 6),
                **({"accuracy": res["accuracy"], "accuracy_drop_points": res["accuracy_drop_points"]} if "accuracy" in res else {}),
                "est_latency_ms": round(float_cost_ms(self.by_node[node]), 4),
            })
            self.tried.append((list(cur), res))
            if meets(res, self.min_cosine, self.max_accuracy_drop):
                return True
        return False

    def prune(self, chosen: list, best: dict) -> tuple[list, dict]:
        """Try each GEMM the walk put in float in INT8 again, latest first; it stays INT8 when the budget
        still holds (its step is marked ``pruned``). Returns the GEMMs to quantize and their measurement."""
        pruned = []
        for s_ in reversed(self.steps[:-1]):  # the last step is what made it pass
            cand = chosen + [self.by_node[s_["float"]]]
            r = self.measure([t for t in self.quant if t in cand])
            if meets(r, self.min_cosine, self.max_accuracy_drop):
                chosen, best = [t for t in self.quant if t in cand], r
                pruned.append(s_["float"])
        for s_ in self.steps:
            if s_["float"] in pruned:
                s_["pruned"] = "back to INT8: the budget holds without it"
        return chosen, best




def time_models(models: dict, feeds: dict, threads: int | None = None, iters: int = 15, rounds: int = 3) -> dict:
    """Median ms per call of each model on ``feeds``, interleaved round by round (ORT, spinning off)."""
    from bertopt.graph import ort_session

    sessions = {name: ort_session(m, "ORT_ENABLE_ALL", threads, spinning=False) for name, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(iters):
                t = time.perf_counter()
                s.run(None, feeds)
                times[name].append((time.perf_counter() - t) * 1e3)
    return {n: round(float(np.median(v)), 3) for n, v in times.items()}


def render(record: dict) -> None:
    from rich.table import Table

    from bertopt.ui import console

    goal = []
    if record["min_cosine"] is not None:
        goal.append(f"min cosine >= {record['min_cosine']}")
    if record["max_accuracy_drop"] is not None:
        goal.append(f"accuracy drop <= {record['max_accuracy_drop']} points")
    acc = "accuracy" in record["start"]
    table = Table(title=f"calibrate: accuracy budget ({', '.join(goal)}) on {record['held_out']['source']}", title_justify="left")
    for col in ["step", "GEMMs INT8", "cosine min", "cosine mean"] + (["accuracy", "drop (points)"] if acc else []) + ["est. +ms/seq"]:
        table.add_column(col, justify="left" if col == "step" else "right")

    def row(label, n, r, ms):
        table.add_row(label, str(n), f"{r['cosine_min']:.5f}", f"{r['cosine_mean']:.5f}",
                      *([f"{r['accuracy']:.4f}", f"{r['accuracy_drop_points']:.2f}"] if acc else []), ms)

    n = record["start"]["quantized_gemms"]
    row("calibrated", n, record["start"], "")
    for s in record["steps"]:
        n -= 1
        row(f"+ float {s['float']}" + (" (pruned: INT8 again)" if s.get("pruned") else ""), n, s, f"{s['est_latency_ms']:+.3f}")
    console.print(table)
    r = record["result"]
    lat = record.get("latency_ms")
    msg = (f"calibrate: budget {'met' if record['passed'] else 'NOT met'}: {r['quantized_gemms']} GEMMs INT8, "
           f"{len(r['float_gemms'])} back in float ({', '.join(r['float_gemms']) or 'none'}), held-out cosine min {r['cosine_min']:.5f}"
           + (f", accuracy {r['accuracy']:.4f} (FP32 {r['accuracy_fp32']:.4f})" if "accuracy" in r else "")
           + f"; est. +{r['est_latency_ms']:.3f} ms per 128-token sequence")
    if lat:
        msg += f"; measured b1 seq128 {lat['start']:.2f} -> {lat['result']:.2f} ms ({lat['note']})"
    console.print(msg, markup=False)
    if not record["passed"]:
        note("calibrate: no candidate met the budget; the artifact holds the best one found (manifest: budget.passed false)")


def apply_budget(job, td, tok, names) -> None:
    """Called by calibrate's :class:`~bertopt.calibrators.job.Job` once ranges are set: measure, search if needed, set
    ``job.quant`` and ``job.budget`` (the manifest record)."""
    from bertopt.calibrators.collect import make_batches
    from bertopt.budget import split_holdout
    from bertopt.calibrators.sensitivity import held_out, layer_sensitivity
    from bertopt.data import encode_labels, load_texts, tokenize
    from bertopt.errors import BertoptError
    from bertopt.passes.qkv_bias import merge_qkv_bias
    from bertopt.ui import progress

    o = job.o
    labels = None
    if o.eval:
        ev = load_texts(o.eval, text_column=o.text_column, label_column=o.label_column)
        texts, source = ev.texts, f"{ev.path.name} ({len(ev)} texts)"
        if o.label_column:
            try:
                labels = encode_labels(ev.labels, job.art.model_info.get("id2label"))
            except BertoptError as e:
                raise BertoptError(f"{ev.path}: {e.message}", hint=e.hint) from None
    else:
        used = min(o.samples, len(td.texts))
        idx, source = split_holdout(td.texts, used, o.eval_samples)
        if not idx:
            raise BertoptError(f"{td.path}: all {len(td.texts)} texts are calibration texts; none is left to check the budget on",
                               hint="pass --eval FILE (held-out text), or use fewer --samples than the file has texts")
        texts = [td.texts[i] for i in idx]
        note(f"calibrate: the budget is measured on {source}")
    batches = make_batches(tok, texts, names, o.max_length, o.batch_size)
    held = held_out(job.model, batches, job.o.threads, labels, source, choice=job.choice)
    quant = list(job.quant)
    max_float = o.max_float or max(1, len(quant) // 4)

    min_cos, max_drop = o.min_cosine, o.max_accuracy_drop
    start = held.measure(merge_qkv_bias(job.build(quant))[0])
    ranking: list[str] = []
    if not meets(start, min_cos, max_drop):
        if job.report_rows is None:
            with progress() as prog:
                t = prog.add_task("calibrate: per-GEMM sensitivity (for the budget search)", total=len(quant), status="")
                job.report_rows = layer_sensitivity(quant, job.build, held.evaluator, advance=lambda k: prog.advance(t, k))
        ranking = [r["node"] for r in job.report_rows]
    with progress() as prog:
        t = prog.add_task("calibrate: budget search on held-out text", total=1 + min(max_float, len(ranking)), status="")
        chosen, record = search(quant, ranking, lambda subset: merge_qkv_bias(job.build(subset))[0], held, o, max_float=max_float,
                                advance=lambda k: prog.advance(t, k), start=start)
    if record["steps"]:
        feeds = tokenize(tok, texts[:1], names, max_length=128, pad_to=128)
        lat = time_models({"start": merge_qkv_bias(job.build(quant))[0], "result": merge_qkv_bias(job.build(chosen))[0]},
                          feeds, job.o.threads)
        record["latency_ms"] = lat | {"note": "ONNX Runtime, batch 1, seq 128, median of 45 interleaved calls, spinning off; "
                                              "noisy on a shared machine"}
    for t in quant:
        if t not in chosen:
            job.skipped[t.node] = "budget"
    job.quant = chosen
    job.budget = record
    render(record)
