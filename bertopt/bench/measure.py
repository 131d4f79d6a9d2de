"""Latency sweeps (interleaved), fidelity against the first artifact, task accuracy."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from bertopt.bench.runners import Runner
from bertopt.data import encode_labels, tokenize
from bertopt.outputs import row_cosines


def sweep_feeds(runner: Runner, batch: int, seq: int, texts: Sequence[str] | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of exactly ``batch`` x ``seq``: real text padded/truncated to ``seq`` when given, else
    random token ids with a full mask (the worst case: no padding)."""
    if texts:
        tok = runner.tokenizer
        rows = [texts[i % len(texts)] for i in range(batch)]
        return tokenize(tok, rows, runner.input_names, max_length=seq, pad_to=seq)
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in runner.input_names}


def latency_sweep(
    runners: Sequence[Runner],
    grid: Sequence[tuple[int, int]],
    texts: Sequence[str] | None,
    warmup: int,
    iters: int,
    repeats: int,
    advance=lambda: None,
) -> dict[str, list[dict]]:
    """For each shape: ``repeats`` passes; in each pass every runner does ``iters`` timed calls in
    turn (interleaved, so drift on a noisy machine hits all runners alike; the order reverses every
    other pass). Percentiles are over
    all timed calls; ``pass_medians_ms`` keeps each pass's median to show the drift."""
    out: dict[str, list[dict]] = {r.name: [] for r in runners}
    for batch, seq in grid:
        why = {r.name: r.refuses(batch, seq) for r in runners if r.refuses is not None}
        for r in runners:
            if why.get(r.name):
                out[r.name].append({"batch": batch, "seq": seq, "skipped": why[r.name]})
                for _ in range(repeats):
                    advance()
        active = [r for r in runners if not why.get(r.name)]
        feeds = {r.name: sweep_feeds(r, batch, seq, texts) for r in active}
        times: dict[str, list[float]] = {r.name: [] for r in active}
        medians: dict[str, list[float]] = {r.name: [] for r in active}
        for r in active:
            for _ in range(warmup):
                r(feeds[r.name])
        for rep in range(repeats):
            # reversed every other pass: under load the runner that goes first in a pass measured
            # ~1.3x faster than an identical one after it (same CPU time), so no runner keeps that seat
            for r in active if rep % 2 == 0 else active[::-1]:
                f = feeds[r.name]
                t_pass = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    r(f)
                    t_pass.append((time.perf_counter() - t0) * 1e3)
                times[r.name] += t_pass
                medians[r.name].append(float(np.median(t_pass)))
                advance()
        for r in active:
            t = np.asarray(times[r.name])
            p50 = float(np.percentile(t, 50))
            out[r.name].append({
                "batch": batch,
                "seq": seq,
                "latency_ms": {"p50": round(p50, 3), "p90": round(float(np.percentile(t, 90)), 3),
                               "p99": round(float(np.percentile(t, 99)), 3), "mean": round(float(t.mean()), 3)},
                "throughput": round(batch * 1e3 / p50, 2),
                "pass_medians_ms": [round(m, 3) for m in medians[r.name]],
                "calls": int(t.size),
            })
    # ratio against the first runner, shape by shape (none where either side skipped the shape)
    ref = {(x["batch"], x["seq"]): x for x in out[runners[0].name]}
    for r in runners:
        for res in out[r.name]:
            base = ref.get((res["batch"], res["seq"]))
            if "latency_ms" in res and base is not None and "latency_ms" in base:
                res["speedup"] = round(base["latency_ms"]["p50"] / res["latency_ms"]["p50"], 3)
    return out


def run_texts(runner: Runner, texts: Sequence[str], max_length: int, batch_size: int = 16, advance=lambda n: None, *,
              outputs: Sequence[str] | None = None, tokenize_lock=None) -> dict[str, np.ndarray]:
    """All outputs of ``runner`` (or only ``outputs``) over ``texts`` (dynamic padding), plus the attention masks.
    ``tokenize_lock`` is held while tokenizing only (HF fast tokenizers are not thread-safe; the model run is)."""
    import contextlib

    tok = runner.tokenizer
    batch_size = min(batch_size, runner.max_batch or batch_size)
    chunks: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(texts), batch_size):
        with tokenize_lock or contextlib.nullcontext():
            feeds = tokenize(tok, texts[i:i + batch_size], runner.input_names, max_length=min(max_length, runner.max_length))
        res = runner(feeds, outputs)
        res["__mask__"] = feeds["attention_mask"]
        for k, v in res.items():
            chunks.setdefault(k, []).append(v)
        advance(len(texts[i:i + batch_size]))
    out = {}
    masks = chunks.get("__mask__", [])
    for k, parts in chunks.items():
        per_token = k == "__mask__" or (k not in ("logits", "sentence_embedding", "pooler_output") and all(
            p.ndim >= 2 and p.shape[:2] == m.shape for p, m in zip(parts, masks)))
        if per_token:
            # one value (or vector) per token, rows padded to different lengths per batch: keep per-row arrays
            out[k] = [row for p in parts for row in p]
        else:
            out[k] = np.concatenate(parts)
    return out


def pooled(outputs: dict, choice) -> tuple[str, np.ndarray]:
    """The vector bench compares (``choice``: :func:`bertopt.outputs.choose_for_arrays`) and its label."""
    label = f"mean_pooled_{choice.name}" if choice.kind == "hidden" else choice.name
    return label, choice.vectors(outputs[choice.name], outputs.get("__mask__"))


def fidelity(ref: dict, got: dict, ref_choice, choice) -> dict:
    """Cosine (min, mean) of the compared outputs, max abs diff, top-1 agreement for classifiers."""
    label_r, a = pooled(ref, ref_choice)
    label_g, b = pooled(got, choice)
    kind_r = label_r if label_r == label_g else f"{label_r} vs {label_g}"
    if (ref_choice.kind == "logits") != (choice.kind == "logits"):
        return {"compared": kind_r, "error": "one artifact is a classifier, the other is not", "output": choice.as_dict()}
    if a.shape != b.shape:
        return {"compared": kind_r, "error": f"the compared outputs differ in shape ({a.shape[1:]} vs {b.shape[1:]})",
                "output": choice.as_dict()}
    cos = row_cosines(a, b)
    res = {
        "compared": kind_r,
        "n": int(len(cos)),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "max_abs_diff": _sig(float(np.abs(a - b).max())),
        "top1_agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 6) if choice.kind == "logits" else None,
        "output": choice.as_dict(),
    }
    if "last_hidden_state" in ref and "last_hidden_state" in got:
        res["hidden_max_abs_diff"] = _sig(max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                                               for x, y in zip(ref["last_hidden_state"], got["last_hidden_state"])))
    return res


def _sig(x: float) -> float:
    """Four significant digits: small differences must not round to zero."""
    return float(f"{x:.4g}")


def accuracy(runner: Runner, outputs: dict, labels: list, name: str = "logits") -> dict | None:
    """Top-1 accuracy of the classifier output ``name`` (see :func:`bertopt.outputs.choose_output`); None if absent."""
    if name not in outputs:
        return None
    y = encode_labels(labels, runner.id2label)
    pred = np.asarray(outputs[name]).argmax(1)
    return {"value": round(float((pred == y).mean()), 6), "n": int(len(y))}
