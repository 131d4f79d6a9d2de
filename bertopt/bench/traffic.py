"""``bench --lengths real``: batches of real texts padded per batch (as a server pads), optionally
length-sorted first (as batching servers do), timed as whole passes over the texts. Each call asks for
what a service returns (:attr:`Runner.serving_outputs`: the sentence embedding or logits).

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
                r(f, r.serving_outputs)
        calls: dict[str, list[float]] = {r.name: [] for r in active}
        passes: dict[str, list[float]] = {r.name: [] for r in active}
        for _ in range(repeats):
            for r in active:
                t_pass, served = time.perf_counter(), r.serving_outputs
                for f in feeds[r.name]:
                    t0 = time.perf_counter()
                    r(f, served)
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


def concurrent_traffic(runners: Sequence[Runner], texts: Sequence[str], batches: Sequence[int], max_length: int, *, callers: int,
                       threads: int, repeats: int, single: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``bench --concurrency N``: the same real-length batches served by N callers at once, each a thread with its
    own runner (session / compiled model) of ``threads // N`` intra-op threads, the batches dealt round-robin;
    sequences/s over the whole pass, against ``single`` (the one-caller pass of :func:`real_traffic`)."""
    from bertopt.bench.runners import open_runner

    per = max(1, threads // callers)
    out: dict[str, list[dict]] = {}
    pools: dict[str, list[Runner]] = {}
    for r in runners:
        if r.backend not in ("onnxruntime", "openvino"):
            out[r.name] = [{"batch": b, "skipped": f"--concurrency runs ONNX Runtime and OpenVINO artifacts, not {r.backend}"} for b in batches]
            continue
        out[r.name] = []
        pools[r.name] = [open_runner(r.path, per, name=r.name, spinning=False) for _ in range(callers)]
    for b in batches:
        feeds = {name: batches_of(pool[0], texts, b, min(max_length, pool[0].max_length), sort=False) for name, pool in pools.items()}
        for name, pool in pools.items():
            for caller in pool:
                for f in feeds[name][:2]:
                    caller(f, caller.serving_outputs)
        passes: dict[str, list[float]] = {name: [] for name in pools}
        for _ in range(repeats):
            for name, pool in pools.items():
                passes[name].append(_serve(pool, feeds[name]))
        for name in pools:
            sec = float(np.median(passes[name]))
            one = next((x for x in single.get(name, []) if x.get("batch") == b and "sequences_per_s" in x), None)
            row = {"batch": b, "callers": callers, "threads_per_caller": per, "texts": len(texts), "seconds": round(sec, 4),
                   "sequences_per_s": round(len(texts) / sec, 2), "pass_seconds": [round(x, 4) for x in passes[name]]}
            if one:
                row["single_caller_sequences_per_s"] = one["sequences_per_s"]
                row["speedup_vs_single"] = round(row["sequences_per_s"] / one["sequences_per_s"], 3)
            out[name].append(row)
    return out


def _serve(pool: Sequence[Runner], feeds: list[dict]) -> float:
    """Seconds for len(pool) threads to run ``feeds`` (caller i takes every len(pool)-th batch from i), started together."""
    import threading

    n = len(pool)
    start = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        served = pool[i].serving_outputs
        start.wait()
        try:
            for f in feeds[i::n]:
                pool[i](f, served)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for w in workers:
        w.start()
    start.wait()
    t = time.perf_counter()
    for w in workers:
        w.join()
    sec = time.perf_counter() - t
    if errors:
        raise errors[0]
    return sec
