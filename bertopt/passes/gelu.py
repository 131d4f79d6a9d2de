"""GELU, erf form ``0.5*x*(1+erf(x/sqrt(2)))`` and tanh form ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))``.

onnxruntime target: -> ``com.microsoft`` ``Gelu`` (erf) / ``FastGelu`` (tanh); the ``bias_gelu``
pass then folds the bias Add in. tensorrt target: -> the standard ``Gelu`` op where the opset has it
(20+); below that the pattern is left as it is (TensorRT fuses it itself) and the miss says so.

The product side (``0.5``, ``x``, ``1 + erf``) is matched structurally in any association; the
argument side (``x/sqrt(2)`` or the cubic) is checked numerically: the matched region is evaluated
on -6..6 and compared with the exact curve, so every exporter's spelling of the cubic is accepted
and nothing that merely looks like GELU is fused.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertopt.passes.common import (
    MS_DOMAIN,
    PassContext,
    const_value,
    ensure_ms_domain,
    eval_elementwise,
    gelu_exact,
    gelu_tanh,
    opset_of,
    other_input,
    producer,
    scalar_value,
    single_use,
    take_over,
    toposorted,
)

NAME = "gelu"
FAMILY = "gelu"
_ARITH = ("Add", "Sub", "Mul", "Div", "Pow")
_PROBE_X = np.linspace(-6.0, 6.0, 241)


def _only(graph, t, op) -> gs.Node | None:
    if not single_use(graph, t):
        return None
    c = t.outputs[0]
    return c if c.op == op else None


def _product_side(graph, a: gs.Tensor) -> tuple[gs.Tensor, gs.Tensor, list[gs.Node]] | None:
    """From ``1 + erf(...)``: find x and the output of 0.5 * x * a, in any association."""
    m1 = _only(graph, a, "Mul")
    if m1 is None:
        return None
    o1 = other_input(m1, a)
    if o1 is None:
        return None
    c1 = scalar_value(o1)
    if c1 is not None:  # (a * 0.5) * x
        m2 = _only(graph, m1.outputs[0], "Mul")
        x = other_input(m2, m1.outputs[0]) if m2 is not None else None
        if x is None or abs(c1 - 0.5) > 1e-6 or const_value(x) is not None:
            return None
        return x, m2.outputs[0], [m1, m2]
    p = producer(o1)
    if p is not None and p.op == "Mul" and single_use(graph, o1):  # (x * 0.5) * a
        xo, c = (p.inputs[0], scalar_value(p.inputs[1])) if scalar_value(p.inputs[1]) is not None else (p.inputs[1], scalar_value(p.inputs[0]))
        if c is not None and abs(c - 0.5) <= 1e-6 and const_value(xo) is None:
            return xo, m1.outputs[0], [p, m1]
    # (a * x) * 0.5
    m2 = _only(graph, m1.outputs[0], "Mul")
    if m2 is None or scalar_value(other_input(m2, m1.outputs[0])) is None:
        return None
    if abs(scalar_value(other_input(m2, m1.outputs[0])) - 0.5) > 1e-6:
        return None
    return o1, m2.outputs[0], [m1, m2]


def _argument_side(graph, u: gs.Tensor, x: gs.Tensor, limit: int = 12) -> list[gs.Node] | None:
    """Nodes computing ``u`` from ``x`` and scalar constants only (their outputs used only inside)."""
    region: list[gs.Node] = []
    stack = [u]
    seen: set[int] = set()
    while stack:
        t = stack.pop()
        if t is x or const_value(t) is not None or id(t) in seen:
            continue
        seen.add(id(t))
        p = producer(t)
        if p is None or p.op not in _ARITH or len(region) >= limit:
            return None
        region.append(p)
        stack.extend(p.inputs)
    ids = {id(n) for n in region}
    for n in region:  # intermediates must not leak out of the region
        out = n.outputs[0]
        if out is not u and (out in graph.outputs or any(id(c) not in ids for c in out.outputs)):
            return None
    return region


def run(graph: gs.Graph, ctx: PassContext) -> int:
    count = 0
    opset = opset_of(graph)
    for t in [n for n in graph.nodes if n.op in ("Erf", "Tanh")]:
        if not t.outputs:
            continue
        kind = "erf" if t.op == "Erf" else "tanh"
        add1 = _only(graph, t.outputs[0], "Add")
        if add1 is None or not (abs((scalar_value(other_input(add1, t.outputs[0])) or 0) - 1.0) <= 1e-6):
            ctx.miss(f"{t.op} output is not followed by + 1 alone")
            continue
        prod = _product_side(graph, add1.outputs[0])
        if prod is None:
            ctx.miss(f"1 + {t.op}(...) is not multiplied by 0.5 and x")
            continue
        x, y, muls = prod
        arg = _argument_side(graph, t.inputs[0], x)
        if arg is None:
            ctx.miss(f"the {t.op} argument is not an elementwise function of x and scalar constants")
            continue
        region = toposorted(arg + [t, add1] + muls)
        got = eval_elementwise(region, x, _PROBE_X, y)
        want = gelu_exact(_PROBE_X) if kind == "erf" else gelu_tanh(_PROBE_X)
        if got is None or not np.allclose(got, want, atol=1e-5, rtol=1e-5):
            ctx.miss(f"numeric check: the {t.op} region does not compute GELU ({kind} form)")
            continue
        name = (t.name or "gelu") + "_Gelu"
        if ctx.target == "onnxruntime":
            op = "Gelu" if kind == "erf" else "FastGelu"
            node = gs.Node(op, name=name, domain=MS_DOMAIN, inputs=[x])
            ensure_ms_domain(graph)
        elif opset >= 20:
            node = gs.Node("Gelu", name=name, attrs={"approximate": "none" if kind == "erf" else "tanh"}, inputs=[x])
        else:
            ctx.miss(f"opset {opset} < 20 has no standard Gelu: left as {t.op} arithmetic (TensorRT fuses it itself)")
            continue
        take_over(y, node)
        graph.nodes.append(node)
        count += 1
    return count
