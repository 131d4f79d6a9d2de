"""Bias Add + Gelu -> ``com.microsoft`` ``BiasGelu``; bias Add + FastGelu -> ``FastGelu`` with its bias input.

Only the bias Add is folded: the MatMul before it stays a standard MatMul so that ``bertopt
calibrate`` can put Q/DQ on the GEMM's inputs. onnxruntime target only.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from bertopt.passes.common import MS_DOMAIN, PassContext, const_value, is_op, other_input, producer, single_use

NAME = "bias_gelu"
FAMILY = "gelu"


def run(graph: gs.Graph, ctx: PassContext) -> int:
    count = 0
    for g in [n for n in graph.nodes if is_op(n, ("Gelu", "FastGelu"), MS_DOMAIN)]:
        if len(g.inputs) != 1:
            continue  # FastGelu that already has its bias
        x = g.inputs[0]
        add = producer(x)
        if add is None or add.op != "Add":
            ctx.miss(f"{g.op} input is not produced by an Add")
            continue
        if not single_use(graph, x):
            ctx.miss(f"the bias Add before {g.op} has other consumers")
            continue
        bias = next((t for t in add.inputs if const_value(t) is not None), None)
        data = other_input(add, bias) if bias is not None else None
        bv = const_value(bias)
        if bias is None or data is None or const_value(data) is not None or bv.ndim != 1 or bv.size < 2:
            ctx.miss(f"the Add before {g.op} is not data + a 1-D constant bias")
            continue
        if data.shape is not None and len(data.shape) and isinstance(data.shape[-1], int) and data.shape[-1] != bv.size:
            ctx.miss("bias length differs from the last dim")
            continue
        g.inputs = [data, bias]
        if g.op == "Gelu":
            g.op = "BiasGelu"
        add.outputs.clear()
        count += 1
    return count
