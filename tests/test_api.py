"""bertopt.load: one model object for every artifact, on the runner bench times and compares."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import bertopt
from bertopt.errors import BertoptError


def _cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def texts(slabs_texts):
    return slabs_texts[:20]


@pytest.mark.parametrize("stage", ["export", "calibrate", "build"])
def test_load_gives_benchs_outputs(stage, minilm_chain, texts):
    """encode() is bench's fidelity path (same runner, tokenizer, pooling), batched inside."""
    from bertopt.bench.measure import pooled, run_texts
    from bertopt.outputs import choose_for_arrays
    from bertopt.bench.runners import open_runner

    path = minilm_chain[stage]
    m = bertopt.load(path, threads=1)
    assert m.info["stage"] == stage and m.info["backend"] == "onnxruntime"
    assert m.info["precision"] == ("fp32" if stage == "export" else "int8")
    emb = m.encode(texts, batch_size=8, max_length=128)
    runner = open_runner(path, threads=1)
    outs = run_texts(runner, texts, max_length=128)
    kind, ref = pooled(outs, choose_for_arrays(outs, runner.task))
    assert kind == "sentence_embedding" and emb.shape == (20, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    # the artifact says: mean pooling, L2-normalized
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    # padding per batch must not change a text's embedding; a single string gives one vector
    one = np.stack([m.encode(t) for t in texts[:4]])
    assert m.encode(texts[0]).shape == (384,)
    assert _cos(one, emb[:4]).min() > 0.9999


def test_two_threads_encode_at_once_on_one_model(minilm_chain, slabs_texts):
    """A service's threads share one loaded model: tokenizing is serialized, the ONNX Runtime runs overlap, and each
    thread gets what a lone call gives."""
    import threading
    import time

    m = bertopt.load(minilm_chain["build"], threads=1)
    rows = [slabs_texts[:24], slabs_texts[24:48]]
    alone = [m.encode(r, batch_size=4) for r in rows]
    run, active, peak, count = m.runner.run_outputs, [0], [0], threading.Lock()

    def run_outputs(feeds, names):  # the real run, with a count of the calls in flight
        with count:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.02)  # holds the call open so that an overlap cannot be missed
            return run(feeds, names)
        finally:
            with count:
                active[0] -= 1

    m.runner.run_outputs = run_outputs
    got: dict[int, np.ndarray] = {}
    workers = [threading.Thread(target=lambda i=i: got.setdefault(i, m.encode(rows[i], batch_size=4))) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert peak[0] == 2
    for i in range(2):
        np.testing.assert_allclose(got[i], alone[i], atol=1e-6)


def test_encode_matches_pytorch_and_int8_stays_close(minilm_dir, minilm_chain, texts):
    ref = bertopt.load(minilm_dir, threads=1)
    assert ref.info["backend"] == "pytorch"
    e_ref = ref.encode(texts, batch_size=8)
    assert _cos(bertopt.load(minilm_chain["export"], threads=1).encode(texts), e_ref).min() > 0.99999
    assert _cos(bertopt.load(minilm_chain["build"], threads=1).encode(texts), e_ref).min() > 0.98


def test_predict_labels_and_scores(exported_classifier, classifier_dir, slabs_dir):
    from bertopt.data import load_texts

    d = load_texts(slabs_dir / "test.csv", text_column="text", label_column="label", limit=48)
    m = bertopt.load(exported_classifier, threads=1)
    assert m.task == "sequence-classification" and m.labels
    preds = m.predict(d.texts, batch_size=16)
    assert len(preds) == 48 and all(p["label"] in m.labels and 0.0 < p["score"] <= 1.0 for p in preds)
    hf = bertopt.load(classifier_dir, threads=1).predict(d.texts, batch_size=16)
    assert [p["index"] for p in preds] == [p["index"] for p in hf]
    assert m.predict(d.texts[0])["index"] == preds[0]["index"]


def test_predict_on_an_embedding_model_is_a_user_error(exported_minilm):
    m = bertopt.load(exported_minilm, threads=1)
    with pytest.raises(BertoptError, match="not a classifier"):
        m.predict(["x"])
    with pytest.raises(BertoptError, match="not a str"):
        m.encode(["ok", 3])


def test_import_bertopt_stays_light():
    code = ("import sys, bertopt; assert callable(bertopt.load); "
            "heavy=[m for m in ('torch','onnxruntime','onnx','transformers','numpy','tensorrt') if m in sys.modules]; print('HEAVY=' + ','.join(heavy))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "HEAVY="
