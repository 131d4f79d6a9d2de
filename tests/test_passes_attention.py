"""attention (onnxruntime) and attention_standard (tensorrt) passes on hand-built attention blocks.

Each block is written the way one exporter writes it (legacy eager, sdpa with the split scale and
NaN guard, dynamo's 3-D K transpose, masked_fill, a causal bias, no mask); the fused graph must give
the same numbers on ORT with its optimizations off, with padding in the mask.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper

from bertopt.passes import attention, attention_standard
from bertopt.passes.common import session
from bertopt.passes.testing import apply_pass, make_model

F = np.float32
N, D = 2, 4  # heads, head size
H = N * D
B, S = 2, 5
RNG = np.random.default_rng(3)
WEIGHTS = {f"W{p}": (RNG.standard_normal((H, H)) / 3).astype(F) for p in "qkv"} | {f"b{p}": RNG.standard_normal(H).astype(F) for p in "qkv"}
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int64)
FEEDS = {"x": RNG.standard_normal((B, S, H)).astype(F), "attention_mask": MASK}


def block(form: str = "eager", value_scale: float | None = None, k_interleaved: bool = False, softmax_axis: int = -1):
    n = helper.make_node
    nodes, inits = [], dict(WEIGHTS)
    inits.update({"split": np.array([0, 0, N, D], np.int64), "split_dn": np.array([0, 0, D, N], np.int64), "merge": np.array([0, 0, H], np.int64)})
    for p in "qkv":
        shape = "split_dn" if p == "k" and k_interleaved else "split"
        nodes += [n("MatMul", ["x", f"W{p}"], [f"{p}m"]), n("Add", [f"b{p}", f"{p}m"], [f"{p}p"]), n("Reshape", [f"{p}p", shape], [f"{p}r"])]
    nodes += [n("Transpose", ["qr"], ["q4"], perm=[0, 2, 1, 3]), n("Transpose", ["vr"], ["v4"], perm=[0, 2, 1, 3])]
    scale = 1 / math.sqrt(D)
    if form == "sdpa":  # sqrt(scale) on q and on k^T, K^T as two transposes
        inits["rs"] = np.array(math.sqrt(scale), F)
        nodes += [n("Transpose", ["kr"], ["k4"], perm=[0, 2, 1, 3]), n("Transpose", ["k4"], ["kt0"], perm=[0, 1, 3, 2]),
                  n("Mul", ["q4", "rs"], ["qs"]), n("Mul", ["kt0", "rs"], ["kt"]), n("MatMul", ["qs", "kt"], ["scores"])]
    elif form == "dynamo":  # K^T through a 3-D reshape/transpose/reshape chain
        inits.update({"s3": np.array([B * N, S, D], np.int64), "s4": np.array([B, N, D, S], np.int64), "rs": np.array(math.sqrt(scale), F)})
        nodes += [n("Transpose", ["kr"], ["k4"], perm=[0, 2, 1, 3]), n("Reshape", ["k4", "s3"], ["k3"]), n("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
                  n("Reshape", ["k3t", "s4"], ["kt0"]), n("Mul", ["q4", "rs"], ["qs"]), n("Mul", ["kt0", "rs"], ["kt"]), n("MatMul", ["qs", "kt"], ["scores"])]
    else:
        inits["sqrt_d"] = np.array(math.sqrt(D), F)
        # interleaved: K is split [.., D, N], so "head" n takes every N-th column (shapes fit, numbers do not)
        perm = [0, 3, 2, 1] if k_interleaved else [0, 2, 3, 1]
        nodes += [n("Transpose", ["kr"], ["kt"], perm=perm), n("MatMul", ["q4", "kt"], ["raw"]), n("Div", ["raw", "sqrt_d"], ["scores"])]
    # the mask
    inits.update({"axes12": np.array([1, 2], np.int64), "zero": np.array(0.0, F), "ninf": np.array(-np.inf, F), "big": np.array(-1e9, F),
                  "one": np.array(1.0, F), "minf": np.array(np.finfo(F).min, F)})
    sm_in = "masked"
    if form in ("eager", "dynamo_eager"):  # (1 - mask) * finfo.min, [B, 1, 1, T]
        nodes += [n("Unsqueeze", ["attention_mask", "axes12"], ["m4"]), n("Cast", ["m4"], ["mf"], to=1), n("Sub", ["one", "mf"], ["inv"]),
                  n("Mul", ["inv", "minf"], ["bias"]), n("Add", ["scores", "bias"], ["masked"])]
    elif form in ("sdpa", "dynamo"):  # Where(bool mask, 0, -inf), then the NaN guard after the softmax
        nodes += [n("Unsqueeze", ["attention_mask", "axes12"], ["m4"]), n("Cast", ["m4"], ["mb"], to=9), n("Where", ["mb", "zero", "ninf"], ["bias"]),
                  n("Add", ["scores", "bias"], ["masked"])]
    elif form == "masked_fill":  # scores.masked_fill(mask == 0, -1e9)
        nodes += [n("Unsqueeze", ["attention_mask", "axes12"], ["m4"]), n("Cast", ["m4"], ["mb"], to=9), n("Not", ["mb"], ["pad"]),
                  n("Where", ["pad", "big", "scores"], ["masked"])]
    elif form == "causal":  # a [1, 1, S, S] additive causal bias: not a key-padding mask
        inits["causal"] = np.triu(np.full((S, S), -10000.0, F), 1)[None, None]
        nodes += [n("Add", ["scores", "causal"], ["masked"])]
    else:
        sm_in = "scores"
    nodes += [n("Softmax", [sm_in], ["probs"], axis=softmax_axis)]
    p = "probs"
    if form in ("sdpa", "dynamo"):
        nodes += [n("IsNaN", ["probs"], ["nan"]), n("Where", ["nan", "zero", "probs"], ["probs0"])]
        p = "probs0"
    v = "v4"
    if value_scale is not None:
        inits["vs"] = np.array(value_scale, F)
        nodes += [n("Mul", ["v4", "vs"], ["v4s"])]
        v = "v4s"
    nodes += [n("MatMul", [p, v], ["ctx"]), n("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]), n("Reshape", ["ctxt", "merge"], ["y"])]
    dims = [B, S] if form in ("dynamo", "causal") else ["batch", "seq"]  # their constants fix the shape
    inputs = {"x": (F, [*dims, H])}
    if any(node.input and "attention_mask" in node.input for node in nodes):
        inputs["attention_mask"] = (np.int64, dims)
    return make_model(nodes, inputs, ["y"], inits)


FORMS = ["eager", "sdpa", "dynamo", "masked_fill", "causal", "nomask"]


@pytest.mark.parametrize("form", FORMS)
def test_onnxruntime_target_fuses_to_multiheadattention(form):
    res = apply_pass(block(form), attention)
    assert res.count == 1, res.misses
    assert res.ops["com.microsoft::MultiHeadAttention"] == 1
    assert res.ops["Softmax"] == 0 and res.ops["MatMul"] == 3  # the Q/K/V GEMMs stay standard MatMuls
    assert res.ops["Add"] == 3  # ... with their bias Adds
    mha = next(n for n in res.after.graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    assert attrs["num_heads"] == N and attrs["scale"] == pytest.approx(1 / math.sqrt(D), rel=1e-5)
    inputs = list(mha.input) + [""] * 6
    if form in ("eager", "sdpa", "dynamo", "masked_fill"):
        assert inputs[4] and not inputs[5], "a key-padding mask goes in as the 2-D key_padding_mask"
    elif form == "causal":
        assert inputs[5] and not inputs[4], "a non-padding mask goes in as attention_bias"
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["eager", "sdpa"])
def test_packed_attention_form(form):
    res = apply_pass(block(form), attention, info={"attention_op": "Attention"})
    assert res.count == 1 and res.ops["com.microsoft::Attention"] == 1 and res.ops["MatMul"] == 0
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_tensorrt_target_rebuilds_standard_attention(form):
    res = apply_pass(block(form), attention_standard, target="tensorrt")
    assert res.count == 1, res.misses
    assert all(n.domain in ("", "ai.onnx") for n in res.after.graph.node)
    ops = res.ops
    assert ops["Softmax"] == 1 and ops["MatMul"] == 5 and ops["IsNaN"] == 0
    assert ops["Transpose"] == 4 and ops["Mul"] == 1  # Q, K^T, V, context; one scale on the scores
    onnx.checker.check_model(res.after, full_check=True)
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-5)


def test_tensorrt_key_padding_mask_is_one_shared_finite_mask():
    res = apply_pass(block("sdpa"), attention_standard, target="tensorrt")
    consts = [onnx.numpy_helper.to_array(i) for i in res.after.graph.initializer]
    assert not any(np.isinf(c).any() for c in consts if c.dtype.kind == "f"), "-inf masks are replaced by -10000 (exact in FP16)"
    assert sum(n.op_type == "Where" for n in res.after.graph.node) == 1


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(value_scale=2.0), "value side is scaled"),
        (dict(k_interleaved=True), "numeric check"),  # K heads taken from interleaved columns
        (dict(softmax_axis=2), "Softmax is not over the last axis"),
    ],
)
@pytest.mark.parametrize("module", [attention, attention_standard])
def test_not_attention_is_not_fused_and_says_why(kwargs, reason, module):
    res = apply_pass(block("eager", **kwargs), module)
    assert res.count == 0
    assert res.ops["Softmax"] == 1 and res.ops["com.microsoft::MultiHeadAttention"] == 0
    assert any(reason in r for r in res.misses), res.misses


def test_a_graph_ort_cannot_run_is_left_alone_with_the_reason():
    m = block("eager")
    m.graph.node.append(helper.make_node("Frobnicate", ["x"], ["extra"], domain="org.example"))
    m.graph.output.append(helper.make_empty_tensor_value_info("extra"))
    m.opset_import.append(helper.make_opsetid("org.example", 1))
    import onnx_graphsurgeon as gs

    from bertopt.passes.common import PassContext, probe_feeds

    graph = gs.import_onnx(m)
    ctx = PassContext(target="onnxruntime", feeds=probe_feeds(graph), current="attention")
    assert attention.run(graph, ctx) == 0
    assert any(r.startswith("probe run failed") for r in ctx.misses["attention"]), ctx.misses


def test_static_batch_of_one_still_proves_the_key_padding_mask():
    m = block("eager")
    for vi in m.graph.input:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    res = apply_pass(m, attention)
    assert res.count == 1
    mha = next(n for n in res.after.graph.node if n.op_type == "MultiHeadAttention")
    assert len(mha.input) > 4 and mha.input[4], "the padding mask was recognised as a key-padding mask"
    feeds = {"x": FEEDS["x"][1:], "attention_mask": MASK[1:]}
    np.testing.assert_allclose(*res.compare(feeds), rtol=1e-4, atol=1e-5)


def test_qkv_bias_split_and_merge_are_inverse_and_exact(tmp_path):
    """MultiHeadAttention's bias input <-> an Add on each of Q/K/V: same numbers both ways, and merge
    leaves alone an Add with another reader."""
    import onnx
    from onnx import helper as h

    from bertopt.passes.qkv_bias import merge_qkv_bias, split_qkv_bias
    from bertopt.passes.testing import make_model

    rng = np.random.default_rng(3)
    F = np.float32
    D = 8
    inits = {f"w{p}": rng.standard_normal((D, D)).astype(F) for p in "qkv"} | {f"b{p}": rng.standard_normal(D).astype(F) for p in "qkv"}
    nodes = []
    for p in "qkv":
        nodes += [h.make_node("MatMul", ["x", f"w{p}"], [f"m{p}"]), h.make_node("Add", [f"m{p}", f"b{p}"], [p])]
    nodes.append(h.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=2))
    model = make_model(nodes, {"x": (F, ["B", "S", D])}, ["y"], inits)
    x = {"x": rng.standard_normal((2, 5, D)).astype(F)}
    ref = session(model).run(None, x)[0]
    merged, n = merge_qkv_bias(onnx.ModelProto.FromString(model.SerializeToString()))
    assert n == 1 and [nd.op_type for nd in merged.graph.node].count("Add") == 0
    np.testing.assert_allclose(session(merged).run(None, x)[0], ref, atol=1e-5)
    split, n = split_qkv_bias(merged)
    assert n == 1 and [nd.op_type for nd in split.graph.node].count("Add") == 3
    np.testing.assert_allclose(session(split).run(None, x)[0], ref, atol=1e-5)
    # an Add read by something else too stays where it is
    model.graph.output.append(h.make_tensor_value_info("k", onnx.TensorProto.FLOAT, None))
    _, n = merge_qkv_bias(model)
    assert n == 0
