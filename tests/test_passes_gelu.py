"""gelu and bias_gelu passes on hand-built graphs (positive and negative), checked on ORT with its optimizations off."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from bertopt.passes import bias_gelu, gelu
from bertopt.passes.testing import apply_pass, make_model

H = 16
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, H)).astype(np.float32)
B = RNG.standard_normal(H).astype(np.float32)
FEEDS = {"x": (RNG.standard_normal((2, 5, 8)) * 2).astype(np.float32)}
F = np.float32


def _c(v):
    return np.array(v, dtype=F)


def erf_model(form: str, sqrt2=math.sqrt(2.0), half=0.5, one=1.0):
    """MatMul + bias Add, then GELU written in one of the associations exporters use."""
    n = helper.make_node
    head = [n("MatMul", ["x", "W"], ["mm"]), n("Add", ["mm", "B"], ["h"])]
    if form == "legacy":  # (h * (1 + erf(h / sqrt2))) * 0.5
        body = [n("Div", ["h", "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]), n("Mul", ["h", "p"], ["m"]), n("Mul", ["m", "half"], ["y"])]
    elif form == "dynamo":  # h * ((1 + erf(h * 1/sqrt2)) * 0.5)
        body = [n("Mul", ["h", "rsqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]), n("Mul", ["half", "p"], ["m"]), n("Mul", ["h", "m"], ["y"])]
    else:  # (h * 0.5) * (1 + erf(h / sqrt2))
        body = [n("Mul", ["h", "half"], ["hh"]), n("Div", ["h", "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["one", "e"], ["p"]), n("Mul", ["hh", "p"], ["y"])]
    inits = {"W": W, "B": B, "sqrt2": _c(sqrt2), "rsqrt2": _c(1 / sqrt2), "half": _c(half), "one": _c(one)}
    return make_model(head + body, {"x": (F, ["b", "s", 8])}, ["y"], inits)


def tanh_model(cube: str = "pow", coef=0.044715):
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W"], ["mm"]), n("Add", ["mm", "B"], ["h"])]
    if cube == "pow":
        nodes += [n("Pow", ["h", "three"], ["c"])]
    else:
        nodes += [n("Mul", ["h", "h"], ["sq"]), n("Mul", ["sq", "h"], ["c"])]
    nodes += [
        n("Mul", ["c", "coef"], ["cc"]), n("Add", ["h", "cc"], ["inner"]), n("Mul", ["inner", "k"], ["arg"]),
        n("Tanh", ["arg"], ["t"]), n("Add", ["t", "one"], ["p"]), n("Mul", ["h", "half"], ["hh"]), n("Mul", ["hh", "p"], ["y"]),
    ]
    inits = {"W": W, "B": B, "three": _c(3.0), "coef": _c(coef), "k": _c(math.sqrt(2 / math.pi)), "one": _c(1.0), "half": _c(0.5)}
    return make_model(nodes, {"x": (F, ["b", "s", 8])}, ["y"], inits)


@pytest.mark.parametrize("form", ["legacy", "dynamo", "half_first"])
def test_erf_gelu_fuses_in_every_association(form):
    res = apply_pass(erf_model(form), gelu)
    assert res.count == 1
    assert res.ops["com.microsoft::Gelu"] == 1 and res.ops["Erf"] == 0
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_tanh_gelu_becomes_fastgelu(cube):
    res = apply_pass(tanh_model(cube), gelu)
    assert res.count == 1 and res.ops["com.microsoft::FastGelu"] == 1 and res.ops["Tanh"] == 0
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "model, reason",
    [
        (erf_model("legacy", half=0.6), "not multiplied by 0.5"),  # not GELU: wrong product constant
        (erf_model("legacy", sqrt2=1.5), "numeric check"),  # erf(x / 1.5): looks right, is not GELU
        (tanh_model(coef=0.05), "numeric check"),  # a different cubic
    ],
)
def test_lookalikes_are_not_fused_and_say_why(model, reason):
    res = apply_pass(model, gelu)
    assert res.count == 0
    assert res.ops["com.microsoft::Gelu"] == 0 and res.ops["com.microsoft::FastGelu"] == 0
    assert any(reason in r for r in res.misses), res.misses


def test_intermediate_used_elsewhere_is_not_fused():
    m = erf_model("legacy")
    m.graph.output.append(helper.make_empty_tensor_value_info("e"))  # erf output is also a model output
    res = apply_pass(m, gelu)
    assert res.count == 0 and res.ops["Erf"] == 1


def test_tensorrt_target_uses_standard_gelu_only_where_the_opset_has_it():
    res17 = apply_pass(erf_model("legacy"), gelu, target="tensorrt")
    assert res17.count == 0 and res17.ops["Erf"] == 1
    assert any("opset 17 < 20" in r for r in res17.misses)

    m20 = erf_model("legacy")
    m20.opset_import[0].version = 20
    res20 = apply_pass(m20, gelu, target="tensorrt")
    assert res20.count == 1 and res20.ops["Gelu"] == 1
    assert not any(n.domain for n in res20.after.graph.node)
    np.testing.assert_allclose(*res20.compare(FEEDS), rtol=1e-5, atol=1e-5)


def test_bias_gelu_takes_the_bias_add_but_leaves_the_matmul():
    fused = apply_pass(erf_model("dynamo"), gelu).after
    res = apply_pass(fused, bias_gelu)
    assert res.count == 1
    assert res.ops["com.microsoft::BiasGelu"] == 1 and res.ops["Add"] == 0 and res.ops["MatMul"] == 1
    np.testing.assert_allclose(*res.compare(FEEDS), rtol=1e-5, atol=1e-5)

    fast = apply_pass(apply_pass(tanh_model(), gelu).after, bias_gelu)
    assert fast.count == 1 and fast.ops["com.microsoft::FastGelu"] == 1 and fast.ops["Add"] == 0
    np.testing.assert_allclose(*fast.compare(FEEDS), rtol=1e-4, atol=1e-4)


def test_bias_gelu_needs_a_constant_bias():
    n = helper.make_node
    nodes = [n("Add", ["x", "x2"], ["h"]), n("Gelu", ["h"], ["y"], domain="com.microsoft")]
    m = make_model(nodes, {"x": (F, ["b", 8]), "x2": (F, ["b", 8])}, ["y"])
    res = apply_pass(m, bias_gelu)
    assert res.count == 0 and res.ops["com.microsoft::Gelu"] == 1
    assert any("1-D constant bias" in r for r in res.misses)
