"""Export of the real MiniLM: dynamic axes, parity with PyTorch on real text at other shapes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bertopt.artifacts import load_artifact


def test_manifest_and_graph(exported_minilm):
    art = load_artifact(exported_minilm)
    m = art.manifest
    assert m["stage"] == "export" and m["params"]["exporter"] == "legacy"
    assert m["metrics"]["parity"]["max_abs_diff"] < 1e-4
    assert m["model"]["num_layers"] == 6 and m["model"]["hidden_size"] == 384
    assert (exported_minilm / "tokenizer" / "tokenizer.json").is_file()
    g = onnx.load(str(art.model_path), load_external_data=False).graph
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in g.output] == ["last_hidden_state", "sentence_embedding"]
    for i in g.input:
        dims = i.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_param == "sequence"


def test_parity_on_real_text_at_two_new_shapes(exported_minilm, minilm_dir, slabs_texts):
    """Independent of export's own check: other texts, other shapes, every output, < 1e-4."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bertopt.backends.onnxruntime import make_session

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    ref = AutoModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    sess = make_session(load_artifact(exported_minilm).model_path)
    for batch, seq in ((3, 40), (16, 128)):
        enc = tok(slabs_texts[:batch], padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden, emb = sess.run(["last_hidden_state", "sentence_embedding"], feeds)
        with torch.no_grad():
            h = ref(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        mask = feeds["attention_mask"][..., None]
        pooled = (h * mask).sum(1) / mask.sum(1)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        assert hidden.shape == (batch, seq, 384)
        assert np.abs(hidden - h).max() < 1e-4
        assert np.abs(emb - pooled).max() < 1e-4


def test_second_run_is_skipped_and_force_rebuilds(exported_minilm, minilm_dir):
    from bertopt.export.stage import run_export

    before = json.loads((exported_minilm / "manifest.json").read_text())["created"]
    art = run_export(minilm_dir, exported_minilm)
    assert art.skipped
    assert json.loads((exported_minilm / "manifest.json").read_text())["created"] == before


def test_classifier_export(exported_classifier):
    m = load_artifact(exported_classifier).manifest
    assert m["model"]["task"] == "sequence-classification"
    assert m["model"]["outputs"] == ["logits"]
    assert m["metrics"]["parity"]["max_abs_diff"] < 1e-4


def test_bad_option_values(minilm_dir, tmp_path):
    from bertopt.errors import BertoptError
    from bertopt.export.stage import run_export

    for kwargs, needle in (({"task": "qa"}, "task='qa': must be"), ({"pooling": "sum"}, "pooling='sum': must be"), ({"opset": 9}, "opset=9: must be greater than or equal to 14")):
        with pytest.raises(BertoptError, match=needle):
            run_export(minilm_dir, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_dynamo_exporter(minilm_dir, tmp_path):
    """The dynamo exporter (offered for comparison) also exports with dynamic axes and parity."""
    from bertopt.export.stage import run_export

    art = run_export(minilm_dir, tmp_path / "dyn", exporter="dynamo")
    assert art.manifest["params"]["exporter"] == "dynamo"
    assert art.manifest["metrics"]["parity"]["max_abs_diff"] < 1e-4
    g = onnx.load(str(art.model_path)).graph
    assert all(not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in g.input)
    assert all(not i.type.tensor_type.shape.dim[1].HasField("dim_value") for i in g.input)
