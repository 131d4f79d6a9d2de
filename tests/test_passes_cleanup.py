"""Clean-up passes (fold_constants, remove_noops) and keep_fast_kernels on hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from bertopt.passes import fold_constants, keep_fast_kernels, remove_noops
from bertopt.passes.common import session
from bertopt.passes.testing import apply_pass, make_model, op_counts

F = np.float32
H = 8
RNG = np.random.default_rng(2)
FEEDS = {"x": RNG.standard_normal((2, 3, H)).astype(F)}


def test_fold_constants_folds_constant_arithmetic_and_static_shape_reads():
    n = helper.make_node
    nodes = [
        n("Constant", [], ["two"], value=helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])),
        n("Sqrt", ["two"], ["s2"]),  # exporters compute sqrt(2) at run time
        n("Transpose", ["Wt"], ["W"], perm=[1, 0]),  # and transpose weights at run time
        n("MatMul", ["x", "W"], ["mm"]),
        n("Div", ["mm", "s2"], ["d"]),
        n("Shape", ["x"], ["shp"]), n("Gather", ["shp", "two_i"], ["hdim"], axis=0),  # reads the static hidden dim
        n("Unsqueeze", ["hdim", "zero"], ["hdim1"]), n("Concat", ["minus1", "hdim1"], ["tgt"], axis=0),
        n("Reshape", ["d", "tgt"], ["y"]),
    ]
    inits = {"Wt": RNG.standard_normal((H, H)).astype(F), "two_i": np.array(2, np.int64), "zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    m = make_model(nodes, {"x": (F, ["b", "s", H])}, ["y"], inits)
    res = apply_pass(m, fold_constants)
    assert res.count >= 6
    assert res.ops == {"MatMul": 1, "Div": 1, "Reshape": 1}
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-6)


def test_fold_constants_on_a_clean_graph_fires_zero_times():
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, ["b", H])}, ["y"])
    res = apply_pass(m, fold_constants)
    assert res.count == 0 and res.misses


def test_remove_noops_drops_identity_same_type_cast_and_chained_layout_ops():
    n = helper.make_node
    nodes = [
        n("Identity", ["x"], ["i"]),
        n("Cast", ["i"], ["c"], to=onnx.TensorProto.FLOAT),  # float -> float
        n("Reshape", ["c", "s1"], ["r1"]), n("Reshape", ["r1", "s2"], ["r2"]),  # chain: only the last counts
        n("Transpose", ["r2"], ["t1"], perm=[1, 0, 2]), n("Transpose", ["t1"], ["t2"], perm=[1, 0, 2]),  # cancels out
        n("Relu", ["t2"], ["y"]),
    ]
    inits = {"s1": np.array([-1, H], np.int64), "s2": np.array([2, 3, H], np.int64)}
    m = make_model(nodes, {"x": (F, [2, 3, H])}, ["y"], inits)
    res = apply_pass(m, remove_noops)
    assert res.ops == {"Reshape": 1, "Relu": 1}, res.ops
    assert res.count >= 4
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=0)


def test_remove_noops_keeps_casts_that_convert_and_reshapes_that_copy_dims():
    n = helper.make_node
    nodes = [
        n("Cast", ["x"], ["c"], to=onnx.TensorProto.FLOAT16), n("Cast", ["c"], ["c2"], to=onnx.TensorProto.FLOAT),
        n("Reshape", ["c2", "s1"], ["r1"]), n("Reshape", ["r1", "s0"], ["y"]),  # 0 = copy a dim of the middle tensor
    ]
    inits = {"s1": np.array([6, H], np.int64), "s0": np.array([0, 2, 4], np.int64)}
    m = make_model(nodes, {"x": (F, [2, 3, H])}, ["y"], inits)
    res = apply_pass(m, remove_noops)
    assert res.count == 0 and res.ops == {"Cast": 2, "Reshape": 2}


def test_keep_fast_kernels_stops_ort_from_fusing_slower_kernels():
    """After the pass ORT's session optimizer no longer makes SkipLayerNormalization or BiasGelu."""
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "W1"], ["m1"]), n("Add", ["m1", "b1"], ["h"]), n("Gelu", ["h"], ["g"], domain="com.microsoft"),
        n("MatMul", ["g", "W2"], ["m2"]), n("Add", ["m2", "b2"], ["o"]), n("Add", ["o", "x"], ["s"]),
        n("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
    ]
    inits = {"W1": RNG.standard_normal((H, 4 * H)).astype(F), "b1": RNG.standard_normal(4 * H).astype(F), "W2": RNG.standard_normal((4 * H, H)).astype(F),
             "b2": RNG.standard_normal(H).astype(F), "gamma": np.ones(H, F), "beta": np.zeros(H, F)}
    m = make_model(nodes, {"x": (F, ["b", 3, H])}, ["y"], inits)

    def ort_fused_ops(model):
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as d:
            so = ort.SessionOptions()
            so.optimized_model_filepath = f"{d}/opt.onnx"
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return op_counts(onnx.load(f"{d}/opt.onnx"))

    before = ort_fused_ops(m)
    assert before["com.microsoft::SkipLayerNormalization"] == 1 and before["com.microsoft::BiasGelu"] == 1
    res = apply_pass(m, keep_fast_kernels)
    assert res.count == 2 and res.ops["Sum"] == 1
    after = ort_fused_ops(res.after)
    assert after["com.microsoft::SkipLayerNormalization"] == 0 and after["com.microsoft::BiasGelu"] == 0
    assert after["LayerNormalization"] == 1 and after["com.microsoft::Gelu"] == 1
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-5, atol=1e-5)
    # and with ORT's optimizations on, the numbers are the same too
    ref = session(m, optimize=True).run(None, FEEDS)[0]
    got = session(res.after, optimize=True).run(None, FEEDS)[0]
    np.testing.assert_allclose(ref, got, rtol=1e-5, atol=1e-5)
