"""bench's held-out embedding tasks (:mod:`bertopt.bench.quality`) for each artifact against the reference.

``run["quality"]`` of an embedding model (null for classifiers):

    {"k": 10,
     "neighbours": {"agreement", "n"} | null,          # --data texts; the reference's neighbours kept
     "knn": {"accuracy", "n", "relative"} | null,      # --label-column (on --eval, else --data)
     "retrieval": {"n", "recall@1", "recall@10", "mrr", "relative": {...}} | null}   # --pairs

``relative`` is the score as a fraction of the reference's (the first artifact's) score.
"""

from __future__ import annotations

from bertopt.bench import quality as q
from bertopt.errors import BertoptError

DEFAULT_K = 10
RECALL_AT = (1, 10)


def load_pairs(o):
    """The --pairs (or --data) query/document pairs of bench options ``o``, checked before any timing; None without."""
    from bertopt.data import load_pairs as load

    path = o.retrieval_file
    if path is None:
        return None
    pairs = load(path, o.query_column or "query", o.doc_column or "document", limit=o.pairs_samples)
    if len(pairs) <= max(RECALL_AT):
        raise BertoptError(f"{pairs.path}: {len(pairs)} query/document pairs; recall@{max(RECALL_AT)} needs more than {max(RECALL_AT)}",
                           hint="use more pairs (or a larger --pairs-samples)")
    return pairs


def check_k(o, fid_texts, labelled) -> None:
    """An explicit --k larger than a text set is a user error before any timing."""
    if o.k is None:
        return
    if fid_texts is not None:
        q.check_k(o.k, len(fid_texts), f"--k {o.k}: neighbour agreement on {fid_texts.path}", "use a smaller --k or a larger --samples")
    if labelled is not None:
        q.check_k(o.k, len(labelled), f"--k {o.k}: k-NN accuracy on {labelled.path}", "use a smaller --k or more labelled texts")


def labelled_texts(fid_texts, ev):
    """The labelled texts k-NN accuracy reads: --eval, else --data when it was read with --label-column."""
    if ev is not None:
        return ev
    return fid_texts if fid_texts is not None and fid_texts.labels is not None else None


def add_quality(runners, runs, vecs: list[dict], labelled, pairs, o, max_length: int, advance=lambda n: None) -> None:
    """``run["quality"]`` for every embedding artifact (``vecs[i]``: its pooled ``data``/``eval`` vectors and ``choice``)."""
    from bertopt.bench.measure import pooled, run_texts
    from bertopt.outputs import choose_for_arrays
    from bertopt.ui import note

    k = o.k or DEFAULT_K
    ref = vecs[0]
    ref_q = None
    n_data = None if ref.get("data") is None else len(ref["data"])
    if n_data is not None and o.k is None and k >= n_data:
        note(f"bench: neighbour agreement skipped: {n_data} texts are too few for {k} neighbours (pass --k or more --samples)")
        n_data = None
    for i, (run, r, v) in enumerate(zip(runs, runners, vecs)):
        if v["choice"] is None or v["choice"].kind == "logits":
            continue
        res: dict = {"k": k, "neighbours": None, "knn": None, "retrieval": None}
        if n_data is not None and v.get("data") is not None and v["data"].shape == ref["data"].shape:
            res["neighbours"] = {"agreement": round(q.neighbour_agreement(ref["data"], v["data"], k), 6), "n": n_data}
        if labelled is not None and v.get("eval") is not None:
            res["knn"] = {"accuracy": round(q.knn_accuracy(v["eval"], labelled.labels, k), 6), "n": len(labelled)}
        if pairs is not None:
            side = []
            for texts in (pairs.queries, pairs.docs):
                out = run_texts(r, texts, max_length, advance=advance)
                side.append(pooled(out, choose_for_arrays(out, r.task, o.output, vecs[0]["choice"], where=str(r.path)))[1])
            res["retrieval"] = q.retrieval(side[0], side[1], RECALL_AT)
        _relative(res, res if i == 0 else ref_q)
        run["quality"] = res
        if i == 0:
            ref_q = res


def _relative(res: dict, ref: dict | None) -> None:
    """Each task score as a fraction of the reference's."""
    if res["knn"] is not None:
        res["knn"]["relative"] = q.relative(res["knn"]["accuracy"], ((ref or {}).get("knn") or {}).get("accuracy"))
    if res["retrieval"] is not None:
        base = (ref or {}).get("retrieval") or {}
        res["retrieval"]["relative"] = {m: q.relative(res["retrieval"][m], base.get(m)) for m in (*(f"recall@{k}" for k in RECALL_AT), "mrr")}


def weakest(run: dict) -> float | None:
    """The lowest task score of ``run`` as a fraction of the reference's (neighbours kept included); None without any."""
    qa = run.get("quality") or {}
    vals = [(qa.get("neighbours") or {}).get("agreement"), (qa.get("knn") or {}).get("relative"),
            *((qa.get("retrieval") or {}).get("relative") or {}).values()]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def render(report: dict) -> None:
    """The held-out embedding tasks as a rich table (nothing when no run has them)."""
    runs = [r for r in report["runs"] if r.get("quality")]
    if not runs:
        return
    from rich.table import Table

    from bertopt.ui import stdout

    k = runs[0]["quality"]["k"]
    t = Table(title=f"held-out embedding tasks (k={k}; x = fraction of the reference's score)", title_justify="left")
    for col in ("artifact", "neighbours kept", "k-NN acc", "recall@1", "recall@10", "MRR", "weakest x"):
        t.add_column(col, justify="left" if col == "artifact" else "right")
    for run in runs:
        qa = run["quality"]
        knn, ret = qa.get("knn") or {}, qa.get("retrieval") or {}
        rel = ret.get("relative") or {}

        def cell(v, x=None):
            return "" if v is None else f"{v:.4f}" + (f" ({x:.3f}x)" if x is not None else "")

        w = weakest(run)
        t.add_row(run["name"], cell((qa.get("neighbours") or {}).get("agreement")), cell(knn.get("accuracy"), knn.get("relative")),
                  cell(ret.get("recall@1"), rel.get("recall@1")), cell(ret.get("recall@10"), rel.get("recall@10")),
                  cell(ret.get("mrr"), rel.get("mrr")), "" if w is None else f"{w:.3f}")
    stdout.print(t)
