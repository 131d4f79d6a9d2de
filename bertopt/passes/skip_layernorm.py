"""Residual Add + LayerNormalization -> ``com.microsoft`` ``SkipLayerNormalization`` (onnxruntime target).

Only the residual Add is folded, not the dense layer's bias Add before it: that bias stays with its
MatMul (a standard GEMM for ``bertopt calibrate``). When the residual sum is used elsewhere too,
the op's fourth output (input + skip) carries it.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from bertopt.passes.common import MS_DOMAIN, PassContext, const_value, ensure_ms_domain, is_op, producer

NAME = "skip_layernorm"
FAMILY = "layernorm"


def run(graph: gs.Graph, ctx: PassContext) -> int:
    cands = []
    for ln in [n for n in graph.nodes if is_op(n, "LayerNormalization")]:
        if not ln.outputs or len(ln.outputs) > 1 and any(len(o.outputs) for o in ln.outputs[1:]):
            ctx.miss("LayerNormalization's mean/inv_std outputs are used")
            continue
        if int(ln.attrs.get("axis", -1)) != -1:
            rank = len(ln.inputs[0].shape) if ln.inputs[0].shape is not None else None
            if rank is None or int(ln.attrs["axis"]) != rank - 1:
                ctx.miss("LayerNormalization is not over the last axis")
                continue
        add = producer(ln.inputs[0])
        if add is None or add.op != "Add":
            ctx.miss("LayerNormalization input is not an Add (no residual)")
            continue
        a, b = add.inputs
        if const_value(a) is not None or const_value(b) is not None:
            ctx.miss("the Add before LayerNormalization adds a constant (a bias, not a residual)")
            continue
        cands.append((ln, add))
    if not cands:
        return 0
    vals = ctx.values(graph, [t for _, add in cands for t in add.inputs])
    if vals is None:
        return 0
    count = 0
    for ln, add in cands:
        a, b = add.inputs
        sa, sb = vals[a.name].shape, vals[b.name].shape
        if sa != sb or len(sa) != 3:
            ctx.miss(f"residual Add operands have shapes {list(sa)} and {list(sb)}, not the same [batch, seq, hidden]")
            continue
        s = add.outputs[0]
        y = ln.outputs[0]
        inputs = [a, b, ln.inputs[1]] + ([ln.inputs[2]] if len(ln.inputs) > 2 else [])
        outs = [y]
        if len(s.outputs) > 1 or s in graph.outputs:
            outs = [y, gs.Variable.empty(), gs.Variable.empty(), s]
        node = gs.Node("SkipLayerNormalization", name=(ln.name or "ln") + "_Skip", domain=MS_DOMAIN, attrs={"epsilon": float(ln.attrs.get("epsilon", 1e-5))}, inputs=inputs)
        ln.outputs.clear()
        if len(outs) > 1:
            add.outputs.clear()
        node.outputs = outs
        graph.nodes.append(node)
        count += 1
    if count:
        ensure_ms_domain(graph)
    return count
