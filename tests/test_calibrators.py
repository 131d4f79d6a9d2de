"""Unit tests of the calibrators package: hand-computed histograms and ranges, Q/DQ on tiny graphs
run by ONNX Runtime, equalization and bias correction, the ranges file and TensorRT's cache format."""

from __future__ import annotations

import math
import struct
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertopt.calibrators import methods, qdq, smooth
from bertopt.calibrators.histogram import Histogram, NonFiniteError
from bertopt.calibrators.rangefile import parse_trt_cache, read_ranges, trt_cache_text, write_ranges
from bertopt.errors import BertoptError


# ------------------------------------------------------------------------------ histograms
def test_histogram_grows_by_merging_bins_and_keeps_every_count():
    h = Histogram(bins=4)
    h.update(np.array([0.5, -1.0], dtype=np.float32))  # width 1.0 / 4 = 0.25: bins 2 and 3 (max lands in the last)
    assert h.width == 0.25 and h.counts.tolist() == [0, 0, 1, 1]
    h.update(np.array([3.0], dtype=np.float32))  # doubles twice: width 1.0, [0,0,1,1] -> [0,2,0,0] -> [2,0,0,0]
    assert h.width == 1.0 and h.counts.tolist() == [2, 0, 0, 1]
    assert h.amax == 3.0 and h.total == 3 == h.count


def test_histogram_zeros_before_any_range_go_to_bin_zero():
    h = Histogram(bins=4)
    h.update(np.zeros(5, dtype=np.float32))
    assert h.width == 0.0 and h.total == 5 and h.amax == 0.0
    h.update(np.array([2.0], dtype=np.float32))
    assert h.counts.tolist() == [5, 0, 0, 1]


@pytest.mark.parametrize("bad, nan, inf", [(np.nan, 1, 0), (np.inf, 0, 1), (-np.inf, 0, 1)])
def test_histogram_rejects_non_finite_values(bad, nan, inf):
    h = Histogram(bins=4)
    with pytest.raises(NonFiniteError) as e:
        h.update(np.array([1.0, bad], dtype=np.float32))
    assert (e.value.nan, e.value.inf) == (nan, inf)


# ------------------------------------------------------------------------------ calibrators
def test_max_and_percentile_by_hand():
    # 100 values, bins of 0.5: cumulative counts 50, 80, 95, 99, 100; the largest value is 2.4
    h = Histogram.from_counts([50, 30, 15, 4, 1, 0], width=0.5, amax=2.4)
    assert methods.amax_max(h) == 2.4
    assert methods.amax_percentile(h, 80) == 1.0  # cdf reaches 80 in bin 1 -> its upper edge
    assert methods.amax_percentile(h, 99) == 2.0
    assert methods.amax_percentile(h, 99.5) == 2.4  # bin 4's edge (2.5) capped at the true max
    assert methods.amax_percentile(h, 100) == 2.4


def test_entropy_divergences_by_hand():
    # counts [8, 4, 0, 1], width 1, 2 levels (num_bits=2), candidates i = 2, 3, 4:
    # i=2: P = [8, 5]/13, Q = [8, 4]/12          -> KL = 8/13 ln((8/13)/(2/3)) + 5/13 ln((5/13)/(1/3)) = 0.005782
    # i=3: P = [8, 4, 1]/13 but bin 2 is empty in Q (outliers folded into an empty bin) -> inf
    # i=4: P = [8, 4, 0, 1]/13, Q = [6, 6, 0, 1]/13 -> KL = 8/13 ln(8/6) + 4/13 ln(4/6) = 0.052277
    h = Histogram.from_counts([8, 4, 0, 1], width=1.0, amax=4.0)
    cand, kl = methods.entropy_divergences(h, num_bits=2)
    assert cand.tolist() == [2, 3, 4]
    expect2 = 8 / 13 * math.log((8 / 13) / (2 / 3)) + 5 / 13 * math.log((5 / 13) / (1 / 3))
    expect4 = 8 / 13 * math.log(8 / 6) + 4 / 13 * math.log(4 / 6)
    assert kl[0] == pytest.approx(expect2, rel=1e-9) and kl[0] == pytest.approx(0.005782, abs=1e-6)
    assert math.isinf(kl[1])
    assert kl[2] == pytest.approx(expect4, rel=1e-9) and kl[2] == pytest.approx(0.052277, abs=1e-6)
    assert methods.amax_entropy(h, num_bits=2) == 2.0  # i=2 wins: the upper edge of bin 1


def test_entropy_keeps_the_full_range_of_a_compact_distribution():
    # every value within fewer bins than there are levels: clipping cannot help
    h = Histogram.from_counts([5, 3, 2, 1] + [0] * 252, width=0.01, amax=0.04)
    assert methods.amax_entropy(h) == 0.04


def test_mse_by_hand():
    # counts [0, 3, 0, 1], width 1 -> centres 1.5 (x3) and 3.5; 2 bits: q = clip(round(c/a), 0, 1) * a
    # a=1: 3*(1.5-1)^2 + (3.5-1)^2 = 7.0;  a=2: 3*(1.5-2)^2 + (3.5-2)^2 = 3.0
    # a=3: 1.5/3 = 0.5 rounds to 0: 3*1.5^2 + 0.5^2 = 7.0;  a=4: 3*1.5^2 + 0.5^2 = 7.0
    h = Histogram.from_counts([0, 3, 0, 1], width=1.0, amax=4.0)
    assert methods.amax_mse(h, num_bits=2) == 2.0


def test_all_zero_tensor_has_no_range():
    h = Histogram(bins=8)
    h.update(np.zeros(10, dtype=np.float32))
    for m in methods.METHODS:
        assert methods.compute_amax(h, m) == 0.0


def test_methods_on_gaussian_data_are_ordered_sensibly():
    rng = np.random.default_rng(0)
    h = Histogram()
    for _ in range(4):
        h.update(rng.standard_normal(100_000).astype(np.float32))
    a = {m: methods.compute_amax(h, m) for m in methods.METHODS}
    assert a["max"] == pytest.approx(float(h.amax))
    # percentile 99.99 of |N(0,1)| is 3.89; entropy/mse clip the far tail below the max
    assert a["percentile"] == pytest.approx(3.89, abs=0.1)
    assert 2.0 < a["mse"] < a["max"] and 2.0 < a["entropy"] < a["max"]


# ------------------------------------------------------------------------------ tiny graphs
def _tiny_model(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x[B,S,4] -> LayerNorm -> MatMul(W1[4,3]) + b1 -> y ; LN out also feeds a residual-like Add;
    z = Gemm(x2[N,4], W2[3,4], transB=1)."""
    k = w1.shape[0]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(np.ones(k, np.float32), "gamma"), numpy_helper.from_array(np.linspace(-1, 2, k).astype(np.float32), "beta")]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "W1"], ["mm"], name="layer/dense/MatMul"),
        helper.make_node("Add", ["mm", "b1"], ["y"], name="layer/dense/Add"),
        helper.make_node("Add", ["ln", "ln"], ["res"], name="residual"),
        helper.make_node("Gemm", ["x2", "W2"], ["z"], name="head/Gemm", transB=1),
        helper.make_node("MatMul", ["x", "xt"], ["bmm"], name="attn/MatMul"),
    ]
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k]), helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", k]),
         helper.make_tensor_value_info("xt", TensorProto.FLOAT, ["B", k, "S"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
         (("y", ["B", "S", w1.shape[1]]), ("res", ["B", "S", k]), ("z", ["N", w2.shape[0]]), ("bmm", ["B", "S", "S"]))],
        initializer=inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, feeds, optimize=False, outputs=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(outputs, feeds)))


def _fq(x, amax):
    s = np.float32(amax / 127)
    return np.clip(np.rint(x / s), -127, 127).astype(np.float32) * s


@pytest.fixture()
def tiny():
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((4, 3)).astype(np.float32)
    w1[:, 2] = 0.0  # an all-zero output channel: scale 1, quantized to exact zeros
    return _tiny_model(w1, rng.standard_normal(3).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32))


def test_quantizable_gemms_placement_rules(tiny):
    ts = qdq.quantizable_gemms(tiny)
    assert [(t.node, t.kind, t.weight[2]) for t in ts] == [("layer/dense/MatMul", "gemm", 1), ("head/Gemm", "gemm", 0)]
    assert ts[0].activations == ((0, "ln"),) and ts[0].module == "layer.dense"
    with_bmm = qdq.quantizable_gemms(tiny, include_bmm=True)
    assert [t.kind for t in with_bmm] == ["gemm", "gemm", "bmm"] and with_bmm[2].activations == ((0, "x"), (1, "xt"))
    assert [t.node for t in qdq.quantizable_gemms(tiny, exclude=["head/*"])] == ["layer/dense/MatMul"]
    assert [t.node for t in qdq.quantizable_gemms(tiny, exclude=["layer.dense"])] == ["head/Gemm"]  # module path


def test_insert_qdq_matches_numpy_fake_quant_and_runs_int8_kernels(tiny):
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((2, 5, 4)).astype(np.float32), "x2": rng.standard_normal((3, 4)).astype(np.float32),
             "xt": rng.standard_normal((2, 4, 5)).astype(np.float32)}
    ln = _run(tiny, feeds)["res"] / 2
    ranges = {"ln": float(np.abs(ln).max()), "x2": 1.5}
    q = qdq.insert_qdq(tiny, ranges)
    onnx.checker.check_model(q)
    got = _run(q, feeds)
    w1 = numpy_helper.to_array(next(i for i in tiny.graph.initializer if i.name == "W1"))
    b1 = numpy_helper.to_array(next(i for i in tiny.graph.initializer if i.name == "b1"))
    wq, ws = qdq.quantize_weight(w1, 1)
    assert ws[2] == 1.0 and not wq[:, 2].any()
    expect = _fq(ln, ranges["ln"]) @ (wq.astype(np.float32) * ws[None, :]) + b1
    np.testing.assert_allclose(got["y"], expect, atol=1e-5)
    np.testing.assert_allclose(got["res"], 2 * ln, atol=1e-6)  # the residual reader kept the float tensor
    np.testing.assert_array_equal(got["bmm"], feeds["x"] @ feeds["xt"])  # BMMs float unless asked
    # TensorRT's form: int8 weight initializers, per-channel DQ on the output axis, symmetric zero points
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 2]
    assert {helper.get_attribute_value(a) for n in dqs for a in n.attribute if a.name == "axis"} == {0, 1}
    assert all(inits[n.input[0]].dtype == np.int8 and not inits[n.input[2]].any() for n in dqs)
    assert "W1" not in inits and "W2" not in inits  # float weights dropped
    assert qdq.qdq_summary(q)["quantized_gemms"] == 2
    # ONNX Runtime runs the 3-D GEMM as a real INT8 kernel
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = f"{d}/o.onnx"
        ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert ops["MatMulIntegerToFloat"] >= 1 and ops["MatMul"] == 1  # the float BMM stays


def test_insert_qdq_refuses_unusable_ranges(tiny):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ln"):
            qdq.insert_qdq(tiny, {"ln": bad, "x2": 1.0})
    with pytest.raises(ValueError, match="no range"):
        qdq.insert_qdq(tiny, {"x2": 1.0})


# ------------------------------------------------------------------------------ equalization
def _stats_for(model, feeds, tensors):
    from bertopt.calibrators.collect import observing_session

    s = observing_session(model, tensors)
    outs = s.run(list(tensors), feeds)
    return {t: smooth.ChannelStats.of(o) for t, o in zip(tensors, outs)}


def test_equalization_is_exact_in_float_and_leaves_other_readers_alone(tiny):
    rng = np.random.default_rng(3)
    feeds = {"x": (rng.standard_normal((2, 6, 4)) * [1, 1, 10, 1]).astype(np.float32), "x2": rng.standard_normal((3, 4)).astype(np.float32),
             "xt": rng.standard_normal((2, 4, 6)).astype(np.float32)}
    ts = qdq.quantizable_gemms(tiny, exclude=["head/*"])
    stats = _stats_for(tiny, feeds, ["ln"])
    eq = smooth.equalization_params(tiny, ts, stats, alpha=0.8, shift=True)
    assert np.all(eq["ln"].scale > 0) and np.any(eq["ln"].shift != 0)
    m2, ts2 = smooth.apply_equalization(tiny, ts, eq)
    ref, got = _run(tiny, feeds), _run(m2, feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)
    assert ts2[0].activations[0][1] != "ln" and ts2[0].weight[1] != "W1"
    ops = Counter(n.op_type for n in m2.graph.node)
    assert ops["Mul"] == 1 and ops["Add"] == 3  # the smoothing Mul, the shift Add, bias + residual Adds
    res = next(n for n in m2.graph.node if n.name == "residual")
    assert list(res.input) == ["ln", "ln"]
    # the equalized tensor is centred and has a balanced range per channel
    st2 = _stats_for(m2, feeds, [ts2[0].activations[0][1]])[ts2[0].activations[0][1]]
    np.testing.assert_allclose(st2.max, -st2.min, rtol=1e-4, atol=1e-5)


def test_bias_correction_removes_the_mean_output_shift_of_int8_weights():
    rng = np.random.default_rng(4)
    k, n = 64, 32
    w1 = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    model = _tiny_model(w1, np.zeros(n, np.float32), rng.standard_normal((3, k)).astype(np.float32))
    # LN output with per-channel offsets (beta) so E[x] != 0
    feeds = {"x": rng.standard_normal((8, 32, k)).astype(np.float32), "x2": rng.standard_normal((3, k)).astype(np.float32),
             "xt": rng.standard_normal((8, k, 32)).astype(np.float32)}
    ts = qdq.quantizable_gemms(model, exclude=["head/*"])
    stats = _stats_for(model, feeds, ["ln"])
    ref = _run(model, feeds)["y"]
    amax = {"ln": float(np.abs(_run(model, feeds)["res"] / 2).max())}
    plain = _run(qdq.insert_qdq(model, amax, ts), feeds)["y"]
    corrected = _run(qdq.insert_qdq(smooth.bias_correction(model, ts, {"ln": stats["ln"].mean}), amax, ts), feeds)["y"]
    bias_plain = np.abs((plain - ref).reshape(-1, n).mean(0)).mean()
    bias_corr = np.abs((corrected - ref).reshape(-1, n).mean(0)).mean()
    assert bias_corr < 0.5 * bias_plain


# ------------------------------------------------------------------------------ files
def test_trt_cache_format_round_trips():
    text = trt_cache_text({"a": 12.7, "b": 0.0, "c:0": 1.0, "d": float("nan")}, method="entropy")
    header, scales = parse_trt_cache(text)
    assert header == "TRT-100300-EntropyCalibration2"
    assert set(scales) == {"a", "c:0"}  # zero / NaN ranges are left out
    assert scales["a"] == pytest.approx(0.1) and scales["c:0"] == pytest.approx(1 / 127)
    assert text.splitlines()[1] == "a: " + struct.pack(">f", 12.7 / 127).hex()
    assert trt_cache_text({"a": 1.0}, method="max").startswith("TRT-100300-MinMaxCalibration\n")


def test_ranges_file_checks(tmp_path):
    good = {"hashes": {}, "calibration": {}, "placement": {}, "equalization": {}, "activations": {"t": 1.5}}
    write_ranges(tmp_path / "r.json", good)
    assert read_ranges(tmp_path / "r.json")["activations"] == {"t": 1.5}
    write_ranges(tmp_path / "bad.json", {**good, "activations": {"t": 0.0}})
    with pytest.raises(BertoptError, match=r"activations\['t'\]"):
        read_ranges(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"schema": "something/1"}')
    with pytest.raises(BertoptError, match="schema"):
        read_ranges(tmp_path / "other.json")
    with pytest.raises(BertoptError, match="no such ranges file"):
        read_ranges(tmp_path / "missing.json")


def test_collect_drops_non_finite_cache_only_tensors_but_refuses_non_finite_gemm_inputs():
    from bertopt.calibrators.collect import Batch, collect

    # y = x * 1 (finite), m = log(relu(x)) (-inf wherever x <= 0, like a -inf attention mask)
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Log", ["r"], ["m"]), helper.make_node("Identity", ["x"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", 4]) for n in ("m", "y")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    b = Batch(feeds={"x": np.array([[[1.0, -2.0, 3.0, 0.5]]], dtype=np.float32)}, indices=[0])
    hists, stats = collect(model, [b], histograms=["m", "y"], channels=["y"], lenient={"m"})
    assert set(hists) == {"y"} and hists["y"].amax == 3.0
    np.testing.assert_array_equal(stats["y"].max, [1.0, -2.0, 3.0, 0.5])
    with pytest.raises(BertoptError, match=r"1 inf values in tensor 'm' on calibration texts #0"):
        collect(model, [b], histograms=["m"], texts=["the text"])
