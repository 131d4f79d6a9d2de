"""Held-out embedding quality (bertopt.bench.quality): known rankings give known scores; bench reports them."""

from __future__ import annotations

import numpy as np
import pytest

from bertopt.bench.quality import knn_accuracy, neighbour_agreement, relative, retrieval, top_k
from bertopt.errors import BertoptError


def angles(*deg) -> np.ndarray:
    """Unit vectors in the plane at these angles (degrees): cosine similarity orders them by angle distance."""
    a = np.radians(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1)


def test_retrieval_known_ranks():
    docs = angles(0, 10, 20, 30)
    # query i's document is doc i; ranks by angle distance: q0 at 0 -> doc0 first (rank 1);
    # q1 at 4 -> doc0 (4), doc1 (6): rank 2; q2 at 20 -> rank 1; q3 at 1 -> doc0, doc1, doc2, doc3: rank 4
    q = angles(0, 4, 20, 1)
    r = retrieval(q, docs, ks=(1, 2, 3))
    assert r["n"] == 4
    assert r["recall@1"] == 0.5 and r["recall@2"] == 0.75 and r["recall@3"] == 0.75
    assert r["mrr"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 4) / 4, abs=1e-6)


def test_retrieval_ties_do_not_flatter():
    # every document identical: the relevant one ranks after those with a lower index
    r = retrieval(np.ones((3, 4)), np.ones((3, 4)), ks=(1, 2))
    assert r["recall@1"] == pytest.approx(1 / 3, abs=1e-6) and r["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3, abs=1e-6)


def test_top_k_orders_by_similarity_and_leaves_self_out():
    x = angles(0, 10, 25, 90)
    assert top_k(x, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]


def test_neighbour_agreement_known():
    ref = angles(0, 10, 25, 45, 70)
    assert neighbour_agreement(ref, ref * 3.0, k=2) == 1.0  # scale does not move a neighbour
    # text 0 moved to 50: the 2-NN under ref are 0:{1,2} 1:{0,2} 2:{1,3} 3:{2,4} 4:{3,2};
    # under got (50,10,25,45,70): 0:{3,4} 1:{2,3} 2:{1,3} 3:{0,2} 4:{0,3}; kept 0+1+2+1+1 of 10
    got = angles(50, 10, 25, 45, 70)
    assert neighbour_agreement(ref, got, k=2) == pytest.approx(5 / 10)


def test_knn_accuracy_known():
    # two clusters; text 4 lies in cluster a but is labelled b: leave-one-out gets it wrong, the rest right
    x = angles(0, 5, 10, 15, 7, 90, 95, 100, 105)
    y = ["a", "a", "a", "a", "b", "b", "b", "b", "b"]
    assert knn_accuracy(x, y, k=3) == pytest.approx(8 / 9)
    # k=1 on a line of alternating labels: every nearest neighbour has the other label
    assert knn_accuracy(angles(0, 10, 20, 30), [0, 1, 0, 1], k=1) == 0.0


def test_knn_tie_goes_to_the_more_similar_class():
    # text 0's two nearest: 1 (label b, 5 degrees) and 2 (label c, 20 degrees): a 1-1 vote, b is nearer
    x = angles(0, 5, -20, 120, 125)
    assert knn_accuracy(x, ["b", "b", "c", "c", "c"], k=2) == pytest.approx(4 / 5)  # only text 2 (c, nearest two b) is wrong


def test_k_larger_than_the_set_is_a_user_error():
    x = angles(0, 10, 20)
    with pytest.raises(BertoptError, match="k=3 neighbours need more than 3 texts, and there are 3") as e:
        neighbour_agreement(x, x, k=3)
    assert e.value.hint
    with pytest.raises(BertoptError, match="k-NN"):
        knn_accuracy(x, [0, 1, 0], k=5)
    with pytest.raises(BertoptError, match="recall@10 needs more than 10 documents"):
        retrieval(x, x)


def test_relative():
    assert relative(0.7, 0.72) == 0.9722 and relative(None, 0.5) is None and relative(0.5, 0.0) is None


# ------------------------------------------------------------------------------------- bench
FAST = dict(batch=[1], seq=[16], warmup=0, iters=1, repeats=1)


@pytest.fixture(scope="module")
def quality_report(minilm_dir, exported_minilm, slabs_dir, bbc_split):
    """PyTorch MiniLM vs its ONNX export: neighbours on 40 S-Labs texts, k-NN on them (labels), 40 BBC title -> body pairs."""
    from bertopt.bench.stage import run_bench

    return run_bench([str(minilm_dir), str(exported_minilm)], None, data=str(slabs_dir / "validation.csv"), text_column="text",
                     label_column="label", samples=40, pairs=str(bbc_split / "test_pairs.csv"), query_column="title", doc_column="body",
                     pairs_samples=40, max_length=64, **FAST)


def test_bench_reports_embedding_tasks_against_the_reference(quality_report):
    ref, ort = (r["quality"] for r in quality_report["runs"])
    assert ref["k"] == 10 and ref["neighbours"] == {"agreement": 1.0, "n": 40}
    # the same model on another runtime keeps every neighbour and every score
    assert ort["neighbours"]["agreement"] == 1.0
    assert ort["knn"]["n"] == 40 and ort["knn"]["relative"] == 1.0 and ref["knn"]["relative"] == 1.0
    r = ref["retrieval"]
    assert r["n"] == 40 and 0 < r["recall@1"] <= r["recall@10"] <= 1 and r["recall@1"] <= r["mrr"] <= r["recall@10"]
    assert r["recall@10"] > 0.8  # MiniLM finds a BBC article from its headline among 40, even from 64 tokens of it
    assert ort["retrieval"]["relative"] == {"recall@1": 1.0, "recall@10": 1.0, "mrr": 1.0}


def test_bench_pairs_bad_input_is_a_user_error(exported_minilm, bbc_split, slabs_dir, tmp_path):
    from conftest import run_cli

    base = ["bench", str(exported_minilm), "--batch", "1", "--seq", "8", "--iters", "1", "--repeats", "1", "--warmup", "0"]
    r = run_cli(*base, "--pairs", str(bbc_split / "test_pairs.csv"), "--query-column", "headline", "--doc-column", "body",
                "--out", str(tmp_path / "b1"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "test_pairs.csv: no column 'headline' (--query-column)" in r.stderr and "hint: columns are: title, body" in r.stderr
    r = run_cli(*base, "--data", str(slabs_dir / "validation.csv"), "--text-column", "text", "--samples", "12", "--k", "12",
                "--out", str(tmp_path / "b2"))
    assert r.returncode == 1 and "error: --k 12: neighbour agreement" in r.stderr and "hint:" in r.stderr
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()
