"""``bench --lengths real``: batches of real texts padded per batch (as a server pads), optionally
length-sorted first (as batching servers do), timed as whole passes over the texts.

Next to the fixed ``batch x seq`` grid (every row padded to ``seq``, the worst case), this measures what
real traffic costs: sequences/s and non-padding tokens/s over a pass, and the latency of each batch call.
Passes are interleaved across artifacts (``repeats`` rounds, each artifact one pass per round), like the grid.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from bertopt.bench.runners import Runner
from bertopt.data import tokenize


def batches_of(runner: Runner, texts: Sequence[str], batch: int, max_length: int, sort: bool) -> list[dict[str, np.ndarray]]:
    """Feeds for consecutive batches of ``texts`` (sorted by token length when ``sort``), each padded
    to its own longest text and truncated at ``max_length``."""
    tok = runner.tokenizer
    order = list(range(len(texts)))
    if sort:
        lengths = [len(ids) for ids in tok(list(texts), truncation=True, max_length=max_length)["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    rows = [texts[i] for i in order]
    return [tokenize(tok, rows[i:i + batch], runner.input_names, max_length=max_length) for i in range(0, len(rows), batch)]


def real_traffic(runners: Sequence[Runner], texts: Sequence[str], batches: Sequence[int], max_length: int, *, sort: bool,
                 warmup: int, repeats: int, advance=lambda: None) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {r.name: [] for r in runners}
    for b in batches:
        feeds: dict[str, list[dict]] = {}
        for r in runners:
            fs = batches_of(r, texts, b, min(max_length, r.max_length), sort)
            why = next((w for f in fs if r.refuses is not None and (w := r.refuses(*f["input_ids"].shape))), None)
            if why:
                out[r.name].append({"batch": b, "skipped": why})
                for _ in range(repeats):
                    advance()
                continue
            feeds[r.name] = fs
        active = [r for r in runners if r.name in feeds]
        for r in active:
            for f in feeds[r.name][:warmup]:
                r(f)
        calls: dict[str, list[float]] = {r.name: [] for r in active}
        passes: dict[str, list[float]] = {r.name: [] for r in active}
        for _ in range(repeats):
            for r in active:
                t_pass = time.perf_counter()
                for f in feeds[r.name]:
                    t0 = time.perf_counter()
                    r(f)
                    calls[r.name].append((time.perf_counter() - t0) * 1e3)
                passes[r.name].append(time.perf_counter() - t_pass)
                advance()
        for r in active:
            fs = feeds[r.name]
            tokens = int(sum(int(f["attention_mask"].sum()) for f in fs))
            padded = int(sum(f["input_ids"].size for f in fs))
            sec = float(np.median(passes[r.name]))
            c = np.asarray(calls[r.name])
            out[r.name].append({
                "batch": b, "sorted": sort, "texts": len(texts), "batches": len(fs), "tokens": tokens, "padded_tokens": padded,
                "padding": round(1 - tokens / padded, 4), "seconds": round(sec, 4),
                "sequences_per_s": round(len(texts) / sec, 2), "tokens_per_s": round(tokens / sec, 1),
                "batch_latency_ms": {p: round(float(np.percentile(c, q)), 3) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
                "pass_seconds": [round(x, 4) for x in passes[r.name]],
            })
    return out
