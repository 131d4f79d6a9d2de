"""build --backend onnxruntime on the real MiniLM: offline-optimized graph + session.json, INT8 from Q/DQ,
the measured session search, errors, and the artifact as bench opens it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bertopt.artifacts import load_artifact
from bertopt.backends import onnxruntime as ortb
from bertopt.backends.ort_tune import candidate_configs
from bertopt.backends.stage import run_build
from bertopt.data import load_tokenizer, tokenize
from bertopt.errors import BertoptError
from conftest import run_cli

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="session")
def qdq_minilm(exported_minilm, slabs_dir, tmp_path_factory):
    """The exported MiniLM with ONNX Runtime's static QDQ quantization (MatMul weights and activations,
    symmetric signed INT8 as TensorRT needs, calibrated on 32 real S-Labs texts): a stand-in for the
    calibrate stage's output."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bertopt.data import load_texts

    d = tmp_path_factory.mktemp("qdq")
    texts = load_texts(slabs_dir / "train.csv", text_column="text", limit=32).texts
    tok = load_tokenizer(exported_minilm / "tokenizer")
    batches = [tokenize(tok, texts[i:i + 8], INPUTS, 128) for i in range(0, 32, 8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    pre = d / "pre.onnx"
    quant_pre_process(str(exported_minilm / "model.onnx"), str(pre), skip_symbolic_shape=True)
    art = d / "int8"
    art.mkdir()
    quantize_static(str(pre), str(art / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    import shutil

    shutil.copytree(exported_minilm / "tokenizer", art / "tokenizer")
    return art / "model.onnx"


@pytest.fixture(scope="session")
def feeds(exported_minilm, slabs_texts):
    tok = load_tokenizer(exported_minilm / "tokenizer")
    return tokenize(tok, slabs_texts[:16], INPUTS, 128)


@pytest.fixture(scope="module")
def ort_fp32(exported_minilm, tmp_path_factory):
    return run_build(exported_minilm, tmp_path_factory.mktemp("build") / "ort-fp32")


@pytest.fixture(scope="module")
def ort_int8(qdq_minilm, tmp_path_factory):
    return run_build(qdq_minilm, tmp_path_factory.mktemp("build") / "ort-int8")


def _cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_fp32_artifact_matches_its_input(ort_fp32, exported_minilm, feeds):
    art = ort_fp32
    build = art.manifest["build"]
    assert build["backend"] == "onnxruntime" and build["precision"] == "fp32"
    assert build["offline_optimization"] == "ORT_ENABLE_EXTENDED" and not build["tuned"]
    # the manifest's model block and tokenizer travel on
    assert art.model_info["outputs"] == ["last_hidden_state", "sentence_embedding"]
    assert (art.tokenizer_dir / "tokenizer.json").is_file() or (art.tokenizer_dir / "vocab.txt").is_file()
    # ORT's optimizer really ran offline: fused ops are in the saved graph, not in the input
    ops = ortb.op_counts(art.model_path)
    assert ops.get("com.microsoft::BiasGelu", 0) == 6 and "com.microsoft::BiasGelu" not in build["ops_before"]
    assert ops.get("Constant", 0) == 0 < build["ops_before"].get("Constant", 0)
    cfg = ortb.load_session_config(art.path)
    assert cfg == build["session"]
    assert cfg["graph_optimization_level"] == "ORT_DISABLE_ALL" and cfg["intra_op_num_threads"] == ortb.physical_cores()
    built = ortb.make_session(art.model_path, cfg).run(None, feeds)
    plain = ortb.make_session(exported_minilm / "model.onnx").run(None, feeds)
    for a, b in zip(built, plain):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_int8_from_qdq(ort_int8, qdq_minilm, exported_minilm, feeds):
    build = ort_int8.manifest["build"]
    assert build["precision"] == "int8" and ort_int8.manifest["params"]["precision"] == "int8"
    ops = ortb.op_counts(ort_int8.model_path)
    assert ops.get("QLinearMatMul", 0) >= 24  # Q/DQ pairs folded into integer GEMMs offline
    cfg = ortb.load_session_config(ort_int8.path)
    built = ortb.make_session(ort_int8.model_path, cfg).run(None, feeds)[1]
    plain = ortb.make_session(qdq_minilm).run(None, feeds)[1]
    fp32 = ortb.make_session(exported_minilm / "model.onnx").run(None, feeds)[1]
    assert _cos(built, plain).min() > 0.9999  # same quantized model, loaded the built way
    assert _cos(built, fp32).mean() > 0.8  # and still MiniLM (symmetric static QDQ on an unfused graph is lossy: ~0.85)


def test_second_build_is_skipped(ort_fp32, exported_minilm):
    again = run_build(exported_minilm, ort_fp32.path)
    assert again.skipped and again.manifest["fingerprint"] == ort_fp32.manifest["fingerprint"]


def test_bench_sees_backend_and_precision(ort_int8):
    from bertopt.bench.runners import open_runner

    r = open_runner(ort_int8.path, threads=None)
    assert (r.backend, r.precision) == ("onnxruntime", "int8")


def test_session_search_measures_and_keeps_the_fastest(exported_minilm, tmp_path):
    """The --tune search on the real model (small shapes, one round, to stay fast)."""
    d = tmp_path / "tune"
    d.mkdir()
    src = exported_minilm / "model.onnx"
    decision = ortb.build_onnxruntime(src, d, tuning=ortb.Tuning.synthetic(INPUTS, (1, 2), seq=16, rounds=1))
    search = decision["search"]["latency_ms"]
    assert {"input model, plain", "extended", "spinning off", "arena off"} <= set(search)
    assert all(v > 0 for lat in search.values() for v in lat.values())
    confirm = decision["confirm"]["score_vs_plain"]
    assert decision["chosen"] in confirm and confirm[decision["chosen"]] == min(confirm.values())
    assert confirm[decision["chosen"]] <= 1.0  # never slower than the plain run, in the same measurement
    assert decision["load_average"]["cores"] == ortb.physical_cores()
    saved = json.loads((d / "session.json").read_text())
    assert saved == decision["session"]
    assert set(decision["winners"]) <= set(candidate_configs(ortb.default_session_config()))
    ortb.make_session(d / "model.onnx", saved)  # loads the way it was measured


def test_precision_must_match_the_graph(exported_minilm, tmp_path):
    with pytest.raises(BertoptError) as e:
        run_build(exported_minilm, tmp_path / "x", precision="int8")
    assert "model.onnx" in e.value.message and "fp32" in e.value.message and "calibrate" in e.value.hint
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kwargs, words", [
    (dict(backend="cuda"), "backend='cuda': must be 'onnxruntime', 'tensorrt', 'openvino' or 'auto'"),
    (dict(precision="int4"), "precision='int4': must be 'int8', 'fp16' or 'fp32'"),
    (dict(profile="batch=1:8:32,seq=1:128:256"), "--profile applies to --backend tensorrt"),
    (dict(timing_cache="/tmp/x.cache"), "--timing-cache applies to --backend tensorrt"),
    (dict(data="/nonexistent/texts.csv"), "/nonexistent/texts.csv"),
    (dict(short_calls="0"), "--short-calls must be auto, off or a token count"),
    (dict(short_calls="some"), "--short-calls must be auto, off or a token count"),
    (dict(backend="openvino", short_calls="32"), "--short-calls applies to --backend onnxruntime only"),
])
def test_option_errors(exported_minilm, tmp_path, kwargs, words):
    with pytest.raises(BertoptError) as e:
        run_build(exported_minilm, tmp_path / "x", **kwargs)
    assert words in e.value.message and e.value.hint


def test_not_an_onnx_input(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BertoptError, match="not an ONNX file"):
        run_build(tmp_path / "notes.txt", tmp_path / "x")


def test_physical_cores_is_sane():
    import os

    n = ortb.physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_graph_precision(exported_minilm, qdq_minilm):
    from bertopt.backends.fp16 import convert_to_fp16
    from bertopt.graph import precision

    assert precision(exported_minilm / "model.onnx") == "fp32"
    assert precision(qdq_minilm) == "int8"
    m = onnx.load(str(exported_minilm / "model.onnx"))
    assert precision(convert_to_fp16(m)[0]) == "fp16"


def test_cli_build(ort_fp32, exported_minilm, tmp_path):
    r = run_cli("build", str(exported_minilm), "-o", str(tmp_path / "b"), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "backend=onnxruntime precision=fp32" in r.stderr
    assert ortb.load_session_config(tmp_path / "b")["intra_op_num_threads"] == 1
    assert load_artifact(tmp_path / "b").manifest["params"]["threads"] == 1
    bad = run_cli("build", str(exported_minilm), "-o", str(tmp_path / "c"), "--backend", "tensorrt", "--precision", "int8")
    assert bad.returncode == 1 and "error:" in bad.stderr and "Q/DQ" in bad.stderr and "Traceback" not in bad.stderr


def test_tensorrt_int8_preparation_of_the_real_qdq_minilm(qdq_minilm, exported_minilm, feeds):
    """What a TensorRT int8 build feeds the parser, checked on ONNX Runtime: the Q/DQ MiniLM moved to
    opset 19 with FP16 scales and float rest, LayerNorm/Softmax in FP32, as faithful as the Q/DQ graph."""
    from bertopt.backends.tensorrt.prepare import expected_int8_gemms, prepare_onnx

    p = prepare_onnx(qdq_minilm, None, ("LayerNormalization", "Softmax"))
    assert p.precision == "int8" and p.fp16["opset_to"] == 19
    src = onnx.load(str(qdq_minilm))
    gemms = [n for n in src.graph.node if n.op_type == "MatMul"]
    # every MatMul whose two operands are dequantized: the 36 weight GEMMs + the attention's Q.K and P.V
    assert len(p.expected_int8) == len(expected_int8_gemms(src)) and 36 <= len(p.expected_int8) <= len(gemms)
    import onnxruntime as ort

    sess = ort.InferenceSession(p.model.SerializeToString(), providers=["CPUExecutionProvider"])
    half = sess.run(["sentence_embedding"], feeds)[0]
    qdq = ortb.make_session(qdq_minilm).run(["sentence_embedding"], feeds)[0]
    fp32 = ortb.make_session(exported_minilm / "model.onnx").run(["sentence_embedding"], feeds)[0]
    assert not np.isnan(half).any()
    assert abs(_cos(half, fp32).mean() - _cos(qdq, fp32).mean()) < 0.01


def test_tune_feeds_from_real_text(exported_minilm, slabs_dir):
    from bertopt.backends.stage import text_feeds

    f = text_feeds(load_artifact(exported_minilm), slabs_dir / "validation.csv", "text", INPUTS, seq=128, batches=(1, 8))
    assert f[1]["input_ids"].shape == (1, 128) and f[8]["input_ids"].shape == (8, 128)
    assert (f[8]["attention_mask"].sum(1) < 128).all()  # real, short texts padded to the timed shape


def test_int8_gemm_biases_go_into_the_kernels(exported_minilm, slabs_dir, feeds, tmp_path):
    """On bertopt's own Q/DQ model every INT8 GEMM bias rides in MatMulIntegerToFloat (no Add after
    it), Q/K/V are one INT8 GEMM, and the built model gives the calibrated model's outputs exactly."""
    import onnx

    from bertopt.calibrators.stage import run_calibrate
    from bertopt.passes.stage import run_fuse

    fused = run_fuse(exported_minilm, tmp_path / "fused")
    cal = run_calibrate(fused.path, tmp_path / "int8", data=str(slabs_dir / "train.csv"), text_column="text", samples=16,
                        max_length=64, trt_cache=False)
    art = run_build(cal.path, tmp_path / "built")
    assert art.manifest["build"]["int8_gemm_bias_folded"] == 18  # attention output, FFN in, FFN out x 6 (Q/K/V bias is in the attention op)
    g = onnx.load(str(art.model_path)).graph
    gemms = [n for n in g.node if n.op_type == "MatMulIntegerToFloat"]
    producers = {o: n for n in g.node for o in n.output}
    # Q, K and V read one quantized input: one quantizer and one GEMM (+ Split) per layer instead of three
    assert art.manifest["build"]["int8_gemms_merged"] == {"quantizers_shared": 12, "gemms_merged": 12}
    assert len(gemms) == 24 and sum(len(n.input) > 6 and bool(n.input[6]) for n in gemms) == 18
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) == 24 and sum(n.op_type == "Split" for n in g.node) == 6
    assert not any(n.op_type == "Add" and any(producers.get(i) in gemms for i in n.input) for n in g.node)
    built = ortb.make_session(art.model_path, ortb.load_session_config(art.path)).run(None, feeds)
    plain = ortb.make_session(cal.model_path).run(None, feeds)
    for a, b in zip(built, plain):
        assert np.abs(a - b).max() < 1e-5


# ------------------------------------------------------------------------------------- short calls
def test_build_times_short_calls_and_records_the_crossover(ort_int8):
    """The default build (--short-calls auto) times 1 thread against the session's threads at batch 1 and keeps
    the crossover; session.json says it exactly when the manifest does."""
    sc = ort_int8.manifest["build"]["short_calls"]
    cfg = ortb.load_session_config(ort_int8.path)
    if ortb.physical_cores() < 2:
        assert not sc["measured"] and sc["max_tokens"] is None and "short_calls" not in cfg
        return
    assert sc["measured"] and set(sc["latency_ms"]) == {f"{sc['threads']} threads", "1 thread"}
    assert all(v > 0 for lat in sc["latency_ms"].values() for v in lat.values())
    one, many = sc["latency_ms"]["1 thread"], sc["latency_ms"][f"{sc['threads']} threads"]
    if sc["max_tokens"] is None:
        assert "short_calls" not in cfg and one["8"] > 0.9 * many["8"]
    else:  # the threshold is the longest length of a run, from the shortest, where 1 thread is 10% faster; auto stops at 64
        assert cfg["short_calls"] == {"max_tokens": sc["max_tokens"], "intra_op_num_threads": 1} and sc["max_tokens"] <= 64
        assert all(one[s] <= 0.9 * many[s] for s in one if int(s) <= sc["max_tokens"])


def test_short_calls_run_on_a_one_thread_session(qdq_minilm, slabs_texts, tmp_path):
    """--short-calls 32: bench's and bertopt.load's runner opens a 1-thread session beside the 2-thread one and
    sends it every call of at most 32 tokens; both routes give the model's outputs."""
    import bertopt
    from bertopt.bench.runners import open_runner

    art = run_build(qdq_minilm, tmp_path / "b", short_calls="32")
    assert ortb.load_session_config(art.path)["short_calls"] == {"max_tokens": 32, "intra_op_num_threads": 1}
    assert art.manifest["build"]["short_calls"] == {"measured": False, "max_tokens": 32, "why": "--short-calls 32"}
    tok = load_tokenizer(art.tokenizer_dir)
    plain = ortb.make_session(art.model_path, ortb.load_session_config(art.path))
    r = open_runner(art.path, threads=2)
    assert r.short_calls["max_tokens"] == 32
    for rows, seq, route in ((slabs_texts[:1], 16, "short"), (slabs_texts[:2], 16, "short"), (slabs_texts[:1], 128, "long"),
                             (slabs_texts[:4], 16, "long")):
        before = dict(r.short_calls["calls"])
        f = tokenize(tok, rows, INPUTS, seq, pad_to=seq)
        got = r(f)["sentence_embedding"]
        assert r.short_calls["calls"][route] == before[route] + 1, (len(rows), seq)
        ref = plain.run(["sentence_embedding"], f)[0]
        assert _cos(got, ref).min() >= 0.9999
    # bertopt.load routes the same way; a 1-thread runner opens no second session
    m = bertopt.load(art.path, threads=2)
    m.encode(slabs_texts[:3], batch_size=1)
    assert m.runner.short_calls["calls"]["short"] == 3
    assert open_runner(art.path, threads=1).short_calls is None
    # bench times through the same runner and reports how the calls went
    from bertopt.bench.stage import run_bench

    rep = run_bench([str(art.path)], None, batch=[1], seq=[16, 128], threads=2, warmup=0, iters=2, repeats=1)
    calls = rep["runs"][0]["short_calls"]
    assert calls["max_tokens"] == 32 and calls["calls"]["short"] >= 2 and calls["calls"]["long"] >= 2
    # --short-calls off: no second session
    off = run_build(qdq_minilm, tmp_path / "off", short_calls="off")
    assert "short_calls" not in ortb.load_session_config(off.path) and open_runner(off.path, threads=2).short_calls is None


@pytest.mark.parametrize("value, words", [
    ({"max_tokens": 0, "intra_op_num_threads": 1}, "'short_calls.max_tokens' must be a token count"),
    ({"max_tokens": "32", "intra_op_num_threads": 1}, "'short_calls.max_tokens' must be a token count"),
    ({"max_tokens": 32}, "exactly max_tokens and intra_op_num_threads"),
    ({"max_tokens": 32, "intra_op_num_threads": 0}, "'short_calls.intra_op_num_threads' must be at least 1"),
    ({"max_tokens": 32, "intra_op_num_threads": 1, "file": "/tmp/x"}, "exactly max_tokens and intra_op_num_threads"),
])
def test_a_forged_short_calls_entry_is_refused(value, words):
    from bertopt.backends.session_config import check_session_config

    with pytest.raises(BertoptError) as e:
        check_session_config({"intra_op_num_threads": 2, "short_calls": value}, "art/session.json")
    assert "art/session.json" in e.value.message and words in e.value.message and "bertopt build" in e.value.hint


def test_short_calls_are_not_timed_on_a_graph_without_token_inputs(tmp_path):
    """A graph that does not take int64 token ids (here a float Relu) builds with one session and says why."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    out = tmp_path / "out"
    out.mkdir()
    d = ortb.build_onnxruntime(src, out, threads=2, short_calls="auto")
    assert d["short_calls"]["max_tokens"] is None and d["short_calls"]["why"].startswith("not timed: the graph's inputs")
    assert "short_calls" not in json.loads((out / "session.json").read_text())
