"""The session search of ``build_onnxruntime(tuning=...)``: the offline optimization level and one session
knob at a time, measured interleaved on this machine, the winners combined and confirmed against the input
model run plainly."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bertopt.backends.onnxruntime import Tuning, make_session, physical_cores
from bertopt.backends.ort_rewrites import fold_int8_gemm_bias, merge_int8_gemms_sharing_input
from bertopt.graph import op_counts, ort_optimize, ort_refusal


def interleaved_latency(
    runs: dict[str, Callable[[dict], Any]],
    feeds: dict[int, dict[str, np.ndarray]],
    rounds: int = 3,
    min_time: float = 0.25,
    min_calls: int = 3,
    on_round: Callable[[], None] | None = None,
) -> dict[str, dict[int, float]]:
    """Median latency (ms) of each variant at each batch, measured interleaved so drift hits all alike.

    Each round times every variant at every batch (the median of at least ``min_calls`` calls and
    ``min_time`` seconds); the result is the median over rounds. On shared machines passes drift
    10-30 %, so only variants measured in the same call are comparable.
    """
    for run in runs.values():  # warm-up: arenas, prepacking, thread pools
        for f in feeds.values():
            run(f)
    per: dict[str, dict[int, list[float]]] = {k: {b: [] for b in feeds} for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for b, f in feeds.items():
                ts: list[float] = []
                t_end = time.perf_counter() + min_time
                while len(ts) < min_calls or time.perf_counter() < t_end:
                    t = time.perf_counter()
                    run(f)
                    ts.append(time.perf_counter() - t)
                per[name][b].append(statistics.median(ts) * 1000)
        if on_round:
            on_round()
    return {k: {b: round(statistics.median(v), 3) for b, v in d.items()} for k, d in per.items()}


def score(lat: dict[int, float], base: dict[int, float]) -> float:
    """Geometric mean of the latency ratios to ``base`` over the measured batches (lower is better)."""
    ratios = [lat[b] / base[b] for b in base]
    return float(np.exp(np.mean(np.log(ratios))))


def candidate_configs(base: dict) -> dict[str, dict]:
    """One-knob variations of ``base`` for the session search (each kept only if it wins)."""
    def with_entry(key: str, value: str) -> dict:
        c = json.loads(json.dumps(base))
        c["session_config_entries"][key] = value
        return c

    out = {
        "spinning off": with_entry("session.intra_op.allow_spinning", "0"),
        "dynamic block base 4": with_entry("session.dynamic_block_base", "4"),
        "arena off": {**json.loads(json.dumps(base)), "enable_cpu_mem_arena": False},
    }
    n = base.get("intra_op_num_threads") or 1
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if logical > n:
        out[f"{logical} threads (logical cores)"] = {**json.loads(json.dumps(base)), "intra_op_num_threads": logical}
    return out


def tune_session(src: Path, model_out: Path, tmp: Path, base: dict, tuning: Tuning, decision: dict, say) -> dict:
    """The session search of ``build_onnxruntime(tuning=...)``: search, then confirm against the input model
    run plainly; rewrites ``model_out`` when another form wins; returns the session config."""
    feeds, seq, rounds = tuning.feeds, tuning.seq, tuning.rounds
    variants = _variants(src, model_out, tmp, base, decision, say)
    say(f"measuring {len(variants)} session variants x {rounds} rounds (batch {'/'.join(map(str, feeds))}, seq {seq})")
    load_before = _loadavg()
    lat1 = _measure(variants, feeds, rounds)
    scores = {k: round(score(v, lat1["extended"]), 4) for k, v in lat1.items()}
    if "all (hardware-specific)" in lat1 and scores["all (hardware-specific)"] < 0.97:
        os.replace(tmp / "model-all.onnx", model_out)
        decision["offline_optimization"] = "ORT_ENABLE_ALL"
        decision["all_vs_extended"] = f"ORT_ENABLE_ALL {(1 - scores['all (hardware-specific)']) * 100:.1f}% faster: kept (valid on this machine type only)"
    elif "all (hardware-specific)" in lat1:
        decision["all_vs_extended"] = "ORT_ENABLE_ALL not >3% faster: EXTENDED kept (portable)"
    winners = [k for k in candidate_configs(base) if scores[k] < 0.97]
    tuned = _combine(base, winners)
    final = {"input model, plain": (src, None), "extended": (model_out, base)}
    if winners:
        final["tuned"] = (model_out, tuned)
    say(f"confirming: {', '.join(final)}")
    lat2 = _measure(final, feeds, rounds)
    ref2 = lat2["input model, plain"]
    scores2 = {k: round(score(v, ref2), 4) for k, v in lat2.items()}
    best = min(scores2, key=lambda k: (scores2[k], k != "extended"))
    decision.update(
        search={"shape": {"batches": list(feeds), "seq": seq}, "rounds": rounds, "latency_ms": _jsonable(lat1), "score_vs_extended": scores},
        winners=winners,
        confirm={"latency_ms": _jsonable(lat2), "score_vs_plain": scores2},
        chosen=best,
        # Spinning threads and pool sizes win or lose with the machine's load: a choice made on a
        # busy shared host (load above the core count) can be slower on a quiet one, and back.
        load_average={"before": load_before, "after": _loadavg(), "cores": physical_cores()},
        plain_latency_ms=_jsonable({"search": lat1["input model, plain"], "confirm": ref2}),
    )
    if best == "input model, plain":
        import shutil

        shutil.copyfile(src, model_out)
        decision["offline_optimization"] = "none (the input model run plainly measured fastest)"
        return {"graph_optimization_level": "ORT_ENABLE_ALL", "inter_op_num_threads": 1, "session_config_entries": {}}
    return tuned if best == "tuned" else base


def _variants(src: Path, model_out: Path, tmp: Path, base: dict, decision: dict, say) -> dict[str, tuple[Path, dict | None]]:
    """What the search measures: the input model run plainly, the EXTENDED graph with the base config and
    each one-knob variation, and the ORT_ENABLE_ALL graph when it differs from the EXTENDED one."""
    all_path = tmp / "model-all.onnx"
    say("optimizing the graph offline (ORT_ENABLE_ALL) for comparison")
    with ort_refusal(src, all_path):
        ort_optimize(src, all_path, "ORT_ENABLE_ALL")
    fold_int8_gemm_bias(all_path)
    merge_int8_gemms_sharing_input(all_path)
    variants: dict[str, tuple[Path, dict | None]] = {"input model, plain": (src, None), "extended": (model_out, base)}
    if op_counts(all_path) != op_counts(model_out):
        variants["all (hardware-specific)"] = (all_path, base)
    else:
        decision["all_vs_extended"] = "identical graphs: ORT_ENABLE_ALL adds nothing for this model, EXTENDED kept (portable)"
    for name, c in candidate_configs(base).items():
        variants[name] = (model_out, c)
    return variants


def _combine(base: dict, winners: list[str]) -> dict:
    """``base`` with every winning knob applied."""
    tuned = json.loads(json.dumps(base))
    for k in winners:
        c = candidate_configs(base)[k]
        tuned["session_config_entries"].update(c["session_config_entries"])
        for key in ("enable_cpu_mem_arena", "intra_op_num_threads"):
            if key in c and c[key] != base.get(key):
                tuned[key] = c[key]
    return tuned


def _measure(variants: dict[str, tuple[Path, dict | None]], feeds, rounds: int) -> dict[str, dict[int, float]]:
    sessions = {k: make_session(p, c) for k, (p, c) in variants.items()}
    runs = {k: (lambda f, s=s: s.run(None, f)) for k, s in sessions.items()}
    return interleaved_latency(runs, feeds, rounds=rounds)


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    return d


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
