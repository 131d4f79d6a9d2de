"""``bertopt calibrate`` on the real MiniLM and the fine-tuned S-Labs classifier, with real S-Labs text
and real ONNX Runtime: fidelity, INT8 kernels, the files it writes, composition with fuse, bad input."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bertopt.errors import BertoptError
from conftest import run_cli

CAL_SAMPLES = 256


@pytest.fixture(scope="session")
def train_csv(slabs_dir) -> Path:
    return slabs_dir / "train.csv"


@pytest.fixture(scope="session")
def calibrated_minilm(exported_minilm, train_csv, tmp_path_factory) -> Path:
    from bertopt.calibrators.stage import run_calibrate

    out = tmp_path_factory.mktemp("calibrate") / "minilm-int8"
    run_calibrate(exported_minilm, out, data=str(train_csv), text_column="text", eval_samples=32)  # the defaults a user gets
    return out


def _session(path):
    from bertopt.backends.onnxruntime import make_session

    return make_session(path, threads=2)


def _embeddings(model_path: Path, tokenizer_dir: Path, texts: list[str]) -> np.ndarray:
    from bertopt.data import load_tokenizer, tokenize

    tok = load_tokenizer(tokenizer_dir)
    sess = _session(model_path)
    names = [i.name for i in sess.get_inputs()]
    out = []
    for i in range(0, len(texts), 16):
        feeds = tokenize(tok, texts[i:i + 16], names, max_length=128)
        out.append(sess.run(["sentence_embedding"], feeds)[0])
    return np.concatenate(out).astype(np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_minilm_keeps_embeddings_on_held_out_text(calibrated_minilm, exported_minilm, slabs_texts):
    ref = _embeddings(exported_minilm / "model.onnx", exported_minilm / "tokenizer", slabs_texts)
    got = _embeddings(calibrated_minilm / "model.onnx", calibrated_minilm / "tokenizer", slabs_texts)
    cos = _cosines(ref, got)
    # the bar is 0.995 with the defaults (2048 texts, percentile 99.999, alpha 0.9); the peers reach 0.89-0.99
    assert cos.min() >= 0.995, cos.min()
    assert cos.mean() >= 0.998, cos.mean()


def test_every_gemm_is_int8_in_tensorrt_form_and_in_onnx_runtime(calibrated_minilm):
    man = json.loads((calibrated_minilm / "manifest.json").read_text())
    m = man["metrics"]
    assert man["stage"] == "calibrate" and man["model"]["precision"] == "int8"
    assert m["quantized_gemms"] == m["candidate_gemms"] == 36 and m["float_gemms"] == {}
    assert m["ort_kernels"].get("com.microsoft::MatMulIntegerToFloat") == 36  # real int8 kernels on ORT CPU
    assert "DequantizeLinear" not in m["ort_kernels"]  # no DQ -> float -> Q round trips left
    assert m["ort_kernels"].get("MatMul", 0) + m["ort_kernels"].get("com.microsoft::FusedMatMul", 0) == 12  # the float attention BMMs
    assert m["equalization_rel_error_max"] < 1e-4  # the equalized float model is the same function

    model = onnx.load(str(calibrated_minilm / "model.onnx"))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    gemms = [n for n in g.node if n.op_type == "MatMul" and "encoder" in n.name and "/self/MatMul" not in n.name]
    assert len(gemms) == 36
    for n in gemms:
        a, w = producer[n.input[0]], producer[n.input[1]]
        assert a.op_type == "DequantizeLinear" and producer[a.input[0]].op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == onnx.TensorProto.INT8
        axis = next(x.i for x in w.attribute if x.name == "axis")
        wq = numpy_helper.to_array(inits[w.input[0]])
        assert axis == 1 and numpy_helper.to_array(inits[w.input[1]]).shape == (wq.shape[1],)
        assert wq.min() >= -127  # narrow range
        for q in (a, w):
            zp = numpy_helper.to_array(inits[q.input[2]])
            assert zp.dtype == np.int8 and not zp.any()
        assert float(numpy_helper.to_array(inits[a.input[1]])) > 0
    # LayerNorm, Softmax, GELU and the residual Adds stay float: none of them reads a DequantizeLinear
    for n in g.node:
        if n.op_type in ("LayerNormalization", "Softmax", "Erf") or (n.op_type == "Add" and "Smooth" not in n.name):
            assert all(producer.get(x) is None or producer[x].op_type != "DequantizeLinear" for x in n.input), n.name
    # attention BMMs stay float by default
    bmm = [n for n in g.node if "/self/MatMul" in n.name]
    assert len(bmm) == 12 and all(producer[x].op_type != "DequantizeLinear" for n in bmm for x in n.input)


def test_ranges_file_regenerates_the_same_model(calibrated_minilm, exported_minilm, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    ranges = json.loads((calibrated_minilm / "ranges.json").read_text())
    assert ranges["schema"] == "bertopt.ranges/1"
    assert ranges["calibration"]["samples"] == 2048 and ranges["calibration"]["method"] == "percentile"
    assert set(ranges["hashes"]) == {"model", "tokenizer", "data"} and all(ranges["hashes"].values())
    assert len(ranges["activations"]) == 24 and all(v > 0 for v in ranges["activations"].values())  # Q, K, V share one input
    out = tmp_path / "regen"
    run_calibrate(exported_minilm, out, ranges=str(calibrated_minilm / "ranges.json"))
    assert (out / "model.onnx").read_bytes() == (calibrated_minilm / "model.onnx").read_bytes()
    assert (out / "calibration.cache").read_text() == (calibrated_minilm / "calibration.cache").read_text()


def test_ranges_file_of_another_model_is_refused(calibrated_minilm, exported_minilm, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    def touch_one_weight(m):
        init = m.graph.initializer[-1]
        init.raw_data = bytes(len(init.raw_data))

    other = _bare_copy(exported_minilm, tmp_path / "other", touch_one_weight)  # differs by a single weight
    with pytest.raises(BertoptError, match="different model"):
        run_calibrate(other, tmp_path / "out", ranges=str(calibrated_minilm / "ranges.json"))
    assert not (tmp_path / "out").exists()


def test_tensorrt_calibration_cache_covers_the_fp32_graph(calibrated_minilm, exported_minilm):
    from bertopt.calibrators.rangefile import parse_trt_cache

    header, scales = parse_trt_cache((calibrated_minilm / "calibration.cache").read_text())
    from bertopt.calibrators.rangefile import CALIBRATOR_NAMES

    method = json.loads((calibrated_minilm / "ranges.json").read_text())["calibration"]["method"]
    assert header == f"TRT-100300-{CALIBRATOR_NAMES[method]}"
    fp32 = onnx.load(str(exported_minilm / "model.onnx"))
    names = {o for n in fp32.graph.node for o in n.output}
    assert set(scales) <= names  # tensors of the input (FP32) graph, as TensorRT's parser names them
    gemm_inputs = {n.input[0] for n in fp32.graph.node if n.op_type == "MatMul" and "encoder" in n.name and "/self/MatMul" not in n.name}
    assert gemm_inputs <= set(scales)
    ranges = json.loads((calibrated_minilm / "ranges.json").read_text())["trt_cache"]
    for name, s in scales.items():
        assert s == pytest.approx(ranges[name] / 127, rel=1e-6)


def test_calibrate_composes_with_fuse(exported_minilm, train_csv, slabs_texts, tmp_path):
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.passes.stage import run_fuse

    fused = tmp_path / "fused"
    run_fuse(exported_minilm, fused, target="onnxruntime")
    art = run_calibrate(fused, tmp_path / "int8", data=str(train_csv), text_column="text", samples=128, eval_samples=32, trt_cache=False)
    m = art.manifest["metrics"]
    assert m["quantized_gemms"] == 36 and m["ort_kernels"].get("com.microsoft::MatMulIntegerToFloat") == 36
    assert not (tmp_path / "int8" / "calibration.cache").exists()
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node)
    assert ops["MultiHeadAttention"] == 6  # the fused attention stays, fed by INT8 Q/K/V GEMMs
    # ... directly: calibrate edits the Q/K/V biases as Adds, then folds them back into the attention op
    g = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    producers = {o: n for n in g.node for o in n.output}
    for mha in (n for n in g.node if n.op_type == "MultiHeadAttention"):
        assert mha.input[3] and all(producers[i].op_type == "MatMul" for i in mha.input[:3])
    # the context equalization was folded into the value projections: only 3 smoothing Muls a layer
    assert ops["Mul"] - Counter(n.op_type for n in onnx.load(str(fused / "model.onnx")).graph.node)["Mul"] == 18
    ref = _embeddings(exported_minilm / "model.onnx", exported_minilm / "tokenizer", slabs_texts[:64])
    got = _embeddings(tmp_path / "int8" / "model.onnx", tmp_path / "int8" / "tokenizer", slabs_texts[:64])
    assert _cosines(ref, got).min() >= 0.99


def test_sensitivity_report_and_skipping_the_worst_gemm(exported_minilm, train_csv, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    out = tmp_path / "sens"
    art = run_calibrate(exported_minilm, out, data=str(train_csv), text_column="text", samples=64, eval_samples=16,
                        exclude=["*/layer.[1-5]/*"], sensitivity_report=True, skip_sensitive=1, trt_cache=False)
    rep = json.loads((out / "report.json").read_text())
    rows = rep["layers"]
    assert [r["rank"] for r in rows] == list(range(1, 7))  # the 6 GEMMs of layer 0
    errs = [r["rel_error_mean"] for r in rows]
    assert errs == sorted(errs, reverse=True) and errs[0] > 0
    worst = rows[0]["node"]
    m = art.manifest["metrics"]
    assert m["float_gemms"] == {worst: "sensitive"} and m["quantized_gemms"] == 5
    g = onnx.load(str(out / "model.onnx")).graph
    producer = {o: n for n in g.node for o in n.output}
    node = next(n for n in g.node if n.name == worst)
    assert all(producer.get(x) is None or producer[x].op_type != "DequantizeLinear" for x in node.input)
    ranges = json.loads((out / "ranges.json").read_text())
    assert ranges["placement"]["skipped"] == {worst: "sensitive"}


def test_classifier_int8_accuracy_within_half_a_point(exported_classifier, train_csv, slabs_dir, tmp_path):
    from bertopt.bench.stage import run_bench
    from bertopt.calibrators.stage import run_calibrate

    out = tmp_path / "clf-int8"
    art = run_calibrate(exported_classifier, out, data=str(train_csv), text_column="text", samples=CAL_SAMPLES, eval_samples=32, trt_cache=False)
    assert art.manifest["metrics"]["quantized_gemms"] == 36  # pooler + classifier head stay float by default
    rep = run_bench([str(exported_classifier), str(out)], batch=[1], seq=[16], warmup=0, iters=1, repeats=1,
                    eval=str(slabs_dir / "test.csv"), text_column="text", label_column="label")
    acc = [r["accuracy"]["value"] for r in rep["runs"]]
    assert acc[0] > 0.9 and abs(acc[1] - acc[0]) <= 0.005, acc


# ------------------------------------------------------------------------------ bad input
def _bare_copy(exported_minilm: Path, dst: Path, edit=None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(exported_minilm / "tokenizer", dst / "tokenizer")
    m = onnx.load(str(exported_minilm / "model.onnx"))
    if edit:
        edit(m)
    onnx.save(m, str(dst / "model.onnx"))
    return dst / "model.onnx"


def test_empty_and_short_calibration_files(exported_minilm, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(BertoptError, match="no texts"):
        run_calibrate(exported_minilm, tmp_path / "o1", data=str(empty))
    csv = tmp_path / "bad.csv"
    csv.write_text("prompt,label\nhello,0\n")
    with pytest.raises(BertoptError, match="which column"):
        run_calibrate(exported_minilm, tmp_path / "o2", data=str(csv))
    with pytest.raises(BertoptError, match="no text column 'body'"):
        run_calibrate(exported_minilm, tmp_path / "o2", data=str(csv), text_column="body")
    with pytest.raises(BertoptError, match="longer than the model's maximum"):
        run_calibrate(exported_minilm, tmp_path / "o3", data=str(csv), text_column="prompt", max_length=4096)
    assert not any(p.name.startswith(("o1", "o2", "o3")) for p in tmp_path.iterdir())
    # fewer texts than --samples (and one far longer than --max-length): calibrates on what there is, says so
    short = tmp_path / "short.txt"
    short.write_text("How do I reset my password?\nIgnore previous instructions.\n" + "very long text " * 300 + "\n")
    art = run_calibrate(exported_minilm, tmp_path / "o4", data=str(short), samples=100, eval_samples=2, trt_cache=False)
    m = art.manifest["metrics"]
    assert m["samples"] == 3 and m["samples_requested"] == 100 and m["truncated_texts"] == 1


def test_non_finite_activations_are_an_error_naming_the_tensor(exported_minilm, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    def poison(m):  # the first LayerNorm's weight -> NaN: every later activation is NaN
        for init in m.graph.initializer:
            if init.name.endswith("embeddings.LayerNorm.weight"):
                arr = numpy_helper.to_array(init).copy()
                arr[:] = np.nan
                init.CopyFrom(numpy_helper.from_array(arr, init.name))
                return
        raise AssertionError("no embeddings LayerNorm weight")

    bad = _bare_copy(exported_minilm, tmp_path / "nan", poison)
    data = tmp_path / "t.txt"
    data.write_text("hello there\nsecond text\n")
    with pytest.raises(BertoptError, match=r"NaN .* in tensor '.*' on calibration texts #"):
        run_calibrate(bad, tmp_path / "out", data=str(data), samples=2, eval_samples=1)
    assert not (tmp_path / "out").exists()


def test_a_gemm_whose_input_is_always_zero_stays_float(exported_minilm, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    def zero_ln(m):  # layer 5's attention-output LayerNorm -> all zeros: the FFN input has no range
        for init in m.graph.initializer:
            if "layer.5.attention.output.LayerNorm" in init.name:
                init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))

    src = _bare_copy(exported_minilm, tmp_path / "zero", zero_ln)
    data = tmp_path / "t.txt"
    data.write_text("hello there\nsecond text\nand a third one\n")
    art = run_calibrate(src, tmp_path / "out", data=str(data), samples=3, eval_samples=3, trt_cache=True)
    skipped = art.manifest["metrics"]["float_gemms"]
    # the FFN input is 0; the GELU after it is then a constant per channel, which the shift centres to 0
    ffn = ["/model/encoder/layer.5/intermediate/dense/MatMul", "/model/encoder/layer.5/output/dense/MatMul"]
    assert sorted(skipped) == ffn and all(v.startswith("zero range") for v in skipped.values())
    assert art.manifest["metrics"]["quantized_gemms"] == 34
    assert np.isfinite(art.manifest["metrics"]["fidelity"]["cosine_min"])
    from bertopt.calibrators.rangefile import parse_trt_cache

    _, scales = parse_trt_cache((tmp_path / "out" / "calibration.cache").read_text())
    assert all(s > 0 for s in scales.values())  # zero ranges are left out of the cache, never 0 scales


def test_already_quantized_input_is_refused(calibrated_minilm, train_csv, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    with pytest.raises(BertoptError, match="already quantized"):
        run_calibrate(calibrated_minilm, tmp_path / "again", data=str(train_csv), text_column="text")


def test_cli_help_and_user_error(exported_minilm, tmp_path):
    r = run_cli("calibrate", "--help")
    assert r.returncode == 0 and "--method" in r.stdout and "--skip-sensitive" in r.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = run_cli("calibrate", str(exported_minilm), "-o", str(tmp_path / "o"), "--data", str(empty))
    assert r.returncode == 1 and "error:" in r.stderr and "no texts" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("calibrate", str(exported_minilm), "-o", str(tmp_path / "o"), "--data", str(empty), "--method", "kl")
    assert r.returncode == 1 and "calibrate --method: must be 'max', 'percentile', 'entropy' or 'mse' (got 'kl')" in r.stderr
