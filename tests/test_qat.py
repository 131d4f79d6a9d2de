"""``bertopt qat`` on the real MiniLM and real S-Labs text: short runs (a few steps, short sequences).

The full-accuracy run (fine-tuned classifier, whole training split) is measured for the report, not
here. What these check: the artifact is a Q/DQ model ONNX Runtime runs with int8 kernels on every
quantized GEMM, close to the FP32 model; a killed run resumes and ends with the same weights as an
uninterrupted one; the same command under torchrun (2 processes, gloo) writes the same kind of
artifact; user mistakes are errors that name the field.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from bertopt.artifacts import load_artifact
from conftest import run_cli

pytest.importorskip("modelopt.torch.quantization")

# A short run: 240 texts (24 held out), 6 steps of 16, evaluation + checkpoint every 2 steps. The data is
# the first 240 texts of S-Labs train.csv (conftest's slabs_train_240), so that qat's default start (its own
# calibration of --data with calibrate's defaults) calibrates on those 240, not on 2,048.
SHORT = {"samples": 240, "steps": 6, "eval_every": 2, "batch_size": 16, "max_length": 32, "calib_batches": 4}
SHORT_CLI = ["--samples", "240", "--steps", "6", "--eval-every", "2", "--batch-size", "16", "--max-length", "32", "--calib-batches", "4"]


@pytest.fixture(scope="session")
def qat_minilm(minilm_dir, slabs_train_240, tmp_path_factory) -> Path:
    from bertopt.qat.stage import run_qat

    out = tmp_path_factory.mktemp("qat") / "minilm"
    run_qat(str(minilm_dir), out, data=str(slabs_train_240), text_column="text", **SHORT)
    return out


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_artifact_is_qdq_with_int8_kernels(qat_minilm):
    art = load_artifact(qat_minilm)
    m = art.manifest
    assert m["stage"] == "qat" and m["model"]["task"] == "feature-extraction" and m["model"]["precision"] == "int8"
    assert m["model"]["outputs"] == ["last_hidden_state", "sentence_embedding"]
    assert (qat_minilm / "tokenizer" / "tokenizer.json").is_file()
    # 6 layers x (Q, K, V, attention output, FFN in, FFN out), every one an int8 kernel in ORT
    assert m["metrics"]["quantized_gemms"] == 36
    assert m["metrics"]["ort_int8_gemms"] == 36
    assert m["metrics"]["ort_kernels"].get("MatMul", 0) == 6 and m["metrics"]["ort_kernels"].get("com.microsoft::FusedMatMul", 0) == 6  # attention BMMs stay float
    g = onnx.load(str(art.model_path)).graph
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in g.input:
        dims = i.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_param == "sequence"
    inits = {i.name: i for i in g.initializer}
    weight_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dq) == 36 and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in weight_dq)
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) == 36  # one per GEMM input, none on weights
    par = m["metrics"]["parity"]
    assert par["cosine_mean"] >= 0.99 and par["texts"] == 24
    hist = json.loads((qat_minilm / "qat_history.json").read_text())
    assert [h["step"] for h in hist] == [0, 2, 4, 6]
    assert m["training"]["best_step"] in (0, 2, 4, 6) and m["training"]["config"]["world_size"] == 1
    assert not (qat_minilm.parent / ".minilm.qat-checkpoint").exists()  # removed after success


def test_int8_embeddings_stay_close_to_fp32(qat_minilm, exported_minilm, slabs_texts):
    """At a new shape and other texts: the QAT INT8 embedding is close to the FP32 export's."""
    from bertopt.backends.onnxruntime import make_session
    from bertopt.data import load_tokenizer, tokenize

    tok = load_tokenizer(qat_minilm / "tokenizer")
    feeds = tokenize(tok, slabs_texts[:24], ["input_ids", "attention_mask", "token_type_ids"], max_length=64)
    q = make_session(load_artifact(qat_minilm).model_path).run(["sentence_embedding"], feeds)[0]
    f = make_session(load_artifact(exported_minilm).model_path).run(["sentence_embedding"], feeds)[0]
    cos = np.sum(q * f, 1) / np.linalg.norm(q, axis=1) / np.linalg.norm(f, axis=1)
    assert cos.min() > 0.95 and cos.mean() > 0.98


def test_openvino_build_matches_the_onnxruntime_build(qat_minilm, slabs_texts, tmp_path):
    """The qat artifact built for both CPU backends: the same embeddings on real text, every Q/DQ GEMM INT8 on OpenVINO."""
    pytest.importorskip("openvino")
    import bertopt
    from bertopt.backends.stage import run_build

    ort = bertopt.load(run_build(qat_minilm, tmp_path / "ort").path)
    ov = bertopt.load(run_build(qat_minilm, tmp_path / "ov", backend="openvino").path)
    a, b = ort.encode(slabs_texts[:48]), ov.encode(slabs_texts[:48])
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() >= 0.999
    check = load_artifact(tmp_path / "ov").manifest["build"]["int8_check"]
    assert check["ok"] and check["int8"] == check["expected"] > 0


def test_up_to_date_is_skipped(qat_minilm, minilm_dir, slabs_train_240):
    from bertopt.qat.stage import run_qat

    before = json.loads((qat_minilm / "manifest.json").read_text())["created"]
    t = time.perf_counter()
    art = run_qat(str(minilm_dir), qat_minilm, data=str(slabs_train_240), text_column="text", **SHORT)
    assert art.skipped and time.perf_counter() - t < 10
    assert json.loads((qat_minilm / "manifest.json").read_text())["created"] == before


def test_killed_run_resumes_to_the_same_weights(qat_minilm, minilm_dir, slabs_train_240, tmp_path):
    """SIGKILL after the first checkpoint, run again: it resumes and ends bit-identical to an uninterrupted run."""
    out = tmp_path / "minilm"
    ckpt = tmp_path / ".minilm.qat-checkpoint" / "checkpoint.pt"
    args = [sys.executable, "-m", "bertopt", "qat", str(minilm_dir), "-o", str(out), "--data", str(slabs_train_240), "--text-column", "text", *SHORT_CLI]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists()  # nothing that looks complete
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from the checkpoint at step" in r.stderr
    assert not ckpt.parent.exists()
    a, b = _initializers(load_artifact(out).model_path), _initializers(load_artifact(qat_minilm).model_path)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ha = json.loads((out / "qat_history.json").read_text())
    hb = json.loads((qat_minilm / "qat_history.json").read_text())
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_torchrun_two_processes(minilm_dir, slabs_train_240, tmp_path):
    """The same command under torchrun (2 CPU processes, gloo): one artifact, written by rank 0."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to the interpreter")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "bertopt", "qat", str(minilm_dir), "-o", str(out),
           "--data", str(slabs_train_240), "--text-column", "text", "--samples", "240", "--steps", "4", "--eval-every", "2",
           "--batch-size", "8", "--max-length", "32", "--calib-batches", "4"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    m = load_artifact(out).manifest
    assert m["training"]["config"]["world_size"] == 2 and m["training"]["config"]["global_batch"] == 16
    assert m["training"]["steps_run"] == 4
    assert m["metrics"]["ort_int8_gemms"] == 36 and m["metrics"]["parity"]["cosine_mean"] >= 0.99
    assert m["metrics"]["best"]["n"] == 24  # the held-out set is split across the ranks and summed back
    assert r.stderr.count("qat: best held-out step") == 1  # only rank 0 reports
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # no temporary or checkpoint folder left


def test_user_errors_name_the_field(minilm_dir, slabs_dir, slabs_train_240, tmp_path):
    from bertopt.errors import BertoptError
    from bertopt.qat.stage import run_qat

    csv = str(slabs_dir / "train.csv")
    cases = [
        ({"data": csv, "label_column": "label"}, "is a feature-extraction model"),
        ({"data": str(tmp_path / "none.csv")}, "no such data file"),
        ({"data": csv, "epochs": 0}, "epochs=0"),
        ({"data": csv, "val_fraction": 1.5}, "val_fraction=1.5"),
        ({"data": str(slabs_train_240), "exclude": ["encoder.layer.9"], "samples": 40}, "matches no module"),  # after the start's calibration
    ]
    for kwargs, needle in cases:
        with pytest.raises(BertoptError, match=needle):
            run_qat(str(minilm_dir), tmp_path / "x", text_column="text", **kwargs)
    assert not (tmp_path / "x").exists()


def test_label_column_must_exist(classifier_dir, slabs_dir, tmp_path):
    from bertopt.errors import BertoptError
    from bertopt.qat.stage import run_qat

    with pytest.raises(BertoptError, match=r"train\.csv: no label column 'tag'"):
        run_qat(str(classifier_dir), tmp_path / "x", data=str(slabs_dir / "train.csv"), text_column="text", label_column="tag")


def test_cli_help_and_usage():
    r = run_cli("qat", "--help")
    assert r.returncode == 0 and "--label-column" in r.stdout and "torchrun" in r.stdout
    r = run_cli("qat", "somewhere", "-o", "x")
    assert r.returncode == 2 and "--data" in r.stderr


@pytest.fixture(scope="session")
def calibrated_classifier(exported_classifier, slabs_dir, tmp_path_factory) -> Path:
    from bertopt.calibrators.stage import run_calibrate

    out = tmp_path_factory.mktemp("qat-cal") / "calibrated"
    run_calibrate(str(exported_classifier), out, data=str(slabs_dir / "train.csv"), text_column="text", samples=64, max_length=64)
    return out


def test_init_from_calibrate_starts_as_the_calibrated_model(calibrated_classifier, classifier_dir, slabs_dir, tmp_path):
    """With --init-from, step 0 is calibrate's INT8 model: same scales, equalization, biases, float layers,
    so (with a vanishing learning rate) the exported QAT model gives calibrate's outputs on ORT's same kernels."""
    from bertopt.backends.onnxruntime import make_session
    from bertopt.data import load_texts, load_tokenizer, tokenize
    from bertopt.graph import ort_kernel_counts
    from bertopt.qat.stage import run_qat

    out = tmp_path / "qat"
    art = run_qat(str(classifier_dir), out, data=str(slabs_dir / "train.csv"), text_column="text", label_column="label",
                  init_from=str(calibrated_classifier), samples=120, steps=1, lr=1e-12, batch_size=16, max_length=64)
    m = art.manifest
    init = m["quantization"]["init_from"]
    assert init["linears_set"] == 36 and init["equalized"] == 30 and not init["unmatched_gemms"]
    assert init["left_float"] == ["bert.pooler.dense", "classifier"]  # calibrate's default, not qat's own
    assert init["float_cosine_vs_teacher"] > 0.999
    assert ort_kernel_counts(art.model_path) == ort_kernel_counts(load_artifact(calibrated_classifier).model_path)
    tok = load_tokenizer(out / "tokenizer")
    texts = load_texts(slabs_dir / "test.csv", text_column="text", limit=64).texts
    feeds = tokenize(tok, texts, ["input_ids", "attention_mask", "token_type_ids"], max_length=64)
    q = make_session(art.model_path).run(["logits"], feeds)[0]
    c = make_session(load_artifact(calibrated_classifier).model_path).run(["logits"], feeds)[0]
    assert (q.argmax(1) == c.argmax(1)).all() and np.abs(q - c).max() < 0.05


def test_init_from_another_model_is_refused(calibrated_classifier, minilm_dir, slabs_dir, tmp_path):
    from bertopt.errors import BertoptError
    from bertopt.qat.stage import run_qat

    with pytest.raises(BertoptError, match="hold this model's weights"):
        run_qat(str(minilm_dir), tmp_path / "x", data=str(slabs_dir / "train.csv"), text_column="text",
                init_from=str(calibrated_classifier), samples=40, steps=1)
    assert not (tmp_path / "x").exists()


def test_early_stopping_counts_only_real_improvements():
    from bertopt.distill.train import _improves

    # with labels: (accuracy, -loss); one more correct held-out text always counts
    assert _improves((0.9891, -0.0600), (0.9886, -0.0551), 0.01)
    assert not _improves((0.9881, -0.0100), (0.9886, -0.0551), 0.01)
    # equal accuracy: the loss must fall by more than min_delta of the best loss
    assert not _improves((0.9886, -0.05498), (0.9886, -0.05508), 0.01)
    assert _improves((0.9886, -0.0540), (0.9886, -0.05508), 0.01)
    assert _improves((0.9886, -0.05498), (0.9886, -0.05508), 0.0)
    # text only: (-loss,)
    assert _improves((-1.0e-4,), (-1.5e-4,), 0.01) and not _improves((-1.49e-4,), (-1.5e-4,), 0.01)
