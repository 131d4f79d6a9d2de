"""LayerNorm written out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] -> LayerNormalization.

Opset 17's ``LayerNormalization`` is what TensorRT keeps in FP32 (the decomposed form overflows in
FP16: the variance of BERT's residual stream exceeds 65504) and what ORT's SkipLayerNormalization
fusion starts from. Exporters at opset >= 17 already emit it; older exports and hand-made ONNX
files do not.
"""

from __future__ import annotations

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


def run(graph: gs.Graph, ctx: PassContext) -> int:
    if opset_of(graph) < 17:
        if any(n.op == "ReduceMean" for n in graph.nodes):
            ctx.miss(f"opset {opset_of(graph)} < 17 has no LayerNormalization (the opset upgrade failed)")
        return 0
    count = 0
    for m1 in [n for n in graph.nodes if n.op == "ReduceMean"]:
        if not m1.outputs:
            continue
        x, mean = m1.inputs[0], m1.outputs[0]
        subs = [c for c in mean.outputs if c.op == "Sub" and c.inputs[0] is x and c.inputs[1] is mean]
        if len(subs) != 1 or len(mean.outputs) != 1:
            continue  # not the start of a LayerNorm (e.g. mean pooling): not worth a miss
        d = subs[0].outputs[0]
        users = list({id(c): c for c in d.outputs}.values())  # Mul(d, d) lists its node twice
        sq = [c for c in users if (c.op == "Pow" and c.inputs[0] is d and scalar_value(c.inputs[1]) == 2.0) or (c.op == "Mul" and c.inputs[0] is d and c.inputs[1] is d)]
        div = [c for c in users if c.op == "Div" and c.inputs[0] is d]
        if len(sq) != 1 or len(div) != 1 or len(users) != 2 or d in graph.outputs:
            ctx.miss("x - mean(x) is not squared and divided exactly once")
            continue
        m2 = _only(graph, sq[0].outputs[0], ("ReduceMean",))
        if m2 is None:
            ctx.miss("(x - mean)^2 does not feed one ReduceMean")
            continue
        ax1, ax2 = _axes(m1), _axes(m2)
        rank = len(x.shape) if x.shape is not None else None
        if ax1 is None or ax1 != ax2 or len(ax1) != 1 or not (ax1[0] == -1 or (rank is not None and ax1[0] == rank - 1)):
            ctx.miss("the two ReduceMeans do not both reduce over the last axis alone")
            continue
        if int(m1.attrs.get("keepdims", 1)) != 1 or int(m2.attrs.get("keepdims", 1)) != 1:
            ctx.miss("ReduceMean without keepdims")
            continue
        add_eps = _only(graph, m2.outputs[0], ("Add",))
        eps = scalar_value(other_input(add_eps, m2.outputs[0])) if add_eps is not None else None
        if eps is None or not (0 <= eps < 1e-2):
            ctx.miss("variance + epsilon: epsilon is not a small scalar constant")
            continue
        sqrt = _only(graph, add_eps.outputs[0], ("Sqrt",))
        if sqrt is None or div[0].inputs[1] is not sqrt.outputs[0] or not single_use(graph, sqrt.outputs[0]):
            ctx.miss("(x - mean) is not divided by sqrt(var + eps)")
            continue
        y = div[0].outputs[0]
        gamma = beta = None
        tail = y
        mul = _only(graph, tail, ("Mul",))
        if mul is not None:
            g = const_value(other_input(mul, tail))
            if g is not None and g.ndim <= 1:
                gamma, tail = g, mul.outputs[0]
        add = _only(graph, tail, ("Add",)) if gamma is not None else None
        if add is not None:
            b = const_value(other_input(add, tail))
            if b is not None and b.ndim <= 1:
                beta, tail = b, add.outputs[0]
        hidden = _hidden(x, gamma, beta)
        if hidden is None:
            ctx.miss("hidden size unknown (no shape for x and no gamma/beta)")
            continue
        dtype = np.float32 if x.dtype is None else np.dtype(x.dtype)
        g_arr = np.broadcast_to(gamma if gamma is not None else np.ones(1), (hidden,)).astype(dtype)
        b_arr = np.broadcast_to(beta if beta is not None else np.zeros(1), (hidden,)).astype(dtype)
        name = (m1.name or "ln") + "_LayerNormalization"
        ln = gs.Node(
            "LayerNormalization",
            name=name,
            attrs={"axis": -1, "epsilon": float(eps)},
            inputs=[x, gs.Constant(name + "_gamma", g_arr), gs.Constant(name + "_beta", b_arr)],
        )
        take_over(tail, ln)
        graph.nodes.append(ln)
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
