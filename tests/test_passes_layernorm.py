"""layernorm, skip_layernorm and embed_layernorm passes on hand-built graphs (ORT optimizations off)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bertopt.passes import embed_layernorm, layernorm, skip_layernorm
from bertopt.passes.testing import apply_pass, make_model

F = np.float32
H = 16
RNG = np.random.default_rng(1)
GAMMA = RNG.standard_normal(H).astype(F)
BETA = RNG.standard_normal(H).astype(F)


def decomposed_ln(opset: int = 17, axis: int = -1, eps=1e-12, sq: str = "pow", affine: bool = True):
    """The pre-opset-17 LayerNorm: ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add]."""
    n = helper.make_node
    inits = {"two": np.array(2.0, F), "eps": np.array(eps, F), "gamma": GAMMA, "beta": BETA}
    if opset >= 18:
        inits["axes"] = np.array([axis], np.int64)
        rm = lambda i, o: n("ReduceMean", [i, "axes"], [o])  # noqa: E731
    else:
        rm = lambda i, o: n("ReduceMean", [i], [o], axes=[axis])  # noqa: E731
    nodes = [rm("x", "mu"), n("Sub", ["x", "mu"], ["d"])]
    nodes += [n("Pow", ["d", "two"], ["d2"])] if sq == "pow" else [n("Mul", ["d", "d"], ["d2"])]
    nodes += [rm("d2", "var"), n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]), n("Div", ["d", "sd"], ["nrm"])]
    if affine:
        nodes += [n("Mul", ["nrm", "gamma"], ["sc"]), n("Add", ["sc", "beta"], ["y"])]
    else:
        nodes += [n("Identity", ["nrm"], ["y"])]
    return make_model(nodes, {"x": (F, ["b", "s", H])}, ["y"], inits, opset=opset)


FEEDS = {"x": (RNG.standard_normal((2, 5, H)) * 3 + 1).astype(F)}


@pytest.mark.parametrize("opset, sq", [(17, "pow"), (18, "pow"), (17, "mul")])
def test_decomposed_layernorm_becomes_layernormalization(opset, sq):
    res = apply_pass(decomposed_ln(opset=opset, sq=sq), layernorm)
    assert res.count == 1
    assert res.ops["LayerNormalization"] == 1 and res.ops["ReduceMean"] == 0 and res.ops["Sqrt"] == 0
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-4)


def test_layernorm_without_affine_gets_unit_gamma():
    res = apply_pass(decomposed_ln(affine=False), layernorm)
    assert res.count == 1 and res.ops["LayerNormalization"] == 1
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-4)


def test_layernorm_over_another_axis_is_left_alone():
    res = apply_pass(decomposed_ln(axis=1), layernorm)
    assert res.count == 0 and res.ops["ReduceMean"] == 2
    assert any("last axis" in r for r in res.misses)


def test_layernorm_with_large_epsilon_is_left_alone():
    res = apply_pass(decomposed_ln(eps=0.5), layernorm)
    assert res.count == 0 and any("epsilon" in r for r in res.misses)


def test_mean_pooling_reducemean_is_not_a_candidate():
    n = helper.make_node
    m = make_model([n("ReduceMean", ["x"], ["y"], axes=[1])], {"x": (F, ["b", "s", H])}, ["y"])
    res = apply_pass(m, layernorm)
    assert res.count == 0 and not res.misses


# ------------------------------------------------------------------------------ skip layernorm
def residual_ln(skip_const: bool = False, sum_used: bool = False):
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W"], ["mm"]), n("Add", ["mm", "bias"], ["dense"])]
    nodes += [n("Add", ["dense", "C" if skip_const else "x"], ["s"]), n("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    outs = ["y"] + (["s"] if sum_used else [])
    inits = {"W": RNG.standard_normal((H, H)).astype(F), "bias": BETA, "gamma": GAMMA, "beta": BETA, "C": RNG.standard_normal((1, 5, H)).astype(F)}
    return make_model(nodes, {"x": (F, ["b", "s", H])}, outs, inits)


def test_residual_add_and_layernorm_become_skiplayernorm_without_the_dense_bias():
    res = apply_pass(residual_ln(), skip_layernorm)
    assert res.count == 1
    assert res.ops["com.microsoft::SkipLayerNormalization"] == 1 and res.ops["LayerNormalization"] == 0
    assert res.ops["MatMul"] == 1 and res.ops["Add"] == 1  # the GEMM bias stays with its MatMul
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-4)


def test_skiplayernorm_keeps_a_residual_sum_that_is_used_elsewhere():
    res = apply_pass(residual_ln(sum_used=True), skip_layernorm)
    assert res.count == 1 and res.ops["com.microsoft::SkipLayerNormalization"] == 1
    assert [o.name for o in res.after.graph.output] == ["y", "s"]
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-4)


def test_adding_a_constant_is_not_a_residual():
    res = apply_pass(residual_ln(skip_const=True), skip_layernorm)
    assert res.count == 0 and res.ops["LayerNormalization"] == 1
    assert any("constant" in r for r in res.misses)


# ------------------------------------------------------------------------------ embedding
VOCAB, MAXPOS = 50, 12


def embedding(positions: str = "slice", segments: bool = True):
    """word + token type + position embedding Gathers, summed, then LayerNormalization."""
    n = helper.make_node
    inits = {
        "word": RNG.standard_normal((VOCAB, H)).astype(F), "pos": RNG.standard_normal((MAXPOS, H)).astype(F),
        "seg": RNG.standard_normal((2, H)).astype(F), "gamma": GAMMA, "beta": BETA,
        "pos_ids": np.arange(MAXPOS, dtype=np.int64)[None, :], "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
    }
    nodes = [n("Gather", ["word", "input_ids"], ["we"])]
    if positions == "slice":  # exporters: position_ids[:, :seq] of a constant arange buffer
        nodes += [n("Shape", ["input_ids"], ["shp"], start=1, end=2), n("Slice", ["pos_ids", "zero", "shp", "one"], ["pid"])]
    else:  # RoBERTa-style: positions derived from the ids (cumsum of the non-padding mask)
        nodes += [n("Cast", ["input_ids"], ["ne"], to=1), n("Sign", ["ne"], ["sg"]), n("CumSum", ["sg", "one_s"], ["cs"]), n("Cast", ["cs"], ["pid"], to=7)]
        inits["one_s"] = np.array(1, np.int64)
    nodes += [n("Gather", ["pos", "pid"], ["pe"])]
    if segments:
        nodes += [n("Gather", ["seg", "token_type_ids"], ["te"]), n("Add", ["we", "te"], ["wt"]), n("Add", ["wt", "pe"], ["e"])]
    else:
        nodes += [n("Add", ["we", "pe"], ["e"])]
    nodes += [n("LayerNormalization", ["e", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inputs = {"input_ids": (np.int64, ["b", "s"])}
    if segments:
        inputs["token_type_ids"] = (np.int64, ["b", "s"])
    return make_model(nodes, inputs, ["y"], inits)


EMB_FEEDS = {"input_ids": RNG.integers(1, VOCAB, (2, 9)), "token_type_ids": np.array([[0] * 4 + [1] * 5] * 2)}


@pytest.mark.parametrize("segments", [True, False])
def test_embedding_sum_and_layernorm_become_embedlayernorm(segments):
    res = apply_pass(embedding(segments=segments), embed_layernorm)
    assert res.count == 1
    assert res.ops["com.microsoft::EmbedLayerNormalization"] == 1 and res.ops["Gather"] == 0 and res.ops["LayerNormalization"] == 0
    np.testing.assert_allclose(*res.compare(EMB_FEEDS), rtol=1e-4, atol=1e-4)


def test_positions_derived_from_the_ids_are_not_fused():
    res = apply_pass(embedding(positions="cumsum"), embed_layernorm)
    assert res.count == 0 and res.ops["LayerNormalization"] == 1
    assert any("position ids" in r for r in res.misses)


def test_a_residual_layernorm_is_not_an_embedding_candidate():
    res = apply_pass(residual_ln(), embed_layernorm)
    assert res.count == 0 and not res.misses
