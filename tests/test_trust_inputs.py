"""Issue 11 (trust), the input cases: empty text cells, third-party exports whose first output is not
the hidden state, weights that cannot be loaded (truncated safetensors, a pickle with a payload),
graphs with no encoder, a tokenizer/ folder that was beside the model, --exclude that matches
nothing. Each runs the real CLI (subprocess) and checks the exit code, the `error:` line, that no
traceback was printed, and what is (not) on disk."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import error_text, flat, run_cli

CAL = ("--samples", "16", "--eval-samples", "8", "--no-trt-cache")
BENCH = ("--batch", "1", "--seq", "16", "--iters", "1", "--repeats", "1", "--warmup", "0", "--samples", "12")

# A third-party export: a [batch, sequence] float tensor first, then the mean-pooled vector, then
# the hidden state, under names bertopt does not know; beside it a tokenizer/ folder holding only
# the WordPiece vocab.txt (which AutoTokenizer cannot place: fuse used to say "no tokenizer").
THIRD_PARTY = r'''
import sys
from pathlib import Path
import torch
from transformers import AutoModel, AutoTokenizer
src, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True)
m = AutoModel.from_pretrained(src, attn_implementation="eager").eval()
tok = AutoTokenizer.from_pretrained(src)
class W(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.m = m
    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return h.norm(dim=-1), (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), h
enc = tok(["hello world", "a longer sentence than that"], padding=True, return_tensors="pt")
ax = {0: "batch", 1: "sequence"}
with torch.no_grad():
    torch.onnx.export(W().eval(), (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), str(out / "model.onnx"),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["out_0", "zzz", "hs"],
                      dynamic_axes={"input_ids": ax, "attention_mask": ax, "token_type_ids": ax, "out_0": ax, "zzz": {0: "batch"}, "hs": ax},
                      opset_version=17, dynamo=False)
(out / "tokenizer").mkdir()
(out / "tokenizer" / "vocab.txt").write_text((Path(src) / "vocab.txt").read_text())
'''


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return flat(r.stderr)


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


@pytest.fixture(scope="module")
def third_party(minilm_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("third-party") / "tp"
    subprocess.run([sys.executable, "-c", THIRD_PARTY, str(minilm_dir), str(d)], check=True, capture_output=True, text=True)
    return d / "model.onnx"


@pytest.fixture(scope="module")
def data_with_holes(slabs_dir, tmp_path_factory) -> Path:
    """40 real S-Labs texts with 12 empty / whitespace / 'nan' / 'None' cells among them."""
    import csv

    rows = list(csv.DictReader((slabs_dir / "train.csv").read_text().splitlines()))[:40]
    holes = ["", "  ", "nan", "NaN", "None", "\t"] * 2
    f = tmp_path_factory.mktemp("data") / "holes.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i, r in enumerate(rows):
            if i < len(holes):
                w.writerow([holes[i], r["label"]])
            w.writerow([r["text"], r["label"]])
    return f


# ------------------------------------------------------------------------------ 5. empty text cells
def test_empty_cells_are_an_error_naming_file_and_column(exported_minilm, tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("text,label\n,0\n  ,1\nnan,0\nNaN,1\nNone,0\n")
    out = tmp_path / "int8"
    error_text(run_cli("calibrate", str(exported_minilm), "-o", str(out), "--data", str(f), *CAL), "empty.csv", "'text'")
    _nothing_written(out)
    # bench fidelity reads data the same way
    r = run_cli("bench", str(exported_minilm), "--data", str(f), *BENCH)
    error_text(r, "empty.csv", "'text'")


def test_load_texts_drops_empty_cells_with_their_labels(tmp_path, capfd):
    from bertopt.data import load_texts
    from bertopt.errors import BertoptError

    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [{"text": "a", "y": 1}, {"text": None, "y": 2}, {"text": " nan ", "y": 3},
                                                    {"text": "b", "y": 4}]) + "\n")
    d = load_texts(f, label_column="y")
    assert d.texts == ["a", "b"] and d.labels == [1, 4]
    assert "dropped 2" in capfd.readouterr().err
    with pytest.raises(BertoptError, match="2 non-empty texts in column 'text'.*fewer than the 10 needed"):
        load_texts(f, min_texts=10)


# ------------------------------------------------------------------------------ 6 + 5 + 13: a third-party export
@pytest.fixture(scope="module")
def calibrated_third_party(third_party, data_with_holes, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "tp-int8"
    r = run_cli("calibrate", str(third_party), "-o", str(out), "--data", str(data_with_holes), *CAL,
                "--exclude", "*layer.5*", "--exclude", "*no_such_layer*")
    return out, r


def test_calibrate_third_party_compares_the_hidden_state(calibrated_third_party):
    out, r = calibrated_third_party
    err = _ok(r)
    assert "comparing output 'hs' (hidden state [B,S,384], mean-pooled)" in err
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    assert m["compared_output"]["name"] == "hs" and m["fidelity"]["output"] == "hs"
    assert 0.95 < m["fidelity"]["cosine_min"] < 1.0  # a real INT8 error (16 calibration texts), not out_0 compared with itself


def test_calibrate_drops_empty_cells_with_a_count(calibrated_third_party, data_with_holes):
    out, r = calibrated_third_party
    assert f"dropped 12 empty/'nan' texts from {data_with_holes} (column 'text')" in flat(r.stderr)
    cal = json.loads((out / "manifest.json").read_text())["metrics"]
    assert cal["samples"] == 16


def test_calibrate_reports_exclude_matches(calibrated_third_party):
    out, r = calibrated_third_party
    err = flat(r.stderr)
    assert "warning: calibrate: --exclude '*no_such_layer*' matches no GEMM" in err
    assert "30 of 36 GEMMs INT8 (6 kept in float: 6 by --exclude '*layer.5*')" in err
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    assert m["exclude_matches"]["*layer.5*"] == 6 and m["exclude_matches"]["*no_such_layer*"] == 0
    assert m["quantized_gemms"] == 30 and m["candidate_gemms"] == 36 and len(m["excluded_gemms"]) == 6
    ranges = json.loads((out / "ranges.json").read_text())
    assert ranges["placement"]["exclude_matches"]["*layer.5*"] == 6


def test_output_override_and_unknown_name(third_party, data_with_holes, tmp_path):
    out = tmp_path / "x"
    err = error_text(run_cli("calibrate", str(third_party), "-o", str(out), "--data", str(data_with_holes), *CAL, "--output", "nope"),
                      "--output 'nope'")
    assert "hint: its outputs are: out_0 [B,S], zzz [B,384], hs [B,S,384]" in err
    _nothing_written(out)
    # a per-token [B,S] output cannot be compared: said so, not a crash
    error_text(run_cli("fuse", str(third_party), "-o", str(out), "--output", "out_0"), "out_0", "cannot be compared")
    _nothing_written(out)


def test_qat_checks_output_and_empty_texts_before_training(minilm_dir, tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("text\n" + "nan\n" * 20 + "hello there\n")
    out = tmp_path / "qat"
    err = error_text(run_cli("qat", str(minilm_dir), "-o", str(out), "--data", str(f), "--steps", "1", "--output", "nope"),
                      "--output 'nope'")
    assert "last_hidden_state, sentence_embedding" in err
    error_text(run_cli("qat", str(minilm_dir), "-o", str(out), "--data", str(f), "--steps", "1"),
                "empty.csv", "1 non-empty texts in column 'text'", "fewer than the 10 needed")
    _nothing_written(out)


def test_fuse_third_party_picks_the_hidden_state(third_party, tmp_path):
    out = tmp_path / "fused"
    err = _ok(run_cli("fuse", str(third_party), "-o", str(out)))
    assert "comparing output 'hs' (hidden state [B,S,384], mean-pooled)" in err
    # 12: the vocab-only tokenizer/ beside the model is used, not reported missing
    assert "no tokenizer" not in err and "synthetic ids" not in err
    par = json.loads((out / "manifest.json").read_text())["metrics"]["parity"]
    assert par["compared_output"]["name"] == "hs" and par["inputs"] == "sample sentences through the artifact's tokenizer"


def test_bench_third_party_fidelity_and_output_override(third_party, calibrated_third_party, slabs_dir, tmp_path):
    cal, _ = calibrated_third_party
    data = str(slabs_dir / "validation.csv")
    j = tmp_path / "b.json"
    err = _ok(run_cli("bench", str(third_party), str(cal), "--data", data, *BENCH, "--json", str(j)))
    assert "comparing output 'hs' (hidden state [B,S,384], mean-pooled)" in err
    fid = json.loads(j.read_text())["runs"][1]["fidelity"]
    assert fid["compared"] == "mean_pooled_hs" and fid["n"] == 12 and 0.98 < fid["cosine_min"] < 1.0
    _ok(run_cli("bench", str(third_party), str(cal), "--data", data, *BENCH, "--json", str(j), "--output", "zzz"))
    fid = json.loads(j.read_text())["runs"][1]["fidelity"]
    assert fid["compared"] == "zzz" and fid["output"]["kind"] == "pooled"
    error_text(run_cli("bench", str(third_party), "--data", data, *BENCH, "--output", "nope"), "--output 'nope'")


# ------------------------------------------------------------------------------ 12. no encoder in the graph
@pytest.fixture()
def tiny_graph(tmp_path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "x"], ["z"])], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])], [w])
    p = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


@pytest.mark.parametrize("stage", ["fuse", "build"])
def test_no_encoder_warns_and_strict_fails(stage, tiny_graph, tmp_path):
    out = tmp_path / "out"
    err = _ok(run_cli(stage, str(tiny_graph), "-o", str(out)))
    assert f"warning: {stage}: {tiny_graph}: no BERT encoder layers found" in err
    strict = tmp_path / "strict"
    error_text(run_cli(stage, str(tiny_graph), "-o", str(strict), "--strict"), "no BERT encoder layers found")
    _nothing_written(strict)


# ------------------------------------------------------------------------------ 8. weights that cannot be loaded
def _hf_folder_without_weights(minilm_dir: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in minilm_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, dst / f.name)
    return dst


def test_truncated_safetensors_is_an_error(minilm_dir, tmp_path):
    d = _hf_folder_without_weights(minilm_dir, tmp_path / "trunc")
    with open(minilm_dir / "model.safetensors", "rb") as src:
        (d / "model.safetensors").write_bytes(src.read(200_000))
    out = tmp_path / "exported"
    error_text(run_cli("export", str(d), "-o", str(out)), f"{d / 'model.safetensors'}: cannot load the weights")
    _nothing_written(out)
    # bench's PyTorch runner loads the same way
    error_text(run_cli("bench", str(d), *BENCH), "cannot load the weights")


def test_pickled_bin_is_refused_and_never_executed(minilm_dir, tmp_path):
    d = _hf_folder_without_weights(minilm_dir, tmp_path / "pickled")
    marker = tmp_path / "PWNED"
    payload = (
        "import os, pickle, sys\n"
        "class P:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        "pickle.dump({'embeddings.word_embeddings.weight': P()}, open(sys.argv[1], 'wb'))\n"
    )
    subprocess.run([sys.executable, "-c", payload, str(d / "pytorch_model.bin")], check=True)
    out = tmp_path / "exported"
    error_text(run_cli("export", str(d), "-o", str(out)), f"{d / 'pytorch_model.bin'}: cannot load the weights")
    assert not marker.exists()
    _nothing_written(out)


def test_output_chooser_rules():
    """The rules every comparing stage shares (bertopt/outputs.py), on specs alone."""
    from bertopt.errors import BertoptError
    from bertopt.outputs import OutputSpec, choose_output

    ids = OutputSpec("ids", ("batch", "sequence"), is_float=False)
    per_token = OutputSpec("out_0", ("batch", "sequence"))
    pooled = OutputSpec("zzz", ("batch", 384))
    hidden = OutputSpec("hs", ("batch", "sequence", 384))
    assert choose_output([ids, per_token, pooled, hidden]).name == "hs"
    assert choose_output([ids, per_token, pooled]).kind == "pooled"
    # known names before shapes; logits first for classifiers, and a narrow [B,C] is logits
    assert choose_output([hidden, OutputSpec("sentence_embedding", ("batch", 384))]).name == "sentence_embedding"
    assert choose_output([hidden, OutputSpec("out", ("batch", 3))], task="sequence-classification").describe() == "'out' (logits [B,3])"
    assert choose_output([OutputSpec("scores", ("batch", 2))]).kind == "logits"
    # a reference's choice carries over by kind when the name differs
    ref = choose_output([OutputSpec("sentence_embedding", ("batch", 384)), OutputSpec("last_hidden_state", ("batch", "sequence", 384))])
    assert choose_output([per_token, hidden, pooled], prefer=ref).name == "zzz"
    with pytest.raises(BertoptError, match="no output to compare"):
        choose_output([ids, per_token])
