"""Will a bench grid point fit in memory? An estimate from the model's shape, checked before any timing.

A point (batch x seq) of an encoder keeps, at its peak, the hidden states of its layers
(``batch*seq*hidden*layers`` floats) and the attention scores of a layer (``batch*heads*seq^2``);
ONNX Runtime's arena holds about twice that (measured on the MiniLM, 1 thread: batch 8-256, seq
128-512, peak RSS growth 1.75-2.05x the sum), so the estimate is ``weights + 2 x (activations +
attention)`` in 4-byte floats. A point over the memory available (``MemAvailable``, or a cgroup's
limit when lower) is refused naming it: ONNX Runtime's allocator would otherwise die mid-sweep.
TensorRT engines run in GPU memory, bounded by their profiles: not estimated here.
"""

from __future__ import annotations

from pathlib import Path

from bertopt.errors import BertoptError

FLOAT_BYTES = 4
ARENA_FACTOR = 2


def point_bytes(dims: dict, batch: int, seq: int) -> int:
    """The activations and attention scores of one call at ``batch`` x ``seq`` (without the weights)."""
    act = batch * seq * dims["hidden_size"] * dims["num_layers"] * FLOAT_BYTES
    att = batch * dims["num_heads"] * seq * seq * FLOAT_BYTES
    return ARENA_FACTOR * (act + att)


def available_bytes() -> int | None:
    """Memory this process may still use: /proc/meminfo's MemAvailable, capped by a cgroup v2 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit() and avail is not None:
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def model_shape(path: Path) -> tuple[dict | None, int]:
    """(hidden_size/num_layers/num_heads, or None where unknown; the weights' bytes) of an HF folder or artifact."""
    from bertopt.models import is_hf_folder, model_summary, read_config

    if path.suffix == ".xml" and path.is_file():  # another tool's bare OpenVINO IR: no manifest, shape unknown
        weights = path.with_suffix(".bin")
        return None, weights.stat().st_size if weights.is_file() else 0
    if is_hf_folder(path):
        info = model_summary(read_config(path), "feature-extraction")
        weights = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())
    else:
        from bertopt.artifacts import load_artifact

        art = load_artifact(path, verify=False)
        if art.manifest.get("build", {}).get("backend") == "tensorrt":
            return None, 0
        info = art.model_info
        model = art.model_path
        weights = model.stat().st_size if model.is_file() else 0
    dims = {k: info.get(k) for k in ("hidden_size", "num_layers", "num_heads")}
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims.values())
    return (dims | {"max_length": info.get("max_length")} if ok else None), weights


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_grid_fits(paths: list[Path], batches: list[int], seqs: list[int], available: int | None = None) -> None:
    """Refuse (naming the point and the artifact) every grid point whose estimate exceeds the memory available."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    shapes = [(p, *model_shape(p)) for p in paths]
    weights = sum(w for _, _, w in shapes)  # bench holds every session at once and runs one at a time
    too_big = []
    for p, dims, _ in shapes:
        if dims is None:
            continue
        for b in batches:
            for s in seqs:
                if isinstance(dims["max_length"], int) and s > dims["max_length"]:
                    continue  # beyond the position embeddings: refused with that reason when the runners open
                need = weights + point_bytes(dims, b, s)
                if need > available:
                    too_big.append((need, b, s, p))
    if not too_big:
        return
    need, b, s, p = max(too_big, key=lambda t: t[0])
    fits = sorted({(b2, s2) for b2 in batches for s2 in seqs} - {(x[1], x[2]) for x in too_big})
    raise BertoptError(
        f"bench: batch={b} seq={s} needs about {_size(need)} for {p.name} (weights {_size(weights)} + activations and "
        f"attention scores {_size(need - weights)}), and {_size(available)} is available"
        + (f"; {n} grid points do not fit" if (n := len({(x[1], x[2]) for x in too_big})) > 1 else ""),
        hint="use smaller --batch/--seq values" + (f" (these fit: {', '.join(f'{x}x{y}' for x, y in fits[:6])})" if fits else "")
        + "; the estimate is weights + 2 x (batch*seq*hidden*layers + batch*heads*seq^2) x 4 bytes")

