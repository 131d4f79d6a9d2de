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
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bertopt.backends.session_config import check_session_config
from bertopt.errors import BertoptError
from bertopt.graph import MS_DOMAIN, detect_precision, drop_unused_initializers, external_data, op_counts, opset_version, ort_optimize, ort_refusal  # noqa: F401 - detect_precision: backends read it here

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


# ------------------------------------------------------------------------------------- session search
def default_session_config(threads: int | None = None) -> dict:
    """The session options a build uses without ``--tune``: ORT's defaults, with the intra-op pool
    sized to the physical cores (ORT's default counts logical cores), one inter-op thread."""
    return {
        "graph_optimization_level": "ORT_DISABLE_ALL",  # the graph is already offline-optimized
        "intra_op_num_threads": int(threads or physical_cores()),
        "inter_op_num_threads": 1,
        "session_config_entries": {},
    }


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


def fold_int8_gemm_bias(path: Path) -> int:
    """``Add(MatMulIntegerToFloat(...), constant bias)`` -> the bias input of ``MatMulIntegerToFloat``.

    ORT's Q/DQ fusion turns each INT8 GEMM into ``MatMulIntegerToFloat`` but leaves the bias as a
    separate ``Add``, one more pass over the output; the kernel adds a bias in its output stage for
    free. Exact (same float additions). Rewrites ``path`` in place; returns how many were folded.
    Models with external weights are left alone.
    """
    import onnx
    if external_data(path):
        return 0
    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    dead: set[int] = set()
    for n in g.node:
        if n.op_type != "MatMulIntegerToFloat" or n.domain != MS_DOMAIN:
            continue
        while _fold_one_bias(n, readers, inits, graph_outputs, g, dead):  # a bias, then maybe a correction of it
            pass
    if not dead:
        return 0
    keep = [n for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(m)
    onnx.save(m, str(path))
    return len({n.output[0] for n in g.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) > 6 and n.input[6]})


def _fold_one_bias(n, readers: dict, inits: dict, graph_outputs: set, g, dead: set) -> bool:
    """Fold the one constant ``Add`` reading ``n``'s output into ``n``'s bias input; False if there is none."""
    from onnx import numpy_helper

    r = readers.get(n.output[0], [])
    if len(r) != 1 or n.output[0] in graph_outputs or r[0].op_type != "Add" or r[0].domain not in ("", "ai.onnx"):
        return False
    add = r[0]
    other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
    if other not in inits or other == n.output[0]:
        return False
    b = numpy_helper.to_array(inits[other])
    if b.dtype != np.float32 or b.ndim < 1 or b.size != b.shape[-1]:
        return False
    b = b.reshape(-1)
    if len(n.input) > 6 and n.input[6]:
        if n.input[6] not in inits:
            return False
        b = numpy_helper.to_array(inits[n.input[6]]).reshape(-1) + b
    name = f"{add.output[0]}/gemm_bias"
    inits[name] = numpy_helper.from_array(b.astype(np.float32), name)
    g.initializer.append(inits[name])
    ins = list(n.input) + [""] * (7 - len(n.input))
    ins[6] = name
    del n.input[:]
    n.input.extend(ins)
    n.output[0] = add.output[0]
    dead.add(id(add))
    return True


class _Consts:
    """The graph's initializers as numpy arrays (converted once) and hashable keys of inputs."""

    def __init__(self, g):
        self.inits = {i.name: i for i in g.initializer}
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name not in self.inits:
            return None
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name])
        return self.arrays[name]

    def key(self, name: str):
        """The value of a constant input (equal constants give equal keys); the name of any other input."""
        v = self.get(name)
        return (name,) if v is None else (str(v.dtype), v.shape, v.tobytes())


def _share_quantizers(nodes_in_order: list, consts: _Consts, graph_outputs: set, dead: set) -> int:
    """Identical ``QuantizeLinear`` of one tensor become the first of them; returns how many went."""
    rename: dict[str, str] = {}
    first: dict[tuple, Any] = {}
    before = len(dead)
    for n in nodes_in_order:
        if n.op_type != "QuantizeLinear" or n.domain not in ("", "ai.onnx") or n.output[0] in graph_outputs:
            continue
        k = (n.input[0], *(consts.key(i) for i in n.input[1:]), tuple(sorted(a.SerializeToString() for a in n.attribute)))
        if k in first:
            rename[n.output[0]] = first[k].output[0]
            dead.add(id(n))
        else:
            first[k] = n
    for n in nodes_in_order:
        for j, i in enumerate(n.input):
            if i in rename:
                n.input[j] = rename[i]
    return len(dead) - before


def _gemms_sharing_input(nodes_in_order: list, consts: _Consts, graph_outputs: set, dead: set) -> list[list]:
    """``MatMulIntegerToFloat`` nodes with constant 2-D weights, grouped by input, scale, zero point, dtype, rows."""
    groups: dict[tuple, list] = {}
    for n in nodes_in_order:
        if n.op_type != "MatMulIntegerToFloat" or n.domain != MS_DOMAIN or id(n) in dead:
            continue
        ins = list(n.input) + [""] * (7 - len(n.input))
        w = consts.get(ins[1])
        if w is None or w.ndim != 2 or any(ins[j] and consts.get(ins[j]) is None for j in (3, 5, 6)) or n.output[0] in graph_outputs:
            continue
        groups.setdefault((ins[0], consts.key(ins[2]), consts.key(ins[4]) if ins[4] else None, str(w.dtype), w.shape[0]), []).append(n)
    return [nodes for nodes in groups.values() if len(nodes) >= 2]


def _merge_gemms(nodes: list, consts: _Consts, g) -> list:
    """One ``MatMulIntegerToFloat`` over the concatenated weights + a ``Split`` into ``nodes``' outputs.

    Adds the concatenated initializers to ``g``; returns the two new nodes.
    """
    from onnx import helper, numpy_helper

    ins = [list(n.input) + [""] * (7 - len(n.input)) for n in nodes]
    ws = [consts.get(i[1]) for i in ins]
    cols = [w.shape[1] for w in ws]

    def cat(idx: int, fill, dtype):
        return np.concatenate([np.broadcast_to(consts.get(i[idx]).reshape(-1), (c,)) if i[idx] else np.full(c, fill, dtype)
                               for i, c in zip(ins, cols)]).astype(dtype)

    base = nodes[0].name or nodes[0].output[0]
    new = {
        f"{base}/merged/B": np.concatenate(ws, axis=1),
        f"{base}/merged/b_scale": cat(3, 1.0, np.float32),
        f"{base}/merged/b_zero_point": cat(5, 0, ws[0].dtype),
        f"{base}/merged/split": np.asarray(cols, np.int64),
    }
    if any(i[6] for i in ins):
        new[f"{base}/merged/bias"] = cat(6, 0.0, np.float32)
    for name, v in new.items():
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(v), name))
    mm = helper.make_node("MatMulIntegerToFloat", [ins[0][0], f"{base}/merged/B", ins[0][2], f"{base}/merged/b_scale", ins[0][4],
                                                   f"{base}/merged/b_zero_point", f"{base}/merged/bias" if any(i[6] for i in ins) else ""],
                          [f"{base}/merged/out"], name=f"{base}/merged", domain=MS_DOMAIN)
    split = helper.make_node("Split", [f"{base}/merged/out", f"{base}/merged/split"], [n.output[0] for n in nodes], name=f"{base}/merged/Split", axis=-1)
    return [mm, split]


def merge_int8_gemms_sharing_input(path: Path) -> dict[str, int]:
    """Fewer kernels for the same arithmetic: INT8 GEMMs that read one quantized input become one GEMM.

    ORT's Q/DQ fusion gives Q, K and V each their own ``QuantizeLinear`` of the same tensor (same scale
    and zero point) and their own ``MatMulIntegerToFloat``. Identical quantizers become one, and the
    GEMMs that then share an input, a scale and a zero point become one ``MatMulIntegerToFloat`` over
    the concatenated weights (per-column scales, zero points and biases concatenated alike) followed
    by a ``Split`` into the original outputs. Exact (every output column is computed as before). Each
    kernel is one more hand-off to the intra-op threads, which costs most on small models at batch 1
    with spinning off. Rewrites ``path`` in place; models with external weights are left alone.
    Returns ``{"quantizers_shared": .., "gemms_merged": ..}`` (GEMMs removed).
    """
    import onnx

    done = {"quantizers_shared": 0, "gemms_merged": 0}
    if external_data(path):
        return done
    m = onnx.load(str(path))
    g = m.graph
    if opset_version(m) < 13:  # Split takes sizes as an input from 13
        return done
    consts = _Consts(g)
    graph_outputs = {o.name for o in g.output}
    nodes_in_order = list(g.node)  # one wrapper per node for the whole rewrite: the id()s below stay valid
    dead: set[int] = set()
    done["quantizers_shared"] = _share_quantizers(nodes_in_order, consts, graph_outputs, dead)
    replace: dict[int, list] = {}
    for nodes in _gemms_sharing_input(nodes_in_order, consts, graph_outputs, dead):
        replace[id(nodes[0])] = _merge_gemms(nodes, consts, g)  # where the first one was: its inputs exist by then, its readers come later
        dead |= {id(n) for n in nodes}
        done["gemms_merged"] += len(nodes) - 1
    if not dead:
        return done

    keep = []
    for n in nodes_in_order:
        keep += replace.get(id(n), [] if id(n) in dead else [n])
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(m)
    onnx.save(m, str(path))
    return done


def build_onnxruntime(
    src: Path,
    out_dir: Path,
    *,
    input_names: Sequence[str],
    threads: int | None = None,
    tune: bool = False,
    seq: int = 128,
    batches: Sequence[int] = (1, 8),
    tune_feeds: dict[int, dict[str, np.ndarray]] | None = None,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write ``model.onnx`` (offline-optimized) + ``session.json`` into ``out_dir``; return what was decided.

    After ORT's optimizer, the biases of its INT8 GEMMs go into the kernels (:func:`fold_int8_gemm_bias`)
    and INT8 GEMMs that read one quantized input become one (:func:`merge_int8_gemms_sharing_input`).

    Without ``tune`` the graph is optimized at ``ORT_ENABLE_EXTENDED`` (portable: no hardware-specific
    layouts) and the session uses :func:`default_session_config`. With ``tune`` a small search is
    measured on this machine, interleaved, at ``batches`` x ``seq``: the offline level (EXTENDED vs ALL,
    only when their graphs differ), then one knob at a time (spinning, dynamic block base, arena,
    logical-core threads); knobs that win by more than 3 % are combined and confirmed against the
    input model run plainly (``make_session`` defaults), which is itself a candidate, so the chosen
    form is never slower than the plain run in the same measurement.
    """
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    model_out = out_dir / "model.onnx"
    base = default_session_config(threads)
    decision: dict[str, Any] = {"offline_optimization": "ORT_ENABLE_EXTENDED", "tuned": bool(tune)}

    say("optimizing the graph offline (ORT_ENABLE_EXTENDED)")
    with ort_refusal(src, model_out):  # the first time ORT sees the input model, and writes beside the output
        ort_optimize(src, model_out, "ORT_ENABLE_EXTENDED")
    decision["int8_gemm_bias_folded"] = fold_int8_gemm_bias(model_out)
    decision["int8_gemms_merged"] = merge_int8_gemms_sharing_input(model_out)
    decision["ops_before"] = op_counts(src)
    if not tune:
        cfg = base
    else:
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=".tune-", dir=out_dir))
        try:
            feeds = tune_feeds or {b: synthetic_feeds(input_names, b, seq) for b in batches}
            cfg = _tune(src, model_out, tmp, base, feeds, seq, rounds, decision, say)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    decision["ops_after"] = op_counts(model_out)
    (out_dir / SESSION_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    # The artifact must load the way it was measured.
    make_session(model_out, cfg)
    decision["session"] = cfg
    return decision


def _tune(src: Path, model_out: Path, tmp: Path, base: dict, feeds, seq: int, rounds: int, decision: dict, say) -> dict:
    """The session search of ``build_onnxruntime(tune=True)``: search, then confirm against the input model
    run plainly; rewrites ``model_out`` when another form wins; returns the session config."""
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
