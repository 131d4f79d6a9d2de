"""build --backend tensorrt: everything that does not need a GPU (profile planning from real text,
FP16-in-ONNX conversion run on ONNX Runtime, precision-map parsing and the INT8-GEMM check for the
TensorRT 10 and 11 inspector formats, option validation), and GPU tests that skip cleanly here."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertopt.backends import profiles as prof
from bertopt.backends.fp16 import convert_to_fp16
from bertopt.backends.onnxruntime import make_session
from bertopt.backends.stage import run_build
from bertopt.backends.tensorrt import ENGINE_FILE, PRECISION_MAP_FILE, cuda_device_count, default_timing_cache, tensorrt_available
from bertopt.backends.tensorrt.engine import build_loaders, timing_cache_state
from bertopt.backends.tensorrt.inspector import check_int8, parse_layer_info, precision_map, tensor_precision, unique_layers
from bertopt.backends.tensorrt.prepare import asymmetric_qdq, expected_int8_gemms, prepare_onnx
from bertopt.backends.tensorrt.runner import TensorRTRunner
from bertopt.errors import BertoptError, MissingDependencyError
from conftest import run_cli

HAVE_TRT = tensorrt_available()
gpu = pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and an NVIDIA GPU")


# ===================================================================================== profiles
@pytest.fixture(scope="module")
def slabs_lengths(exported_minilm, slabs_dir):
    from bertopt.data import load_texts, load_tokenizer

    texts = load_texts(slabs_dir / "train.csv", text_column="text").texts
    return prof.token_lengths(load_tokenizer(exported_minilm / "tokenizer"), texts, 512)


def _check_tiling(profiles, lengths, max_length):
    assert profiles[0].seq[0] == 1
    for a, b in zip(profiles, profiles[1:]):
        assert b.seq[0] == a.seq[2] + 1  # contiguous, no gaps, no overlap
    for p in profiles:
        assert 1 <= p.seq[0] <= p.seq[1] <= p.seq[2] <= max_length
        assert p.batch == prof.DEFAULT_BATCH
    for n in set(lengths):
        assert prof.select_profile(profiles, 8, min(n, max_length)) >= 0, n
    assert sum(p.share for p in profiles) == pytest.approx(1.0, abs=1e-3)


def test_plan_from_real_text(slabs_lengths):
    """S-Labs prompts are short (median ~15 tokens) with a long tail: several profiles, opt where
    the traffic is, never the max."""
    lengths = slabs_lengths
    profiles = prof.plan_profiles(lengths, max_length=512)
    _check_tiling(profiles, lengths, 512)
    assert 2 <= len(profiles) <= prof.MAX_PROFILES
    first = profiles[0]
    assert first.share > 0.5 and first.seq[1] <= 32  # most texts: a short-sequence profile
    assert profiles[-1].seq[2] == prof.round_up(max(lengths))  # longest text seen is covered...
    assert profiles[-1].seq[2] < 512  # ...and nothing is tuned for lengths that never occur
    hist = prof.length_histogram(lengths, 512)
    assert sum(hist.values()) == len(lengths)


def test_plan_truncates_at_max_length(slabs_lengths):
    profiles = prof.plan_profiles(slabs_lengths, max_length=32)
    _check_tiling(profiles, slabs_lengths, 32)
    assert profiles[-1].seq[2] == 32


def test_plan_narrow_and_wide():
    one = prof.plan_profiles([20] * 50 + [22] * 10)
    assert len(one) == 1 and one[0].seq == (1, 24, 24)
    rng = np.random.default_rng(0)
    wide = [int(x) for x in np.concatenate([rng.integers(8, 24, 300), rng.integers(200, 500, 100)])]
    profiles = prof.plan_profiles(wide, max_length=512)
    _check_tiling(profiles, wide, 512)
    assert len(profiles) >= 2 and profiles[0].seq[2] <= 32 and profiles[-1].seq[1] >= 200
    with pytest.raises(BertoptError, match="no texts"):
        prof.plan_profiles([])


def test_plan_cover_and_auto_spec(slabs_lengths):
    plain = prof.plan_profiles(slabs_lengths, max_length=512)
    profiles = prof.plan_profiles(slabs_lengths, max_length=512, cover=128)
    _check_tiling(profiles, slabs_lengths, 512)
    assert profiles[-1].seq[2] == 128 and prof.select_profile(profiles, 8, 128) == len(profiles) - 1
    assert profiles[:len(plain)][:-1] == plain[:-1]  # the planned bands stay as they were
    near = prof.plan_profiles([20] * 10 + [40] * 10, cover=48)
    assert near[-1].seq[2] == 48 and len(near) == len(prof.plan_profiles([20] * 10 + [40] * 10))  # extended
    far = prof.plan_profiles([10] * 20, cover=256)
    assert [p.seq for p in far] == [(1, 16, 16), (17, 256, 256)] and far[-1].share == 0.0  # own profile at 256
    assert prof.parse_auto("auto") == 0 and prof.parse_auto("AUTO:128") == 128 and prof.parse_auto("seq=8") is None
    for bad in ("auto:x", "auto:0", "auto:1024"):
        with pytest.raises(BertoptError, match="auto:N|positions"):
            prof.parse_auto(bad, 512)


def test_select_profile_prefers_the_narrowest():
    ps = prof.parse_profiles("batch=1:8:32,seq=1:128:512;batch=1:8:32,seq=1:16:32")
    assert prof.select_profile(ps, 8, 20) == 1
    assert prof.select_profile(ps, 8, 100) == 0
    assert prof.select_profile(ps, 64, 20) == -1


@pytest.mark.parametrize("spec, shapes", [
    ("batch=1:8:32,seq=1:128:256", [((1, 8, 32), (1, 128, 256))]),
    ("seq=16:64:128", [(prof.DEFAULT_BATCH, (16, 64, 128))]),
    ("batch=4,seq=128; batch=1:1:2,seq=1:256:512", [((4, 4, 4), (128, 128, 128)), ((1, 1, 2), (1, 256, 512))]),
])
def test_parse_profiles(spec, shapes):
    assert [(p.batch, p.seq) for p in prof.parse_profiles(spec, 512)] == shapes


@pytest.mark.parametrize("spec, words", [
    ("batch=1:8:32", "no seq="),
    ("seq=1:128:1024", "exceeds the model's 512"),
    ("seq=128:64:256", "MIN <= OPT <= MAX"),
    ("seq=0:8:16", "MIN <= OPT <= MAX"),
    ("seq=1:8", "MIN:OPT:MAX"),
    ("seq=a:b:c", "not integers"),
    ("heads=12,seq=1:8:16", "'heads=12'"),
    ("seq=1:8:16,seq=1:8:16", "given twice"),
    ("  ", "empty"),
])
def test_parse_profile_errors(spec, words):
    with pytest.raises(BertoptError) as e:
        prof.parse_profiles(spec, 512)
    assert words in e.value.message and e.value.hint


# ===================================================================================== FP16 conversion
def _tiny_attention_model(opset: int = 17, qdq: bool = False) -> onnx.ModelProto:
    """scores = X @ W (+ optional Q/DQ), + (1 - mask) * finfo(float32).min, Softmax, LayerNorm."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (8, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "neg"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
    ]
    nodes = []
    x = "X"
    if qdq:
        wq = np.clip(np.round(w / 0.01), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp"), numpy_helper.from_array(np.array(0.05, np.float32), "xs")]
        nodes += [helper.make_node("QuantizeLinear", ["X", "xs", "zp"], ["Xq"], name="qx"),
                  helper.make_node("DequantizeLinear", ["Xq", "xs", "zp"], ["Xdq"], name="dqx"),
                  helper.make_node("DequantizeLinear", ["Wq", "ws", "zp"], ["Wdq"], name="dqw")]
        x, wname = "Xdq", "Wdq"
    else:
        inits.append(numpy_helper.from_array(w, "W"))
        wname = "W"
    nodes += [
        helper.make_node("MatMul", [x, wname], ["S"], name="gemm"),
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["inv"]),
        helper.make_node("Mul", ["inv", "neg"], ["bias"]),
        helper.make_node("Add", ["S", "bias"], ["S2"]),
        helper.make_node("Softmax", ["S2"], ["P"], axis=-1, name="softmax"),
        helper.make_node("LayerNormalization", ["P", "gamma", "beta"], ["Y"], axis=-1, name="ln"),
        helper.make_node("ReduceSum", ["Y"], ["pooled"], keepdims=0) if opset < 13 else
        helper.make_node("Identity", ["Y"], ["Yid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 8]),
                        helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 8]), helper.make_tensor_value_info("Yid", TensorProto.FLOAT, ["b", 8])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_fp16_keeps_norms_fp32_and_clamps_the_mask():
    m = _tiny_attention_model()
    rng = np.random.default_rng(1)
    feeds = {"X": rng.normal(size=(4, 8)).astype(np.float32), "mask": np.array([[1] * 8, [1] * 4 + [0] * 4] * 2, np.int64)}
    m16, rep = convert_to_fp16(m)
    types = {t.name: t.data_type for t in m16.graph.initializer}
    assert types["W"] == TensorProto.FLOAT16 and types["neg"] == TensorProto.FLOAT16
    assert types["gamma"] == TensorProto.FLOAT and types["beta"] == TensorProto.FLOAT  # read only by the kept LayerNorm
    assert rep.kept_fp32_nodes == {"Softmax": 1, "LayerNormalization": 1} and rep.values_clamped == 1
    assert numpy_helper.to_array(next(t for t in m16.graph.initializer if t.name == "neg")) == -65504
    ln = next(n for n in m16.graph.node if n.op_type == "LayerNormalization")
    sm = next(n for n in m16.graph.node if n.op_type == "Softmax")
    producers = {o: n for n in m16.graph.node for o in n.output}
    assert producers[sm.input[0]].op_type == "Cast"  # FP16 scores cast up for the FP32 Softmax
    src = producers[ln.input[0]]
    if src.op_type == "Cast":  # an FP32 -> FP32 identity Cast is left where the library's round trip was
        assert src.attribute[0].i == TensorProto.FLOAT
        src = producers[src.input[0]]
    assert src is sm  # FP32 straight into the FP32 LayerNorm, no FP16 round trip
    assert [o.type.tensor_type.elem_type for o in m16.graph.output] == [TensorProto.FLOAT] * 2  # I/O types kept
    ref, ref_id = _run(m, feeds)
    out, out_id = _run(m16, feeds)
    assert not np.isnan(out).any() and np.abs(out - ref).max() < 2e-2 and np.abs(out_id - ref_id).max() < 2e-2


def test_naive_fp16_mask_would_be_nan():
    """Why the clamp matters: finfo(float32).min is -inf in FP16, and 0 * -inf is NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        neg = np.float16(np.finfo(np.float32).min)
        assert np.isinf(neg) and np.isnan(np.float16(0) * neg)


def test_fp16_qdq_moves_to_opset_19_with_half_scales():
    m = _tiny_attention_model(qdq=True)
    feeds = {"X": np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32), "mask": np.ones((3, 8), np.int64)}
    m16, rep = convert_to_fp16(m)
    assert (rep.opset_from, rep.opset_to) == (17, 19)
    types = {t.name: t.data_type for t in m16.graph.initializer}
    assert types["ws"] == TensorProto.FLOAT16 and types["xs"] == TensorProto.FLOAT16 and types["Wq"] == TensorProto.INT8
    assert rep.qdq_scales_subnormal == 0
    tiny = _tiny_attention_model(qdq=True)
    next(t for t in tiny.graph.initializer if t.name == "ws").CopyFrom(numpy_helper.from_array(np.array(1e-5, np.float32), "ws"))
    assert convert_to_fp16(tiny)[1].qdq_scales_subnormal == 1
    assert expected_int8_gemms(m16) == ["gemm"]
    ref = _run(m, feeds)[0]
    out = _run(m16, feeds)[0]
    assert np.abs(out - ref).max() < 2e-2


def test_fp16_real_minilm_on_ort(exported_minilm, slabs_texts):
    from bertopt.data import load_tokenizer, tokenize

    m = onnx.load(str(exported_minilm / "model.onnx"))
    m16, rep = convert_to_fp16(m)
    assert rep.kept_fp32_nodes == {"LayerNormalization": 13, "Softmax": 6}
    assert rep.values_clamped >= 1  # the legacy export's finfo.min attention-mask constant
    feeds = tokenize(load_tokenizer(exported_minilm / "tokenizer"), slabs_texts[:16], ["input_ids", "attention_mask", "token_type_ids"], 128)
    ref = make_session(exported_minilm / "model.onnx").run(None, feeds)[1]
    out = make_session_from_proto(m16).run(None, feeds)[1]
    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert not np.isnan(out).any() and cos.min() > 0.999


def make_session_from_proto(m):
    import onnxruntime as ort

    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


# ===================================================================================== ONNX preparation
def test_prepare_checks_precision_against_the_graph(exported_minilm, tmp_path):
    src = exported_minilm / "model.onnx"
    with pytest.raises(BertoptError) as e:
        prepare_onnx(src, "int8", ("LayerNormalization",))
    assert "Q/DQ" in e.value.message and "TensorRT 11 removed implicit INT8" in e.value.hint
    q = tmp_path / "q.onnx"
    onnx.save(_tiny_attention_model(qdq=True), q)
    with pytest.raises(BertoptError, match="this graph is INT8"):
        prepare_onnx(q, "fp16", ())
    p = prepare_onnx(q, None, ("LayerNormalization", "Softmax"))
    assert p.precision == "int8" and p.expected_int8 == ["gemm"] and p.fp16["opset_to"] == 19
    p32 = prepare_onnx(src, "fp32", ())
    assert p32.fp16 is None and p32.expected_int8 == []


def test_prepare_rejects_asymmetric_qdq(tmp_path):
    m = _tiny_attention_model(qdq=True)
    zp = next(t for t in m.graph.initializer if t.name == "zp")
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "zp"))
    q = tmp_path / "asym.onnx"
    onnx.save(m, q)
    assert asymmetric_qdq(m) == ["qx", "dqx", "dqw"]
    with pytest.raises(BertoptError) as e:
        prepare_onnx(q, "int8", ())
    assert "symmetric" in e.value.message and "ActivationSymmetric" in e.value.hint
    u8 = _tiny_attention_model(qdq=True)
    u8.graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), "zpu"))
    next(n for n in u8.graph.node if n.name == "qx").input[2] = "zpu"
    assert asymmetric_qdq(u8) == ["qx"]


def test_prepare_rejects_ort_contrib_ops(tmp_path, exported_minilm):
    from bertopt.graph import ort_optimize

    fused = tmp_path / "ort.onnx"
    ort_optimize(exported_minilm / "model.onnx", fused, "ORT_ENABLE_EXTENDED")
    with pytest.raises(BertoptError) as e:
        prepare_onnx(fused, "fp16", ())
    assert "com.microsoft" in e.value.message and "ONNX Runtime" in e.value.hint


# ===================================================================================== inspector
def _layer(name, ltype, dtype, fmt_style, meta=None, ptype=None):
    def tensor(n):
        if fmt_style == 10:
            return {"Name": n, "Location": "Device", "Dimensions": [-1, -1, 384],
                    "Format/Datatype": {"INT8": "Row major Int8 format", "FP16": "Row major linear FP16 format",
                                        "FP32": "Row major linear FP32"}[dtype]}
        return {"Name": n, "Location": "Device", "Dimensions": [-1, -1, 384], "Format": "Row major linear format (kLINEAR)",
                "DataType": {"INT8": "Int8", "FP16": "Half", "FP32": "Float"}[dtype]}

    raw = {"Name": name, "LayerType": ltype, "Inputs": [tensor(name + ":in")], "Outputs": [tensor(name + ":out")],
           "TacticName": "sm75_xmma_gemm", "StreamId": 0}
    if ptype:
        raw["ParameterType"] = ptype
    if meta:
        raw["Metadata"] = "".join(f"[ONNX Layer: {m}]" for m in meta)
    return raw


@pytest.mark.parametrize("style", [10, 11])
def test_parse_and_check_int8(style):
    expected = ["/l0/q/MatMul", "/l0/k/MatMul", "/l0/ffn/MatMul", "/l1/q/MatMul"]
    layers = [
        _layer("/l0/q/MatMul + /l0/q/Add", "CaskGemmMatrixMultiply", "INT8", style, meta=["/l0/q/MatMul", "/l0/q/Add"], ptype="MatrixMultiply"),
        _layer("/l0/k/MatMul", "CaskGemmMatrixMultiply", "INT8", style, meta=["/l0/k/MatMul"], ptype="MatrixMultiply"),
        _layer("/l0/ffn/MatMul", "CaskGemmMatrixMultiply", "FP16", style, meta=["/l0/ffn/MatMul"], ptype="MatrixMultiply"),
        _layer("{ForeignNode[/l1/q/MatMul.../l1/ln]}", "Myelin", "FP16", style, meta=["/l1/q/MatMul", "/l1/ln"]),
        _layer("/ln", "Normalization", "FP32", style, meta=["/ln"], ptype="Normalization"),
    ]
    info = {"Layers": layers, ("Bindings" if style == 10 else "I/O Tensors"): []}
    recs = parse_layer_info(json.dumps(info))
    assert [r.precision for r in recs] == ["INT8", "INT8", "FP16", "FP16", "FP32"]
    pmap = precision_map(recs)
    assert pmap["gemm_precisions"] == {"INT8": 2, "FP16": 1} and pmap["opaque_layers"] == 1
    check = check_int8(recs, expected)
    assert not check.ok
    assert check.fell_back == {"/l0/ffn/MatMul": "FP16"}
    assert sorted(check.int8) == ["/l0/k/MatMul", "/l0/q/MatMul"] and check.unverified == ["/l1/q/MatMul"]
    good = check_int8(recs, expected[:2])
    assert good.ok and good.to_json()["int8"] == 2


def test_tensor_precision_strings():
    tp = tensor_precision
    assert tp({"Format/Datatype": "Channel major INT8 format where channel % 16 == 0"}) == "INT8"
    assert tp({"Format/Datatype": "Row major linear FP32"}) == "FP32"
    assert tp({"Format/Datatype": "Half"}) == "FP16"
    assert tp({"DataType": "BFloat16", "Format": "Row major linear format"}) == "BF16"
    assert tp({"DataType": "Int32"}) == "INT32" and tp({}) == "UNKNOWN"


def test_layer_names_only_is_an_error():
    with pytest.raises(BertoptError, match="layer names only"):
        parse_layer_info(json.dumps({"Layers": ["a", "b"]}))


def test_expected_int8_gemms_on_fp32_graph(exported_minilm):
    assert expected_int8_gemms(onnx.load(str(exported_minilm / "model.onnx"), load_external_data=False)) == []


def test_precision_map_counts_each_layer_once_across_profiles():
    """An engine with several profiles lists every layer once per profile (later copies named
    '... [profile N]'): the GEMM counts must not grow with the number of profiles."""
    one = [_layer("/l0/q/MatMul", "CaskGemmMatrixMultiply", "INT8", 10, meta=["/l0/q/MatMul"], ptype="MatrixMultiply"),
           _layer("/l0/ffn/MatMul", "CaskGemmMatrixMultiply", "FP16", 10, meta=["/l0/ffn/MatMul"], ptype="MatrixMultiply")]
    copies = [dict(x, Name=f"{x['Name']} [profile {k}]") for k in (1, 2) for x in one]
    recs = parse_layer_info(json.dumps({"Layers": one + copies}))
    assert len(recs) == 6
    pmap = precision_map(recs)
    assert pmap["gemm_precisions"] == {"INT8": 1, "FP16": 1} and len(pmap["layers"]) == 2
    assert [r.name for r in unique_layers(recs)] == ["/l0/q/MatMul", "/l0/ffn/MatMul"]


# ===================================================================================== Polygraphy, without TensorRT
def test_polygraphy_loaders_compose_without_tensorrt(tmp_path):
    """The build's loader chain is real Polygraphy (strongly typed network from the ONNX path, one
    Polygraphy profile per bertopt profile, timing cache in and out, no precision flags), composed
    without importing TensorRT."""
    import sys

    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as PolyProfile

    q = tmp_path / "q.onnx"
    onnx.save(_tiny_attention_model(qdq=True), q)  # inputs X and mask
    profiles = prof.parse_profiles("batch=1:4:8,seq=8;batch=1:1:2,seq=1:8:8", 8)
    loaders = build_loaders(q, profiles, ["X", "mask", "token_type_ids"], load_timing_cache=str(tmp_path / "c"),
                                 save_timing_cache=str(tmp_path / "c"), profiling_verbosity="DETAILED")
    assert isinstance(loaders.network, NetworkFromOnnxPath) and loaders.network.strongly_typed
    assert isinstance(loaders.config, CreateConfig) and isinstance(loaders.engine_bytes, EngineBytesFromNetwork)
    cfg = loaders.config
    assert not cfg.fp16 and not cfg.int8 and not cfg.tf32 and cfg.profiling_verbosity == "DETAILED"
    assert cfg.timing_cache_path == str(tmp_path / "c") and loaders.engine_bytes.timing_cache_path == str(tmp_path / "c")
    assert len(cfg.profiles) == 2 and all(isinstance(p, PolyProfile) for p in cfg.profiles)
    first = cfg.profiles[0]
    assert list(first) == ["X", "mask"]  # token_type_ids is not a graph input: left out
    assert (tuple(first["X"].min), tuple(first["X"].opt), tuple(first["X"].max)) == ((1, 8), (4, 8), (8, 8))
    assert tuple(cfg.profiles[1]["mask"].max) == (2, 8)
    assert cfg.memory_pool_limits is None
    assert "tensorrt" not in sys.modules


def test_timing_cache_state(tmp_path):
    """What the build does with the cache file hinges on this: only a cache TensorRT combines without
    ignore_mismatch is loaded and merged into; a foreign one is replaced."""
    class Cache:
        def __init__(self, data):
            self.data = data

        def combine(self, other, ignore_mismatch):
            assert ignore_mismatch is False
            return other.data == b"this-gpu"

    class Config:  # TensorRT's IBuilderConfig.create_timing_cache / ITimingCache.combine, as documented
        def create_timing_cache(self, data):
            if data == b"garbage":
                raise RuntimeError("cannot parse")
            return Cache(data)

    path = tmp_path / "cache.bin"
    assert timing_cache_state(path, Config()) == "absent"
    for data, state in ((b"this-gpu", "usable"), (b"other-gpu", "foreign"), (b"garbage", "foreign"), (b"", "absent")):
        path.write_bytes(data)
        assert timing_cache_state(path, Config()) == state, data


def test_no_cuda_here_is_zero_devices():
    assert cuda_device_count() == 0 and not tensorrt_available()


def test_fp16_underflowing_qdq_scale_is_raised_to_fp16_normal_min():
    from bertopt.backends.fp16 import FP16_TINY

    m = _tiny_attention_model(qdq=True)
    next(t for t in m.graph.initializer if t.name == "ws").CopyFrom(numpy_helper.from_array(np.array(1e-9, np.float32), "ws"))
    m16, rep = convert_to_fp16(m)
    assert rep.qdq_scales_clamped == 1 and rep.qdq_scales_subnormal == 0
    ws = numpy_helper.to_array(next(t for t in m16.graph.initializer if t.name == "ws"))
    assert ws.dtype == np.float16 and float(ws) == pytest.approx(FP16_TINY)
    assert all(numpy_helper.to_array(t).min() > 0 for t in m16.graph.initializer if t.name in ("ws", "xs"))


# ===================================================================================== without TensorRT
@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_user_error_with_a_hint(tmp_path):
    q = tmp_path / "q.onnx"
    onnx.save(_tiny_attention_model(qdq=True), q)
    with pytest.raises(MissingDependencyError) as e:
        run_build(q, tmp_path / "engine", backend="tensorrt", profile="batch=1:4:8,seq=8")
    assert "tensorrt" in e.value.message and "pip install tensorrt" in e.value.hint
    assert not (tmp_path / "engine").exists()
    r = run_cli("build", str(q), "-o", str(tmp_path / "e2"), "--backend", "tensorrt", "--profile", "batch=1:4:8,seq=8")
    assert r.returncode == 1 and "error:" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(MissingDependencyError):
        TensorRTRunner(tmp_path)


def test_trt_options_are_validated_before_tensorrt(exported_minilm, tmp_path):
    with pytest.raises(BertoptError, match="no --data"):
        run_build(exported_minilm, tmp_path / "e", backend="tensorrt", profile="auto")
    with pytest.raises(BertoptError, match="--tune applies to --backend onnxruntime"):
        run_build(exported_minilm, tmp_path / "e", backend="tensorrt", tune=True)


def test_default_timing_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache() == tmp_path / "bertopt" / "trt-timing.cache"


# ===================================================================================== GPU
@pytest.fixture(scope="module")
def engine_int8(tmp_path_factory, exported_minilm, slabs_dir):
    """The tiny Q/DQ graph isn't BERT-shaped; on GPU hosts build from a real Q/DQ MiniLM."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bertopt.data import load_texts, load_tokenizer, tokenize

    d = tmp_path_factory.mktemp("trt")
    tok = load_tokenizer(exported_minilm / "tokenizer")
    texts = load_texts(slabs_dir / "train.csv", text_column="text", limit=16).texts
    batches = iter([tokenize(tok, texts[i:i + 8], ["input_ids", "attention_mask", "token_type_ids"], 128) for i in (0, 8)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    quant_pre_process(str(exported_minilm / "model.onnx"), str(d / "pre.onnx"), skip_symbolic_shape=True)
    (d / "q").mkdir()
    quantize_static(str(d / "pre.onnx"), str(d / "q" / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    import shutil

    shutil.copytree(exported_minilm / "tokenizer", d / "q" / "tokenizer")
    return run_build(d / "q" / "model.onnx", d / "engine", backend="tensorrt", profile="auto:128", data=str(slabs_dir / "validation.csv"),
                     text_column="text", timing_cache=str(d / "cache.bin"))


@pytest.mark.gpu
@gpu
def test_gpu_int8_engine(engine_int8, exported_minilm, slabs_texts):
    from bertopt.data import load_tokenizer, tokenize

    build = engine_int8.manifest["build"]
    assert build["backend"] == "tensorrt" and build["precision"] == "int8" and build["int8_check"]["ok"]
    assert build["gemm_precisions"].get("INT8", 0) + len(build["int8_check"]["unverified"]) > 0
    pmap = json.loads((engine_int8.path / PRECISION_MAP_FILE).read_text())
    assert pmap["layers"] and build["timing_cache"]["saved_bytes"] > 0
    runner = TensorRTRunner(engine_int8)
    feeds = tokenize(load_tokenizer(exported_minilm / "tokenizer"), slabs_texts[:8], list(runner.input_names), 64)
    out = runner(feeds)
    ref = make_session(exported_minilm / "model.onnx").run(["sentence_embedding"], feeds)[0]
    emb = out["sentence_embedding"]
    cos = (ref * emb).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(emb, axis=1)
    assert cos.mean() > 0.85
    with_copies = runner.time(feeds, iters=5, warmup=2, copies=True)
    device_only = runner.time(feeds, iters=5, warmup=2, copies=False)
    assert (with_copies > 0).all() and (device_only > 0).all()
    runner.close()


@pytest.mark.gpu
@gpu
def test_gpu_fp16_engine_reuses_the_timing_cache(exported_minilm, tmp_path):
    cache = tmp_path / "cache.bin"
    first = run_build(exported_minilm, tmp_path / "a", backend="tensorrt", precision="fp16", profile="batch=1:4:8,seq=8:64:128", timing_cache=str(cache))
    second = run_build(exported_minilm, tmp_path / "b", backend="tensorrt", precision="fp16", profile="batch=1:4:8,seq=8:64:128", timing_cache=str(cache))
    assert first.manifest["build"]["fp16_conversion"]["kept_fp32_nodes"]["LayerNormalization"] == 13
    assert second.manifest["build"]["timing_cache"]["state"] == "usable" and second.manifest["build"]["timing_cache"]["loaded_bytes"] > 0


@pytest.mark.gpu
@gpu
def test_gpu_foreign_timing_cache_is_replaced_not_merged(exported_minilm, tmp_path):
    cache = tmp_path / "cache.bin"
    cache.write_bytes(b"not a timing cache of this GPU")
    art = run_build(exported_minilm, tmp_path / "a", backend="tensorrt", precision="fp16", profile="batch=1:1:2,seq=8:16:16", timing_cache=str(cache))
    tc = art.manifest["build"]["timing_cache"]
    assert tc["state"] == "foreign" and "started a new one" in tc["note"] and tc["loaded_bytes"] == 0
    assert cache.read_bytes() != b"not a timing cache of this GPU" and tc["saved_bytes"] > 0


@pytest.mark.gpu
@gpu
def test_gpu_engine_triton_repository(engine_int8, tmp_path):
    """--triton for a real engine: the config names the engine file, its profiles and the engine's own I/O."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from bertopt.backends import triton

    target = triton.check_repository(tmp_path / "repo", "minilm-trt", engine_int8.path, False)
    triton.write_repository(engine_int8, target)
    c = text_format.Parse((target / "config.pbtxt").read_text(), mc.ModelConfig())
    build = engine_int8.manifest["build"]
    assert c.platform == "tensorrt_plan" and c.default_model_filename == ENGINE_FILE
    assert (target / "1" / ENGINE_FILE).read_bytes() == (engine_int8.path / ENGINE_FILE).read_bytes()
    assert c.max_batch_size == build["max_batch"] and list(c.instance_group[0].profile) == [str(i) for i in range(len(build["profiles"]))]
    runner = TensorRTRunner(engine_int8)
    assert [t.name for t in c.input] == list(runner.input_names) and sorted(t.name for t in c.output) == sorted(runner.output_names)
    runner.close()
