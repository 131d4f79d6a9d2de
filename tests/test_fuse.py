"""`bertopt fuse` on the real MiniLM: both exporters, both targets, real S-Labs text, the CLI and its errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from bertopt.errors import BertoptError
from bertopt.passes.common import session
from bertopt.passes.pipeline import fuse_model
from bertopt.passes.stage import run_fuse

from conftest import ROOT, run_cli


def _ops(path) -> Counter:
    m = onnx.load(str(path))
    return Counter((f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in m.graph.node)


@pytest.fixture(scope="session")
def dynamo_minilm(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM through torch.onnx.export(dynamo=True) with sdpa attention: a bare .onnx bertopt did not write."""
    spec = importlib.util.spec_from_file_location("fuse_bench", ROOT / "benchmarks" / "fuse_vs_ort_optimizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.dynamo_export(minilm_dir, tmp_path_factory.mktemp("dynamo") / "minilm")


@pytest.fixture(scope="session")
def fused(exported_minilm, dynamo_minilm, tmp_path_factory):
    """{(exporter, target): fused artifact}, built once."""
    root = tmp_path_factory.mktemp("fused")
    srcs = {"legacy": exported_minilm, "dynamo": dynamo_minilm}
    return {(e, t): run_fuse(src, root / f"{e}-{t}", target=t) for e, src in srcs.items() for t in ("onnxruntime", "tensorrt")}


def _model_of(src: Path) -> Path:
    return src / "model.onnx" if src.is_dir() else src


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_onnxruntime_target_fuses_every_layer(fused, exporter):
    art = fused[(exporter, "onnxruntime")]
    m = art.manifest["metrics"]
    assert m["passes"]["attention"] == 6 and m["passes"]["gelu"] == 6 and m["passes"]["qkv_bias"] == 6
    assert m["expected"] == {"attention": 6, "layernorm": 0, "gelu": 6} and m["warnings"] == []
    ops = _ops(art.model_path)
    assert ops["com.microsoft::MultiHeadAttention"] == 6 and ops["com.microsoft::Gelu"] == 6
    assert ops["Softmax"] == 0 and ops["Erf"] == 0 and ops["LayerNormalization"] == 13
    assert ops["MatMul"] == 36  # 6 x (Q, K, V, output, FFN in, FFN out) GEMMs stay standard for Q/DQ
    # the Q/K/V biases ride in the attention op: every Q/K/V MatMul feeds it directly
    g = onnx.load(str(art.model_path)).graph
    producers = {o: n for n in g.node for o in n.output}
    for mha in (n for n in g.node if n.op_type == "MultiHeadAttention"):
        assert len(mha.input) > 3 and mha.input[3] and all(producers[i].op_type == "MatMul" for i in mha.input[:3])
    # the fusions ORT runs slower on the CPU are left out, and say why
    assert ops["com.microsoft::SkipLayerNormalization"] == 0 and ops["com.microsoft::BiasGelu"] == 0
    assert set(m["not_run"]) == {"skip_layernorm", "embed_layernorm", "bias_gelu"}
    # the artifact carries what the next stages need
    assert art.manifest["model"]["num_heads"] == 12 and art.manifest["model"]["hidden_size"] == 384
    assert art.manifest["model"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (art.tokenizer_dir / "tokenizer.json").is_file()
    assert art.manifest["metrics"]["parity"]["inputs"].startswith("sample sentences")
    assert art.manifest["metrics"]["parity"]["max_rel_diff"] < 1e-4


def test_model_block_is_carried_forward(fused, exported_minilm):
    src = json.loads((exported_minilm / "manifest.json").read_text())["model"]
    got = fused[("legacy", "onnxruntime")].manifest["model"]
    assert {k: got[k] for k in src} == src


def test_every_fusion_profile_gives_the_issue_counts(exported_minilm, slabs_texts):
    """ort_fusions="all": 6 attention, 12 SkipLayerNorm + 1 EmbedLayerNorm, 6 (Bias)Gelu, still exact."""
    src = onnx.load(str(exported_minilm / "model.onnx"))
    out, rep = fuse_model(src, "onnxruntime", options={"ort_fusions": "all"})
    assert rep.passes["attention"] == 6 and rep.passes["gelu"] == 6 and rep.passes["bias_gelu"] == 6
    assert rep.passes["skip_layernorm"] == 12 and rep.passes["embed_layernorm"] == 1
    assert rep.ops_after.get("LayerNormalization", 0) == 0
    _assert_parity(src, out, exported_minilm / "tokenizer", slabs_texts[:64])


def _run_texts(sess, tok, texts, batch=16):
    """Every output of ``sess`` over ``texts`` in batches (dynamic padding): [output][batch] arrays."""
    from bertopt.data import tokenize

    names = [i.name for i in sess.get_inputs()]
    outs = [sess.run(None, tokenize(tok, texts[i : i + batch], names, max_length=128)) for i in range(0, len(texts), batch)]
    return [[o[k] for o in outs] for k in range(len(outs[0]))]


def _assert_parity(reference, fused_model, tokenizer_dir, texts, atol=1e-4):
    """Reference and fused on real text, ORT optimizations off, every output within ``atol``."""
    from bertopt.data import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    a = _run_texts(session(reference), tok, texts)
    b = _run_texts(session(fused_model), tok, texts)
    worst = 0.0
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            worst = max(worst, float(np.abs(x - y).max()))
    assert worst <= atol, worst
    return worst


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_fused_matches_unfused_on_real_text(fused, exported_minilm, dynamo_minilm, slabs_texts, exporter, target):
    src = _model_of(exported_minilm if exporter == "legacy" else dynamo_minilm)
    _assert_parity(str(src), str(fused[(exporter, target)].model_path), exported_minilm / "tokenizer", slabs_texts)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_tensorrt_target_is_standard_onnx_that_passes_the_checker(fused, exporter):
    art = fused[(exporter, "tensorrt")]
    m = onnx.load(str(art.model_path))
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"}
    onnx.checker.check_model(str(art.model_path), full_check=True)
    ops = _ops(art.model_path)
    assert ops["LayerNormalization"] == 13 and ops["ReduceMean"] == 0
    assert ops["Softmax"] == 6 and ops["IsNaN"] == 0  # sdpa's NaN guard is gone
    assert art.manifest["metrics"]["passes"]["attention_standard"] == 6
    # GELU stays as Erf arithmetic below opset 20, and the manifest says why
    assert any("< 20 has no standard Gelu" in r for r in art.manifest["metrics"]["misses"]["gelu"])


def test_decomposed_layernorm_export_gets_layernormalization(minilm_dir, tmp_path):
    """An opset-14 export writes LayerNorm out; the tensorrt target turns it into opset-17 LayerNormalization."""
    from bertopt.export.stage import run_export

    exp = run_export(minilm_dir, tmp_path / "op14", opset=14)
    assert _ops(exp.model_path)["LayerNormalization"] == 0
    art = run_fuse(exp.path, tmp_path / "trt", target="tensorrt")
    assert art.manifest["metrics"]["passes"]["layernorm"] == 13
    assert art.manifest["metrics"]["expected"]["layernorm"] == 13
    # The family counts are taken before the first non-clean-up pass, whichever passes run (with a
    # clean-up pass left out, the third pass is a fusion: counting there saw its work already done).
    for cleanup in ("fold_constants", "remove_noops"):
        _, rep = fuse_model(onnx.load(str(exp.model_path)), "tensorrt", options={"disable": [cleanup]})
        assert rep.expected["layernorm"] == 13, cleanup
    m = onnx.load(str(art.model_path))
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert _ops(art.model_path)["LayerNormalization"] == 13
    onnx.checker.check_model(str(art.model_path), full_check=True)
    assert art.manifest["metrics"]["parity"]["max_rel_diff"] < 1e-4


def test_bare_onnx_with_a_tokenizer_beside_it(fused, dynamo_minilm):
    art = fused[("dynamo", "onnxruntime")]
    from bertopt.artifacts import input_path

    assert input_path(art, "model") == dynamo_minilm.resolve()
    assert art.manifest["model"]["architecture"] == "bert"  # what load_artifact assumes for a bare file
    assert art.manifest["model"]["num_heads"] == 12  # found by the attention pass
    assert art.tokenizer_dir is not None


def test_up_to_date_output_is_skipped(fused, exported_minilm):
    art = fused[("legacy", "tensorrt")]
    again = run_fuse(exported_minilm, art.path, target="tensorrt")
    assert again.skipped and again.manifest["fingerprint"] == art.manifest["fingerprint"]


def test_user_errors(exported_minilm, fused, tmp_path):
    with pytest.raises(BertoptError, match="run_fuse: target='tflite': must be 'onnxruntime' or 'tensorrt'"):
        run_fuse(exported_minilm, tmp_path / "x", target="tflite")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(BertoptError, match="not an ONNX file"):
        run_fuse(txt, tmp_path / "y")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(BertoptError, match="not a readable ONNX model"):
        run_fuse(bad, tmp_path / "z")
    # an ORT-fused model has com.microsoft ops: no tensorrt target from it
    with pytest.raises(BertoptError, match="standard ONNX ops only"):
        run_fuse(fused[("legacy", "onnxruntime")].path, tmp_path / "w", target="tensorrt")
    assert not any((tmp_path / n).exists() for n in "xyzw")


def test_cli_says_so_when_a_family_does_not_fuse(exported_minilm, tmp_path):
    """Softmax over another axis: attention cannot fuse; the warning and --verbose name the failed guard."""
    m = onnx.load(str(exported_minilm / "model.onnx"))
    for n in m.graph.node:
        if n.op_type == "Softmax":
            n.attribute[0].i = 2
    src = tmp_path / "odd" / "model.onnx"
    src.parent.mkdir()
    onnx.save(m, str(src))
    shutil.copytree(exported_minilm / "tokenizer", src.parent / "tokenizer")
    res = run_cli("fuse", str(src), "-o", str(tmp_path / "out"), "--verbose")
    assert res.returncode == 0, res.stderr
    assert "warning: attention: fused 0 of 6 in the model (Softmax is not over the last axis (x6))" in res.stderr
    assert "attention: fired 0 times: Softmax is not over the last axis (x6)" in res.stderr
    assert "skip_layernorm: fired 0 times: not run:" in res.stderr
    assert "gelu" in res.stdout and "6" in res.stdout
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["metrics"]["warnings"] and man["metrics"]["passes"]["attention"] == 0


def test_cli_rejects_an_unknown_target(exported_minilm, tmp_path):
    bad = run_cli("fuse", str(exported_minilm), "-o", str(tmp_path / "bad"), "--target", "coreml")
    assert bad.returncode == 1 and "error: fuse --target: must be 'onnxruntime' or 'tensorrt' (got 'coreml')" in bad.stderr and "hint:" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_other_bert_family_architectures(arch, minilm_dir, tmp_path):
    """A tiny random RoBERTa / DistilBERT (MiniLM's tokenizer): every layer's attention and GELU fuse."""
    import torch
    from transformers import AutoModel, DistilBertConfig, RobertaConfig

    from bertopt.export.stage import run_export

    torch.manual_seed(0)
    small = dict(vocab_size=30522)
    cfg = (RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, pad_token_id=0, **small)
           if arch == "roberta" else DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, **small))
    AutoModel.from_config(cfg).eval().save_pretrained(tmp_path / "hf")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm_dir / f, tmp_path / "hf" / f)
    exp = run_export(tmp_path / "hf", tmp_path / "exp", pooling="none")
    for target, attn in (("onnxruntime", "attention"), ("tensorrt", "attention_standard")):
        art = run_fuse(exp.path, tmp_path / target, target=target)
        m = art.manifest["metrics"]
        assert m["passes"][attn] == 2 and not m["warnings"]
        assert m["parity"]["max_rel_diff"] < 1e-5
    assert m["passes"]["attention_standard"] == 2
    if arch == "roberta":  # its position (cumsum of the padding) and token-type ids are not what the op computes
        _, rep = fuse_model(onnx.load(str(exp.model_path)), "onnxruntime", options={"ort_fusions": "all"})
        assert rep.passes["embed_layernorm"] == 0 and rep.passes["attention"] == 2


def test_run_fuse_ort_fusions_all_and_bad_values(exported_minilm, tmp_path):
    """The stage (CLI/recipe) exposes every com.microsoft fusion the issue lists, and validates options."""
    from bertopt.errors import BertoptError
    from bertopt.passes.stage import run_fuse

    art = run_fuse(str(exported_minilm), tmp_path / "all", ort_fusions="all")
    passes = art.manifest["metrics"]["passes"]
    assert passes["attention"] == 6 and passes["skip_layernorm"] >= 12 and art.manifest["params"]["ort_fusions"] == "all"
    for kwargs in ({"ort_fusions": "some"}, {"attention_op": "FlashAttention"}):
        with pytest.raises(BertoptError):
            run_fuse(str(exported_minilm), tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_qdq_model_fuses_attention_and_keeps_its_int8_gemms(exported_minilm, slabs_dir, slabs_texts, tmp_path):
    """A Q/DQ model (weights as DequantizeLinear(int8), as `calibrate` and `qat` write them) still gets
    MultiHeadAttention, keeps every Q/DQ pair, and gives the same outputs; the packed Attention form
    refuses to fold quantized weights into a float GEMM."""
    from bertopt.calibrators.stage import run_calibrate

    cal = run_calibrate(exported_minilm, tmp_path / "int8", data=str(slabs_dir / "train.csv"), text_column="text", samples=16, max_length=64)
    before = _ops(cal.model_path)
    assert before["Softmax"] == 6 and before["DequantizeLinear"] == 72
    art = run_fuse(cal.path, tmp_path / "fused")
    ops = _ops(art.model_path)
    assert art.manifest["metrics"]["passes"]["attention"] == 6 and ops["com.microsoft::MultiHeadAttention"] == 6
    assert ops["QuantizeLinear"] == before["QuantizeLinear"] and ops["DequantizeLinear"] == before["DequantizeLinear"] and ops["MatMul"] == 36
    # the fused attention's float rounding may move an activation across an int8 step: compare the
    # embeddings by cosine (calibrate vs FP32 is ~0.996 min): the gap must be far below that
    from bertopt.data import load_tokenizer

    tok = load_tokenizer(exported_minilm / "tokenizer")
    names = [o.name for o in session(str(cal.model_path)).get_outputs()]
    k = names.index("sentence_embedding")
    a = np.concatenate(_run_texts(session(str(cal.model_path)), tok, slabs_texts[:64])[k])
    b = np.concatenate(_run_texts(session(str(art.model_path)), tok, slabs_texts[:64])[k])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999 and cos.mean() > 0.99999, (cos.min(), cos.mean())
    _, rep = fuse_model(onnx.load(str(cal.model_path)), "onnxruntime", options={"attention_op": "Attention"})
    assert rep.passes["attention"] == 0 and any("quantized" in why for why in rep.misses["attention"])


def test_parity_rule_for_qdq_inputs_allows_rounding_flips_not_bugs():
    """A Q/DQ input's fused twin may move single rows by a quantization step (a value on a rounding
    boundary); the FP32 rule (max |diff|) would call that a bug, the Q/DQ rule (mean row cosine) must
    not. A change that moves every row (a real fusion bug) fails both."""
    from bertopt.passes.stage import _row_cosines, parity_failure

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 19, 384))
    flipped = ref.copy()
    flipped[1, 3, :40] += 0.8  # one token's row, by a coarse step: max |diff| 0.8 of ~4.5
    broken = ref + rng.normal(scale=0.3, size=ref.shape)  # every row off

    def record(y):
        d = float(np.max(np.abs(ref - y)))
        scale = max(1.0, float(np.max(np.abs(ref))))
        return {"outputs": {"h": {"max_abs_diff": d, "max_abs_reference": scale, **_row_cosines(ref, y)}}, "max_rel_diff": d / scale}

    assert parity_failure(record(flipped), quantized=False) is not None  # FP32: a bug
    assert parity_failure(record(flipped), quantized=True) is None  # Q/DQ: a rounding flip
    assert parity_failure(record(broken), quantized=True)[0] == "h"
    assert parity_failure(record(ref), quantized=False) is None
    zeros = np.zeros((2, 3))
    assert _row_cosines(zeros, zeros) == {"cosine_min": 1.0, "cosine_mean": 1.0}
