"""Short calls on a 1-thread session: what ``build`` measures and what the runners route.

A batch-1 call of ~10 tokens does ~0.3 ms of arithmetic and ~1 ms of per-call work (thread-pool hand-offs,
allocation, output copies); a 2-thread intra-op pool makes that slower, not faster. ``bertopt build``
(ONNX Runtime) times the artifact's N-thread session against a 1-thread one at batch 1 over a range of
lengths, interleaved, and records the crossover in ``session.json``::

    "short_calls": {"max_tokens": 32, "intra_op_num_threads": 1}

A runner with more threads than that opens a second, 1-thread session beside its own and sends it every
call of at most ``max_tokens`` tokens (batch x padded length); the rest go to the N-thread session. Both
sessions hold the same graph, so outputs agree to float rounding. A runner already at 1 thread (e.g.
``bench --concurrency 2`` on 2 cores) opens no second session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# auto routes at most 64 tokens: at 128 a quick timing in build said 1 thread (7.0 vs 8.4 ms) where bench's longer one
# said 2 threads (9.6 vs 11.1 ms) on the same machine minutes later; below 64 both agree by a wide margin
LENGTHS = (8, 16, 32, 64)
SHORT_THREADS = 1
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MARGIN = 0.9  # 1 thread must be at least 10% faster at a length to take it


def effective_threads(cfg: dict, threads: int | None) -> int:
    """The intra-op threads a session made from ``cfg`` (and a ``threads`` override) runs with."""
    from bertopt.backends.onnxruntime import physical_cores

    return int(threads or cfg.get("intra_op_num_threads") or physical_cores())


def decide(model: Path, cfg: dict, mode: str, say: Callable[[str], None] | None = None) -> dict:
    """The manifest record of ``build --short-calls MODE`` (``max_tokens``: None = no second session)."""
    if mode == "off":
        return {"measured": False, "max_tokens": None, "why": "--short-calls off"}
    if mode != "auto":
        return {"measured": False, "max_tokens": int(mode), "why": f"--short-calls {mode}"}
    if effective_threads(cfg, None) <= SHORT_THREADS:
        return {"measured": False, "max_tokens": None, "why": f"the session already runs {SHORT_THREADS} thread"}
    return measure(model, cfg, say=say)


def measure(model: Path, cfg: dict, input_names: Sequence[str] | None = None, lengths: Sequence[int] = LENGTHS, rounds: int = 3,
            say: Callable[[str], None] | None = None) -> dict:
    """Time ``model`` with ``cfg``'s threads against 1 thread at batch 1 x ``lengths`` (interleaved, spinning
    off in both, as bench and concurrent callers run); the record for the manifest, with ``max_tokens``:
    the longest length up to which 1 thread is at least 10% faster at every length (None when it is not at the shortest)."""
    from bertopt.backends.onnxruntime import make_session, synthetic_feeds
    from bertopt.backends.ort_tune import _loadavg, interleaved_latency

    n = effective_threads(cfg, None)
    quiet = {**cfg, "session_config_entries": {**cfg.get("session_config_entries", {}), "session.intra_op.allow_spinning": "0"}}
    many, one = f"{n} threads", f"{SHORT_THREADS} thread"
    sessions = {many: make_session(model, quiet), one: make_session(model, quiet, threads=SHORT_THREADS)}
    ins = sessions[many].get_inputs()
    if "input_ids" not in {i.name for i in ins} or any(i.name not in TOKEN_INPUTS or i.type != "tensor(int64)" for i in ins):
        return {"measured": False, "max_tokens": None,
                "why": "not timed: the graph's inputs are not int64 token ids (" + ", ".join(f"{i.name} {i.type}" for i in ins) + ")"}
    input_names = input_names or [i.name for i in ins]
    feeds = {s: synthetic_feeds(input_names, 1, s, seed=s) for s in lengths}
    runs = {k: (lambda f, s=s: s.run(None, f)) for k, s in sessions.items()}
    if say:
        say(f"timing {one} vs {many} at batch 1 x {'/'.join(map(str, lengths))} tokens ({rounds} rounds)")
    load = _loadavg()
    try:
        lat = interleaved_latency(runs, feeds, rounds=rounds, min_time=0.05, min_calls=5)
    except Exception as e:  # noqa: BLE001 - a graph that does not run on synthetic token ids at these lengths keeps one session
        return {"measured": False, "max_tokens": None, "why": f"not timed: the graph did not run at batch 1 x {lengths[0]} tokens ({str(e)[:200]})"}
    max_tokens = None
    for s in lengths:  # contiguous from the shortest: routing is a single threshold
        if lat[one][s] > MARGIN * lat[many][s]:
            break
        max_tokens = s
    return {"measured": True, "why": f"1 thread >= 10% faster than {n} up to {max_tokens} tokens" if max_tokens else
            f"1 thread not 10% faster than {n} at {lengths[0]} tokens", "batch": 1, "latency_ms": {k: {str(s): v for s, v in d.items()} for k, d in lat.items()},
            "max_tokens": max_tokens, "threads": n, "load_average": {"before": load, "after": _loadavg(), "cores": os.cpu_count()}}


def routed(model_path: str | Path, cfg: dict, threads: int | None, open_session: Callable[..., object]):
    """(session for long calls, session for short calls or None, max_tokens or None). ``open_session(path, cfg,
    threads)`` opens one session; the short one is opened only when ``cfg`` has ``short_calls`` and the long
    one runs with more threads than it."""
    long_s = open_session(model_path, cfg, threads)
    sc = cfg.get("short_calls")
    if not sc or effective_threads(cfg, threads) <= sc["intra_op_num_threads"]:
        return long_s, None, None
    return long_s, open_session(model_path, cfg, sc["intra_op_num_threads"]), int(sc["max_tokens"])


def tokens(feeds: dict[str, np.ndarray]) -> int:
    """A call's size as routed: batch x padded length of ``input_ids``."""
    ids = feeds.get("input_ids")
    if ids is None:
        ids = next(iter(feeds.values()))
    return int(np.asarray(ids).size)
