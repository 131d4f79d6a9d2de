"""LayerNorm written out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] -> LayerNormalization.

Opset 17's ``LayerNormalization`` is what TensorRT keeps in FP32 (the decomposed form overflows in
FP16: the variance of BERT's residual stream exceeds 65504) and what ORT's SkipLayerNormalization
fusion starts from. Exporters at opset >= 17 already emit it; older exports and hand-made ONNX
files do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from bertopt.passes.common import PassContext, const_value, opset_of, other_input, scalar_value, single_use, take_over

NAME = "layernorm"
FAMILY = "layernorm"


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1:
        v = const_value(node.inputs[1])
        return None if v is None else [int(a) for a in v.reshape(-1)]
    return None


def _only(graph, t, ops) -> gs.Node | None:
    if not single_use(graph, t):
        return None
    c = t.outputs[0]
    return c if c.op in ops else None


@dataclass
class Candidate:
    """A ReduceMean that starts a written-out LayerNorm, and what :func:`check` finds after it."""

    m1: gs.Node
    x: gs.Tensor
    d: gs.Tensor  # x - mean(x)
    eps: float = 0.0
    div: gs.Node | None = None
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    tail: gs.Tensor | None = None  # the output the LayerNormalization takes over
    hidden: int = 0


def match(graph: gs.Graph, m1: gs.Node) -> Candidate | None:
    """``m1`` = ReduceMean(x) used once, by Sub(x, mean): the start of a LayerNorm (else not worth a miss: mean pooling)."""
    if m1.op != "ReduceMean" or not m1.outputs:
        return None
    x, mean = m1.inputs[0], m1.outputs[0]
    subs = [c for c in mean.outputs if c.op == "Sub" and c.inputs[0] is x and c.inputs[1] is mean]
    if len(subs) != 1 or len(mean.outputs) != 1:
        return None
    return Candidate(m1, x, subs[0].outputs[0])


def check(graph: gs.Graph, c: Candidate) -> str | None:
    """The rest of the pattern and its guards, filling ``c``; the reason it is not a LayerNorm, or None."""
    users = list({id(n): n for n in c.d.outputs}.values())  # Mul(d, d) lists its node twice
    sq = [n for n in users if (n.op == "Pow" and n.inputs[0] is c.d and scalar_value(n.inputs[1]) == 2.0) or (n.op == "Mul" and n.inputs[0] is c.d and n.inputs[1] is c.d)]
    div = [n for n in users if n.op == "Div" and n.inputs[0] is c.d]
    if len(sq) != 1 or len(div) != 1 or len(users) != 2 or c.d in graph.outputs:
        return "x - mean(x) is not squared and divided exactly once"
    m2 = _only(graph, sq[0].outputs[0], ("ReduceMean",))
    if m2 is None:
        return "(x - mean)^2 does not feed one ReduceMean"
    ax1, ax2 = _axes(c.m1), _axes(m2)
    rank = len(c.x.shape) if c.x.shape is not None else None
    if ax1 is None or ax1 != ax2 or len(ax1) != 1 or not (ax1[0] == -1 or (rank is not None and ax1[0] == rank - 1)):
        return "the two ReduceMeans do not both reduce over the last axis alone"
    if int(c.m1.attrs.get("keepdims", 1)) != 1 or int(m2.attrs.get("keepdims", 1)) != 1:
        return "ReduceMean without keepdims"
    add_eps = _only(graph, m2.outputs[0], ("Add",))
    eps = scalar_value(other_input(add_eps, m2.outputs[0])) if add_eps is not None else None
    if eps is None or not (0 <= eps < 1e-2):
        return "variance + epsilon: epsilon is not a small scalar constant"
    sqrt = _only(graph, add_eps.outputs[0], ("Sqrt",))
    if sqrt is None or div[0].inputs[1] is not sqrt.outputs[0] or not single_use(graph, sqrt.outputs[0]):
        return "(x - mean) is not divided by sqrt(var + eps)"
    c.eps, c.div = eps, div[0]
    _affine(graph, c)
    hidden = _hidden(c.x, c.gamma, c.beta)
    if hidden is None:
        return "hidden size unknown (no shape for x and no gamma/beta)"
    c.hidden = hidden
    return None


def _affine(graph: gs.Graph, c: Candidate) -> None:
    """The optional Mul(gamma) and Add(beta) after the division (1-D constants only)."""
    tail = c.div.outputs[0]
    mul = _only(graph, tail, ("Mul",))
    if mul is not None:
        g = const_value(other_input(mul, tail))
        if g is not None and g.ndim <= 1:
            c.gamma, tail = g, mul.outputs[0]
    add = _only(graph, tail, ("Add",)) if c.gamma is not None else None
    if add is not None:
        b = const_value(other_input(add, tail))
        if b is not None and b.ndim <= 1:
            c.beta, tail = b, add.outputs[0]
    c.tail = tail


def rewrite(graph: gs.Graph, c: Candidate) -> None:
    """One LayerNormalization(x, gamma, beta) takes over the pattern's last output."""
    dtype = np.float32 if c.x.dtype is None else np.dtype(c.x.dtype)
    g_arr = np.broadcast_to(c.gamma if c.gamma is not None else np.ones(1), (c.hidden,)).astype(dtype)
    b_arr = np.broadcast_to(c.beta if c.beta is not None else np.zeros(1), (c.hidden,)).astype(dtype)
    name = (c.m1.name or "ln") + "_LayerNormalization"
    ln = gs.Node(
        "LayerNormalization",
        name=name,
        attrs={"axis": -1, "epsilon": float(c.eps)},
        inputs=[c.x, gs.Constant(name + "_gamma", g_arr), gs.Constant(name + "_beta", b_arr)],
    )
    take_over(c.tail, ln)
    graph.nodes.append(ln)


def run(graph: gs.Graph, ctx: PassContext) -> int:
    if opset_of(graph) < 17:
        if any(n.op == "ReduceMean" for n in graph.nodes):
            ctx.miss(f"opset {opset_of(graph)} < 17 has no LayerNormalization (the opset upgrade failed)")
        return 0
    count = 0
    for m1 in [n for n in graph.nodes if n.op == "ReduceMean"]:
        c = match(graph, m1)
        if c is None:
            continue
        reason = check(graph, c)
        if reason:
            ctx.miss(reason)
            continue
        rewrite(graph, c)
        count += 1
    if count == 0 and not ctx.misses.get(NAME):
        n = sum(1 for n in graph.nodes if n.op == "LayerNormalization")
        if n:
            ctx.miss(f"none written out: the model already has {n} LayerNormalization ops")
    return count


def _hidden(x: gs.Tensor, gamma, beta) -> int | None:
    for v in (gamma, beta):
        if v is not None and v.size > 1:
            return int(v.size)
    if x.shape is not None and len(x.shape) and isinstance(x.shape[-1], int) and x.shape[-1] > 0:
        return int(x.shape[-1])
    return None
