"""Run in the users' venv (.venv-users: sentence-transformers 5, transformers 4.57, optimum-onnx) by
tests/test_dropin.py: load bertopt ``build`` folders the way a user would, with no extra arguments,
and write what each library computes to an .npz for the test to compare with ``bertopt.load``.

    python tests/dropin_users.py SPEC.json     # {"texts": [...], "out": "x.npz", "embedding": DIR, "classifier": DIR, "openvino": DIR}

Nothing from bertopt is imported here: these are the users' libraries only.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def sentence_transformers_vectors(folder: str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, backend="onnx", device="cpu").encode(texts, batch_size=32)


def optimum_vectors(folder: str, texts: list[str]) -> np.ndarray:
    """The model card's recipe with Optimum: mean of last_hidden_state over the attention mask, L2-normalized."""
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    model = ORTModelForFeatureExtraction.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    rows = []
    for i in range(0, len(texts), 32):
        enc = tok(texts[i:i + 32], padding=True, truncation=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(rows)


def openvino_vectors(folder: str, texts: list[str]) -> dict[str, np.ndarray]:
    """An OpenVINO build folder: sentence-transformers' backend="openvino" as it is, and with the f32 hint the
    build measured with; optimum-intel's OVModelForFeatureExtraction by the model card's recipe."""
    import torch
    from optimum.intel import OVModelForFeatureExtraction
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out = {"st_ov": SentenceTransformer(folder, backend="openvino", device="cpu").encode(texts, batch_size=32),
           "st_ov_f32": SentenceTransformer(folder, backend="openvino", device="cpu",
                                            model_kwargs={"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}).encode(texts, batch_size=32)}
    model = OVModelForFeatureExtraction.from_pretrained(folder, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    tok = AutoTokenizer.from_pretrained(folder)
    rows = []
    for i in range(0, len(texts), 32):
        enc = tok(texts[i:i + 32], padding=True, truncation=True, return_tensors="pt")
        hidden = torch.as_tensor(model(**enc).last_hidden_state)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    out["optimum_ov"] = np.concatenate(rows)
    return out


def pipeline_labels(folder: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    clf = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained(folder),
                   tokenizer=AutoTokenizer.from_pretrained(folder))
    res = clf(texts, batch_size=16, truncation=True)
    return [r["label"] for r in res], np.array([r["score"] for r in res])


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    texts = spec["texts"]
    out = {}
    if spec.get("embedding"):
        out["st"] = sentence_transformers_vectors(spec["embedding"], texts)
        out["optimum"] = optimum_vectors(spec["embedding"], texts)
    if spec.get("openvino"):
        out |= openvino_vectors(spec["openvino"], texts)
    if spec.get("classifier"):
        labels, scores = pipeline_labels(spec["classifier"], texts)
        out["labels"] = np.array(labels)
        out["scores"] = scores
    np.savez(spec["out"], **out)


if __name__ == "__main__":
    main()
