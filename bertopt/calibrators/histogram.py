"""Streaming histograms of |x|: one pass over the calibration data, bounded memory, any range.

A histogram has a fixed number of uniform bins starting at 0. The first batch sets the bin width so
that its largest |x| falls in the last bin; when a later batch holds a larger value the histogram
doubles its bin width (adjacent bins are summed pairwise) until the value fits. Nothing is stored
but ``bins`` counts, so memory does not grow with the data, and no bin is ever split, so merging
loses no counts. Symmetric INT8 only needs |x|, which halves the bins a signed histogram would need.
"""

from __future__ import annotations

import numpy as np


class NonFiniteError(ValueError):
    """A batch held NaN or +-inf; the collector turns this into a user error naming the tensor."""

    def __init__(self, nan: int, inf: int):
        super().__init__(f"{nan} NaN and {inf} inf values")
        self.nan = nan
        self.inf = inf


class Histogram:
    """Counts of |x| in ``bins`` uniform bins over ``[0, width * bins)``, plus the exact max |x|."""

    def __init__(self, bins: int = 2048):
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = 0.0  # 0 until a non-zero value has been seen
        self.amax = 0.0  # exact max |x| seen
        self.count = 0  # values seen
        self._zeros = 0  # values seen while width was still 0 (all exactly 0)

    # ------------------------------------------------------------------ building
    def update(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, dtype=np.float32).ravel())
        if a.size == 0:
            return
        m = float(a.max())
        if not np.isfinite(m):
            bad = ~np.isfinite(a)
            raise NonFiniteError(int(np.isnan(a[bad]).sum()), int(np.isinf(a[bad]).sum()))
        self.count += a.size
        if m == 0.0:
            if self.width == 0.0:
                self._zeros += a.size
            else:
                self.counts[0] += a.size
            return
        if self.width == 0.0:
            self.width = m / self.bins
            self.counts[0] += self._zeros
            self._zeros = 0
        while m > self.width * self.bins:
            self._double()
        idx = (a / np.float32(self.width)).astype(np.int64)
        np.minimum(idx, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.amax = max(self.amax, m)

    def _double(self) -> None:
        half = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([half, np.zeros(self.bins // 2, dtype=np.int64)])
        self.width *= 2.0

    # ------------------------------------------------------------------ reading
    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self._zeros

    @property
    def edges(self) -> np.ndarray:
        return np.arange(self.bins + 1, dtype=np.float64) * self.width

    @property
    def centers(self) -> np.ndarray:
        return (np.arange(self.bins, dtype=np.float64) + 0.5) * self.width

    def used(self) -> int:
        """Number of bins up to and including the last non-empty one."""
        nz = np.flatnonzero(self.counts)
        return int(nz[-1]) + 1 if nz.size else 0

    def to_dict(self) -> dict:
        return {"bins": self.bins, "width": self.width, "amax": self.amax, "count": self.count,
                "counts": self.counts.tolist()}

    @classmethod
    def from_counts(cls, counts, width: float, amax: float | None = None) -> "Histogram":
        """A histogram from given counts (tests, saved statistics)."""
        counts = np.asarray(counts, dtype=np.int64)
        h = cls(bins=len(counts))
        h.counts = counts.copy()
        h.width = float(width)
        h.count = int(counts.sum())
        nz = np.flatnonzero(counts)
        h.amax = float(amax) if amax is not None else (float((nz[-1] + 1) * width) if nz.size else 0.0)
        return h
