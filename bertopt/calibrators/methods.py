"""The four range calibrators: histogram of |x| -> amax (the clipping threshold for symmetric INT8).

- ``max``: the largest |x| seen. Never clips; one outlier spends the whole INT8 range.
- ``percentile``: the smallest threshold that keeps ``percentile`` % of the values (default 99.99).
- ``entropy``: TensorRT's entropy calibrator (Migacz, "8-bit Inference with TensorRT", GTC 2017):
  for every candidate threshold of ``i`` bins (``i`` = 128..bins), the reference distribution P is
  the first ``i`` bins with everything above folded into the last one; the candidate Q is those
  ``i`` bins merged into 128 levels and expanded back, each level's count spread evenly over its
  non-empty bins; the threshold minimising KL(P || Q) wins: the upper edge of its last bin (as
  modelopt's entropy calibrator; TensorRT's slide puts it half a bin further).
- ``mse``: the threshold minimising the expected squared quantization error (rounding inside the
  range plus clipping above it), evaluated on the bin centres.

Which to use on BERT (measured on MiniLM-L6 with bertopt's equalization, 200 held-out S-Labs texts,
minimum embedding cosine vs FP32): max 0.9963, percentile 0.9960, mse 0.9960, entropy -0.06. Once
the GEMM inputs are equalized their ranges are compact, so clipping buys little, while entropy
clips the rare, very large activations that BERT's special tokens carry ("massive activations"):
few in count, so KL divergence ignores them, but the attention depends on them. ``max`` is the
default; ``entropy`` is here for parity with TensorRT (whose implicit calibration uses it).

Every function takes a :class:`~bertopt.calibrators.histogram.Histogram` and returns a float;
an all-zero histogram gives 0.0 (the caller leaves such tensors in float: a zero range has no
valid INT8 scale). ``num_bits`` is a parameter only so tests can check hand-computed cases with
a few levels; bertopt quantizes to 8 bits.
"""

from __future__ import annotations

import numpy as np

from bertopt.calibrators.histogram import Histogram
from bertopt.calibrators.options import METHODS  # the names' one home (light: the CLI reads them there)

DEFAULT_PERCENTILE = 99.99


def amax_max(h: Histogram) -> float:
    return float(h.amax)


def amax_percentile(h: Histogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Upper edge of the first bin at which the cumulative count reaches ``percentile`` %."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    total = h.total
    if total == 0 or h.amax == 0.0:
        return 0.0
    if percentile == 100.0:
        return float(h.amax)
    cdf = np.cumsum(h.counts)
    # the count includes values seen while everything was zero (they sit in bin 0)
    cdf = cdf + (total - int(cdf[-1]))
    idx = int(np.searchsorted(cdf, percentile / 100.0 * total, side="left"))
    return float(min((idx + 1) * h.width, h.amax))


def amax_entropy(h: Histogram, num_bits: int = 8, start_bin: int | None = None, stride: int = 1) -> float:
    """TensorRT's KL-divergence threshold (see the module docstring); vectorised over candidates."""
    counts = h.counts.astype(np.float64)
    n = h.used()
    if n == 0:
        return 0.0
    levels = 1 << (num_bits - 1)
    start = levels if start_bin is None else start_bin
    stop = h.bins
    if n <= start:
        # every value fits in fewer bins than there are levels: nothing to gain by clipping
        return float(h.amax)
    candidates = np.arange(start, stop + 1, stride)
    # suffix sums: outliers above a candidate threshold i are counts[i:]
    suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    best_kl, best_i = np.inf, int(candidates[-1])
    for chunk in np.array_split(candidates, max(1, len(candidates) // 128)):
        kl = _kl_rows(counts, chunk, levels, suffix)
        j = len(kl) - 1 - int(np.argmin(kl[::-1]))  # the last minimum: the widest of equal thresholds
        if kl[j] <= best_kl:
            best_kl, best_i = float(kl[j]), int(chunk[j])
    return float(min(best_i * h.width, h.amax)) if np.isfinite(best_kl) else float(h.amax)


def entropy_divergences(h: Histogram, num_bits: int = 8, start_bin: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(candidate bin counts i, KL(P || Q) for each): the curve ``amax_entropy`` minimises."""
    counts = h.counts.astype(np.float64)
    levels = 1 << (num_bits - 1)
    cand = np.arange(levels if start_bin is None else start_bin, h.bins + 1)
    suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    return cand, _kl_rows(counts, cand, levels, suffix)


def _kl_rows(counts: np.ndarray, cand: np.ndarray, levels: int, suffix: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each candidate bin count in ``cand`` (one row each)."""
    width = int(cand.max())
    j = np.arange(width)
    rows = len(cand)
    valid = j[None, :] < cand[:, None]
    c = np.where(valid, counts[None, :width], 0.0)
    group = np.where(valid, (j[None, :] * levels) // cand[:, None], 0)
    flat = (np.arange(rows)[:, None] * levels + group).ravel()
    nonempty = (c > 0).astype(np.float64)
    gsum = np.bincount(flat, weights=c.ravel(), minlength=rows * levels).reshape(rows, levels)
    gnnz = np.bincount(flat, weights=nonempty.ravel(), minlength=rows * levels).reshape(rows, levels)
    per_bin = gsum / np.maximum(gnnz, 1.0)
    q = np.where(nonempty > 0, np.take_along_axis(per_bin, group, axis=1), 0.0)
    p = c.copy()
    p[np.arange(rows), cand - 1] += suffix[cand]  # fold the outliers into the last bin
    p /= p.sum(axis=1, keepdims=True)
    qs = q.sum(axis=1, keepdims=True)
    q = q / np.where(qs > 0, qs, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(axis=1)  # inf where P > 0 and Q == 0 (the last bin empty but outliers folded in)


def amax_mse(h: Histogram, num_bits: int = 8, stride: int = 1) -> float:
    """The threshold (a bin edge) minimising sum_j count_j * (c_j - quant(c_j))^2 over bin centres."""
    n = h.used()
    if n == 0:
        return 0.0
    qmax = (1 << (num_bits - 1)) - 1
    w = h.counts[:n].astype(np.float64)
    c = h.centers[:n]
    edges = np.arange(1, n + 1, stride, dtype=np.float64) * h.width
    edges = np.unique(np.append(np.minimum(edges, h.amax), h.amax))
    best_err, best = np.inf, float(h.amax)
    for chunk in np.array_split(edges, max(1, len(edges) // 256)):
        s = (chunk / qmax)[:, None]
        q = np.clip(np.round(c[None, :] / s), 0, qmax) * s
        err = ((c[None, :] - q) ** 2 * w[None, :]).sum(axis=1)
        k = int(np.argmin(err))
        if err[k] < best_err:
            best_err, best = float(err[k]), float(chunk[k])
    return best


def compute_amax(h: Histogram, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
    if method == "max":
        return amax_max(h)
    if method == "percentile":
        return amax_percentile(h, percentile)
    if method == "entropy":
        return amax_entropy(h)
    if method == "mse":
        return amax_mse(h)
    raise ValueError(f"unknown calibration method '{method}' (methods: {', '.join(METHODS)})")
