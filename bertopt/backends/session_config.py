"""What a ``session.json`` may ask of ONNX Runtime: only the options ``bertopt build`` writes.

An artifact is input from wherever it came from. ONNX Runtime's session options include ones that
write files (``session.collect_node_memory_stats_to_file``, ``optimized_model_filepath``, profiling)
or start any number of threads, so a loaded artifact's session config is checked against an
allow-list: other keys are refused, naming the key and the file, and thread counts are capped at
the host's cores (an artifact built on a bigger machine still loads).
"""

from __future__ import annotations

import os
from typing import Any

from bertopt.errors import BertoptError

LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
THREAD_KEYS = ("intra_op_num_threads", "inter_op_num_threads")
BOOL_KEYS = ("enable_cpu_mem_arena", "enable_mem_pattern")
# session_config_entries bertopt writes (build --tune, bench's spinning off) -> the values it may take
ENTRIES = {
    "session.intra_op.allow_spinning": ("0", "1"),
    "session.dynamic_block_base": tuple(str(i) for i in range(1, 65)),
}
HINT = ("bertopt writes only graph_optimization_level, intra_op_num_threads, inter_op_num_threads, enable_cpu_mem_arena, "
        "enable_mem_pattern, short_calls and the session_config_entries " + ", ".join(ENTRIES) + "; rebuild the artifact with `bertopt build`")


def _refuse(source: str, what: str) -> BertoptError:
    return BertoptError(f"{source}: {what}; refusing to pass it to ONNX Runtime", hint=HINT)


def _threads(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refuse(source, f"'{key}' must be a thread count (0 = ONNX Runtime's default), got {value!r}")
    return min(value, os.cpu_count() or 1)


def _short_calls(source: str, value: Any) -> dict:
    """``{"max_tokens": T, "intra_op_num_threads": 1}``: calls of at most T tokens go to a second session with that
    many threads (:mod:`bertopt.backends.short_calls`)."""
    if not isinstance(value, dict) or set(value) != {"max_tokens", "intra_op_num_threads"}:
        raise _refuse(source, f"'short_calls' must be an object with exactly max_tokens and intra_op_num_threads, got {value!r}")
    t = value["max_tokens"]
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 1_000_000:
        raise _refuse(source, f"'short_calls.max_tokens' must be a token count from 1 to 1000000, got {t!r}")
    n = _threads(source, "short_calls.intra_op_num_threads", value["intra_op_num_threads"])
    if n < 1:
        raise _refuse(source, f"'short_calls.intra_op_num_threads' must be at least 1, got {value['intra_op_num_threads']!r}")
    return {"max_tokens": t, "intra_op_num_threads": n}


def check_session_config(cfg: Any, source: str = "session config") -> dict:
    """``cfg`` with thread counts capped at ``os.cpu_count()``; BertoptError for any key or value
    outside what bertopt writes (``source`` names the file in the message)."""
    if not isinstance(cfg, dict):
        raise _refuse(source, f"expected a JSON object, got {type(cfg).__name__}")
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key == "graph_optimization_level":
            if value not in LEVELS:
                raise _refuse(source, f"'{key}' must be one of {', '.join(LEVELS)}, got {value!r}")
            out[key] = value
        elif key in THREAD_KEYS:
            out[key] = _threads(source, key, value)
        elif key in BOOL_KEYS:
            if not isinstance(value, bool):
                raise _refuse(source, f"'{key}' must be true or false, got {value!r}")
            out[key] = value
        elif key == "session_config_entries":
            if not isinstance(value, dict):
                raise _refuse(source, f"'{key}' must be an object, got {type(value).__name__}")
            for entry, v in value.items():
                if entry not in ENTRIES:
                    raise _refuse(source, f"session_config_entries key '{entry}' is not one bertopt writes")
                if str(v) not in ENTRIES[entry]:
                    raise _refuse(source, f"session_config_entries '{entry}' must be one of {ENTRIES[entry][0]}..{ENTRIES[entry][-1]}, got {v!r}")
            out[key] = {k: str(v) for k, v in value.items()}
        elif key == "short_calls":
            out[key] = _short_calls(source, value)
        else:
            raise _refuse(source, f"key '{key}' is not a session option bertopt writes")
    return out
