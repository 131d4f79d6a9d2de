"""ONNX Runtime backend: sessions configured the same way for bench, tests and a user's service."""

from __future__ import annotations

import json
from pathlib import Path

SESSION_FILE = "session.json"


def make_session(model_path: str | Path, session_config: dict | None = None, threads: int | None = None, optimize: bool = True):
    """An ``onnxruntime.InferenceSession`` on the CPU.

    ``session_config`` is the dict saved as ``session.json`` by ``bertopt build --backend onnxruntime``
    (graph optimization level, thread counts, session config entries); ``threads`` overrides its
    intra-op thread count; ``optimize=False`` disables ORT's graph optimizations (for tests that
    must see our own fusions, not ORT's).
    """
    import onnxruntime as ort

    cfg = dict(session_config or {})
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
    p = Path(artifact_dir) / SESSION_FILE
    return json.loads(p.read_text()) if p.is_file() else None
