"""Latency sweeps (interleaved), fidelity against the first artifact, task accuracy."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from bertopt.bench.runners import Runner
from bertopt.data import encode_labels, tokenize


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
    turn (interleaved, so drift on a noisy machine hits all runners alike). Percentiles are over
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
        for _ in range(repeats):
            for r in active:
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


def run_texts(runner: Runner, texts: Sequence[str], max_length: int, batch_size: int = 16, advance=lambda n: None) -> dict[str, np.ndarray]:
    """All outputs of ``runner`` over ``texts`` (dynamic padding), plus the attention masks."""
    tok = runner.tokenizer
    batch_size = min(batch_size, runner.max_batch or batch_size)
    chunks: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(texts), batch_size):
        feeds = tokenize(tok, texts[i:i + batch_size], runner.input_names, max_length=min(max_length, runner.max_length))
        res = runner(feeds)
        res["__mask__"] = feeds["attention_mask"]
        for k, v in res.items():
            chunks.setdefault(k, []).append(v)
        advance(len(texts[i:i + batch_size]))
    out = {}
    for k, parts in chunks.items():
        if parts[0].ndim >= 2 and k in ("last_hidden_state", "__mask__"):
            # rows padded to different lengths per batch: keep per-row arrays
            out[k] = [row for p in parts for row in p]
        else:
            out[k] = np.concatenate(parts)
    return out


def pooled(outputs: dict) -> tuple[str, np.ndarray]:
    """The vector bench compares: logits, else the model's sentence embedding, else mean pooling."""
    if "logits" in outputs:
        return "logits", np.asarray(outputs["logits"], dtype=np.float64)
    if "sentence_embedding" in outputs:
        return "sentence_embedding", np.asarray(outputs["sentence_embedding"], dtype=np.float64)
    rows = []
    for h, m in zip(outputs["last_hidden_state"], outputs["__mask__"]):
        n = int(m.sum())
        rows.append(np.asarray(h[:n], dtype=np.float64).mean(0))
    return "mean_pooled_last_hidden_state", np.stack(rows)


def fidelity(ref: dict, got: dict) -> dict:
    """Cosine (min, mean) of pooled outputs, max abs diff, top-1 agreement for classifiers."""
    kind_r, a = pooled(ref)
    kind_g, b = pooled(got)
    if kind_r != kind_g and "logits" in (kind_r, kind_g):
        return {"compared": f"{kind_r} vs {kind_g}", "error": "one artifact is a classifier, the other is not"}
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    res = {
        "compared": kind_r,
        "n": int(len(cos)),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "max_abs_diff": _sig(float(np.abs(a - b).max())),
        "top1_agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 6) if kind_r == "logits" else None,
    }
    if "last_hidden_state" in ref and "last_hidden_state" in got:
        res["hidden_max_abs_diff"] = _sig(max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                                               for x, y in zip(ref["last_hidden_state"], got["last_hidden_state"])))
    return res


def _sig(x: float) -> float:
    """Four significant digits: small differences must not round to zero."""
    return float(f"{x:.4g}")


def accuracy(runner: Runner, outputs: dict, labels: list) -> dict | None:
    if "logits" not in outputs:
        return None
    y = encode_labels(labels, runner.id2label)
    pred = np.asarray(outputs["logits"]).argmax(1)
    return {"value": round(float((pred == y).mean()), 6), "n": int(len(y))}
