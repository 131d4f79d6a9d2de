"""Held-out quality as embedding users read it: neighbours kept, k-NN accuracy, retrieval.

All three compare rows of sentence vectors by cosine similarity (rows are L2-normalized here, so a
model that does not normalize is ranked the way a vector store with cosine distance ranks it):

- :func:`neighbour_agreement`: of each text's ``k`` nearest other texts under the reference model,
  the fraction that stay among its ``k`` nearest under the other model (no labels needed);
- :func:`knn_accuracy`: leave-one-out ``k``-nearest-neighbour classification with labels (majority
  vote; a tied vote goes to the class whose voters are more similar in total);
- :func:`retrieval`: query ``i``'s document is document ``i``; recall@k (its document among the
  ``k`` most similar of all documents) and MRR (mean of 1 / its rank).

Ranks are deterministic: equal similarities are ordered by row index. Rows are scored in blocks,
so a few thousand texts need a few MB, not the full similarity matrix.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bertopt.errors import BertoptError

BLOCK = 1024  # rows of the similarity matrix held at once


def unit(x) -> np.ndarray:
    """Rows as float64 unit vectors (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_k(k: int, n: int, what: str, hint: str) -> None:
    """``k`` neighbours need more than ``k`` rows (each row's own is left out)."""
    if k < 1:
        raise BertoptError(f"{what}: k must be at least 1 (got {k})", hint=hint)
    if k >= n:
        raise BertoptError(f"{what}: k={k} neighbours need more than {k} texts, and there are {n}", hint=hint)


def top_k(x, k: int, exclude_self: bool = True) -> np.ndarray:
    """[n, k] row indices of each row's ``k`` most similar rows of ``x`` (most similar first; ties by index)."""
    u = unit(x)
    n = len(u)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, BLOCK):
        sim = u[s:s + BLOCK] @ u.T
        if exclude_self:
            sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
        out[s:s + len(sim)] = _best(sim, k)
    return out


def _best(sim: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` largest values, largest first, equal values by column."""
    order = np.lexsort((np.broadcast_to(np.arange(sim.shape[1]), sim.shape), -sim), axis=1)
    return order[:, :k]


def neighbour_agreement(ref, got, k: int = 10) -> float:
    """Mean over rows of |ref's k nearest ∩ got's k nearest| / k (1.0: every neighbour kept)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if len(ref) != len(got):
        raise ValueError(f"{len(ref)} reference rows vs {len(got)}")
    check_k(k, len(ref), "neighbour agreement", "use a smaller --k or more texts (--samples)")
    a, b = top_k(ref, k), top_k(got, k)
    kept = sum(len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(a, b))
    return kept / (len(a) * k)


def knn_accuracy(x, labels: Sequence, k: int = 10) -> float:
    """Leave-one-out k-NN accuracy: each row takes the majority label of its ``k`` nearest other rows."""
    y = np.asarray([str(v) for v in labels])
    if len(y) != len(x):
        raise ValueError(f"{len(x)} rows vs {len(y)} labels")
    check_k(k, len(y), "k-NN accuracy", "use a smaller --k or more labelled texts (--eval-samples)")
    classes, yi = np.unique(y, return_inverse=True)
    u = unit(x)
    correct = 0
    for s in range(0, len(u), BLOCK):
        sim = u[s:s + BLOCK] @ u.T
        rows = np.arange(len(sim))
        sim[rows, rows + s] = -np.inf
        nn = _best(sim, k)
        votes = np.zeros((len(sim), len(classes)))
        weight = np.zeros_like(votes)
        for j in range(k):
            np.add.at(votes, (rows, yi[nn[:, j]]), 1.0)
            np.add.at(weight, (rows, yi[nn[:, j]]), sim[rows, nn[:, j]])
        # majority first; a tie goes to the class with the larger total similarity (weight < k <= 1 vote)
        pred = np.argmax(votes * (2 * k + 1) + weight, axis=1)
        correct += int((pred == yi[s:s + len(sim)]).sum())
    return correct / len(y)


def retrieval(queries, docs, ks: Sequence[int] = (1, 10)) -> dict:
    """Query i's relevant document is document i, ranked among all documents: recall@k for each of ``ks``
    and MRR. ``{"n", "recall@1", ..., "mrr"}``."""
    q, d = unit(queries), unit(docs)
    if len(q) != len(d):
        raise ValueError(f"{len(q)} queries vs {len(d)} documents")
    for k in ks:
        if not 1 <= k < len(d):
            raise BertoptError(f"retrieval: recall@{k} needs more than {k} documents, and there are {len(d)}",
                               hint="use more query/document pairs (--pairs-samples) or a smaller k")
    ranks = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), BLOCK):
        sim = q[s:s + BLOCK] @ d.T
        rows = np.arange(len(sim))
        gold = sim[rows, rows + s][:, None]
        cols = np.arange(len(d))[None, :]
        # 1 + documents ranked above the relevant one: more similar, or as similar with a lower index
        ranks[s:s + len(sim)] = 1 + ((sim > gold) | ((sim == gold) & (cols < (rows + s)[:, None]))).sum(1)
    res: dict = {"n": int(len(q))}
    for k in ks:
        res[f"recall@{k}"] = round(float((ranks <= k).mean()), 6)
    res["mrr"] = round(float((1.0 / ranks).mean()), 6)
    return res


def relative(value: float | None, ref: float | None) -> float | None:
    """``value`` as a fraction of the reference's ``ref`` (None when either is missing or ref is 0)."""
    if value is None or not ref:
        return None
    return round(value / ref, 4)
