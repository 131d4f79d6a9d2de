"""The fine-tuned MiniLM prompt-injection classifier (examples/finetune_classifier.py) that accuracy work uses.

The classifier is built once per machine by the ``classifier_dir`` fixture (a few minutes on the CPU)
and cached in .cache/models/minilm-slabs-classifier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "finetune_classifier.py"
N = 200


@pytest.fixture(scope="module")
def metrics(classifier_dir) -> dict:
    return json.loads((classifier_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def test_sample(slabs_dir):
    """200 real S-Labs test texts spread evenly over the split, with their positions and labels."""
    from bertopt.data import load_texts

    d = load_texts(slabs_dir / "test.csv", text_column="text", label_column="label")
    idx = np.linspace(0, len(d.texts) - 1, N).round().astype(int)
    return idx, [d.texts[i] for i in idx], np.array([int(d.labels[i]) for i in idx])


@pytest.fixture(scope="module")
def sample_predictions(classifier_dir, test_sample):
    """The saved folder, reloaded offline with plain transformers, classifying the sample."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(classifier_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(classifier_dir), attn_implementation="eager").eval()
    _, texts, _ = test_sample
    preds = []
    with torch.inference_mode():
        for s in range(0, len(texts), 50):
            enc = tok(texts[s : s + 50], padding=True, truncation=True, max_length=128, return_tensors="pt")
            preds.append(model(**enc).logits.argmax(-1).numpy())
    return np.concatenate(preds)


def test_saved_folder_is_a_bert_injection_classifier(classifier_dir, metrics):
    from bertopt.models import read_config

    cfg = read_config(classifier_dir)  # what `bertopt export` checks first
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["model_type"] == "bert"
    assert {str(k): v for k, v in cfg["id2label"].items()} == {"0": "benign", "1": "injection"}
    assert not (classifier_dir / "manifest.json").exists()  # a Hugging Face folder, not an artifact
    assert metrics["settings"]["limit"] is None and metrics["settings"]["eval_limit"] is None  # the real thing
    assert metrics["test"]["n"] == len(metrics["test_predictions"]) == 2101


def test_accuracy_well_above_chance(sample_predictions, test_sample):
    _, _, labels = test_sample
    acc = float((sample_predictions == labels).mean())
    assert acc > 0.85, f"accuracy {acc:.3f} on {N} S-Labs test texts"
    # not a one-class model: it finds injections and lets benign text through
    assert (sample_predictions[labels == 1] == 1).mean() > 0.7
    assert (sample_predictions[labels == 0] == 0).mean() > 0.7


def test_metrics_match_a_recomputation(sample_predictions, test_sample, metrics, slabs_dir):
    from bertopt.data import load_texts

    idx, _, labels = test_sample
    recorded = np.array([int(metrics["test_predictions"][i]) for i in idx])
    # text by text: the reloaded folder is the model that metrics.json evaluated (a padding-width
    # difference may flip a logit sitting right on the boundary, hardly more than one)
    assert (recorded != sample_predictions).sum() <= 2
    # and the recorded accuracy is what the recorded predictions give, near the sample's accuracy
    all_labels = np.array([int(v) for v in load_texts(slabs_dir / "test.csv", text_column="text", label_column="label").labels])
    all_recorded = np.array([int(c) for c in metrics["test_predictions"]])
    assert metrics["test_accuracy"] == pytest.approx(float((all_recorded == all_labels).mean()), abs=1e-6)
    assert abs(float((sample_predictions == labels).mean()) - metrics["test_accuracy"]) < 0.05
    assert metrics["val_accuracy"] > 0.85


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "refusing to replace" in r.stderr and str(out) in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    assert list(tmp_path.iterdir()) == [out]  # no temporary sibling left behind
