"""ONNX Runtime backend: sessions configured the same way for bench, tests and a user's service.

``bertopt build --backend onnxruntime`` writes an artifact with ``model.onnx`` (ORT's offline-optimized
graph) and ``session.json`` (the session options that go with it); :func:`make_session` reads that
dict, so ``bench``, the tests and a user's service load the model the same way::

    from bertopt.backends.onnxruntime import load_session_config, make_session
    sess = make_session("engine/model.onnx", load_session_config("engine"))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bertopt.backends.session_config import check_session_config
from bertopt.errors import BertoptError
from bertopt.backends.ort_rewrites import fold_int8_gemm_bias, merge_int8_gemms_sharing_input
from bertopt.graph import op_counts, ort_optimize, ort_refusal

SESSION_FILE = "session.json"

def make_session(model_path: str | Path, session_config: dict | None = None, threads: int | None = None, optimize: bool = True):
    """An ``onnxruntime.InferenceSession`` on the CPU.

    ``session_config`` is the dict saved as ``session.json`` by ``bertopt build --backend onnxruntime``
    (graph optimization level, thread counts, session config entries); ``threads`` overrides its
    intra-op thread count; ``optimize=False`` disables ORT's graph optimizations (for tests that
    must see our own fusions, not ORT's). Only the options bertopt writes are taken (thread counts
    capped at the host's cores): see :mod:`bertopt.backends.session_config`.
    """
    import onnxruntime as ort

    cfg = check_session_config(session_config or {})
    so = ort.SessionOptions()
    level = cfg.get("graph_optimization_level", "ORT_ENABLE_ALL") if optimize else "ORT_DISABLE_ALL"
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    intra = threads or cfg.get("intra_op_num_threads")
    if intra:
        so.intra_op_num_threads = int(intra)
    so.inter_op_num_threads = int(cfg.get("inter_op_num_threads", 1))
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in cfg.get("session_config_entries", {}).items():
        so.add_session_config_entry(key, str(value))
    if "enable_cpu_mem_arena" in cfg:
        so.enable_cpu_mem_arena = bool(cfg["enable_cpu_mem_arena"])
    if "enable_mem_pattern" in cfg:
        so.enable_mem_pattern = bool(cfg["enable_mem_pattern"])
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def load_session_config(artifact_dir: str | Path) -> dict | None:
    """An artifact's ``session.json``, checked: a key bertopt does not write is an error naming it."""
    p = Path(artifact_dir) / SESSION_FILE
    if not p.is_file():
        return None
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise BertoptError(f"{p}: unreadable session config ({e})", hint="rebuild the artifact with `bertopt build`") from None
    return check_session_config(cfg, str(p))


# ------------------------------------------------------------------------------------- machine facts
def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once), at least 1.

    ORT's default intra-op pool uses one thread per *logical* core; on SMT machines the physical
    count is usually faster for GEMM-bound encoders, and on shared hosts it leaves room for others.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores: set[tuple[str, str]] = set()
    for cpu in allowed:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            pkg = (base / "physical_package_id").read_text().strip()
            core = (base / "core_id").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((pkg, core))
    return max(1, len(cores))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------- latency
def synthetic_feeds(input_names: Sequence[str], batch: int, seq: int, vocab: int = 30000, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed-shape int64 feeds (random token ids, full attention): latency does not depend on the text."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, max(1001, vocab), size=(batch, seq)).astype(np.int64)
    feeds = {}
    for name in input_names:
        if name == "input_ids":
            feeds[name] = ids
        elif name == "attention_mask":
            feeds[name] = np.ones_like(ids)
        else:
            feeds[name] = np.zeros_like(ids)
    return feeds


# ------------------------------------------------------------------------------------- build
def default_session_config(threads: int | None = None) -> dict:
    """The session options a build uses without ``--tune``: ORT's defaults, with the intra-op pool
    sized to the physical cores (ORT's default counts logical cores), one inter-op thread."""
    return {
        "graph_optimization_level": "ORT_DISABLE_ALL",  # the graph is already offline-optimized
        "intra_op_num_threads": int(threads or physical_cores()),
        "inter_op_num_threads": 1,
        "session_config_entries": {},
    }


@dataclass(frozen=True)
class Tuning:
    """What ``build --tune`` measures sessions on: feeds per batch size (real texts padded to ``seq``, or synthetic
    ones), ``rounds`` interleaved rounds."""

    feeds: dict[int, dict[str, np.ndarray]]
    seq: int = 128
    rounds: int = 3

    @classmethod
    def synthetic(cls, input_names: Sequence[str], batches: Sequence[int] = (1, 8), seq: int = 128, rounds: int = 3) -> "Tuning":
        return cls({b: synthetic_feeds(input_names, b, seq) for b in batches}, seq, rounds)


def build_onnxruntime(src: Path, out_dir: Path, *, threads: int | None = None, tuning: Tuning | None = None,
                      progress: Callable[[str], None] | None = None, short_calls: str = "off") -> dict:
    """Write ``model.onnx`` (offline-optimized) + ``session.json`` into ``out_dir``; return what was decided.

    After ORT's optimizer, the biases of its INT8 GEMMs go into the kernels (:func:`.ort_rewrites.fold_int8_gemm_bias`)
    and INT8 GEMMs that read one quantized input become one (:func:`.ort_rewrites.merge_int8_gemms_sharing_input`).

    Without ``tuning`` the graph is optimized at ``ORT_ENABLE_EXTENDED`` (portable: no hardware-specific
    layouts) and the session uses :func:`default_session_config`. With ``tuning`` a small search is
    measured on this machine (:mod:`.ort_tune`), interleaved, on its feeds: the offline level (EXTENDED vs ALL,
    only when their graphs differ), then one knob at a time (spinning, dynamic block base, arena,
    logical-core threads); knobs that win by more than 3 % are combined and confirmed against the
    input model run plainly (``make_session`` defaults), which is itself a candidate, so the chosen
    form is never slower than the plain run in the same measurement.

    ``short_calls`` ("auto", "off" or a token count): whether calls up to some size go to a 1-thread session
    (:mod:`.short_calls`; "auto" times the crossover on this machine).
    """
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    model_out = out_dir / "model.onnx"
    base = default_session_config(threads)
    decision: dict[str, Any] = {"offline_optimization": "ORT_ENABLE_EXTENDED", "tuned": tuning is not None}

    say("optimizing the graph offline (ORT_ENABLE_EXTENDED)")
    with ort_refusal(src, model_out):  # the first time ORT sees the input model, and writes beside the output
        ort_optimize(src, model_out, "ORT_ENABLE_EXTENDED")
    decision["int8_gemm_bias_folded"] = fold_int8_gemm_bias(model_out)
    decision["int8_gemms_merged"] = merge_int8_gemms_sharing_input(model_out)
    decision["ops_before"] = op_counts(src)
    if tuning is None:
        cfg = base
    else:
        import shutil
        import tempfile

        from bertopt.backends.ort_tune import tune_session

        tmp = Path(tempfile.mkdtemp(prefix=".tune-", dir=out_dir))
        try:
            cfg = tune_session(src, model_out, tmp, base, tuning, decision, say)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    decision["ops_after"] = op_counts(model_out)
    from bertopt.backends.short_calls import decide

    decision["short_calls"] = decide(model_out, cfg, short_calls, say)
    if decision["short_calls"]["max_tokens"]:
        cfg = {**cfg, "short_calls": {"max_tokens": decision["short_calls"]["max_tokens"], "intra_op_num_threads": 1}}
    (out_dir / SESSION_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    # The artifact must load the way it was measured.
    make_session(model_out, cfg)
    decision["session"] = cfg
    return decision
