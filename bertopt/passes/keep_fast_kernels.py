"""Keep ONNX Runtime's session-time fusions from swapping fast CPU kernels for slower fused ones.

onnxruntime target, ``ort_fusions="measured"`` (the default). Measured on this project's CPU with
ONNX Runtime 1.31 (``benchmarks/fuse_vs_ort_optimizer.py --kernels``, one thread, FP32, [batch, 128, hidden]):

- ``SkipLayerNormalization`` (a scalar loop) is ~5x slower than ``Add`` + ``LayerNormalization``
  (MLAS): 0.25 ms vs 0.05 ms per call at batch 1, hidden 384;
- ``BiasGelu`` is 1.1-1.5x slower than ``Add`` + ``Gelu``;
- ``EmbedLayerNormalization`` is 1.4-1.7x slower than its Gathers, Adds and ``LayerNormalization``.

So the pipeline does not emit them by default (``ort_fusions="all"`` does). But ORT's own session
optimizer (``ORT_ENABLE_ALL``, and the offline optimization ``bertopt build`` runs) performs the
first two anyway whenever it sees ``Add(3-D, 3-D) -> LayerNormalization`` with known shapes, or
``Add(x, 1-D bias) -> Gelu``; on the dynamo export that is part of what makes the unfused graph
slower than the legacy one. This pass writes the same arithmetic in forms those
matchers do not take, so the fast kernels stay:

- a residual ``Add`` feeding a ``LayerNormalization`` becomes ``Sum`` (same broadcasting, same speed);
- the 1-D bias of an ``Add`` feeding a ``Gelu``/``FastGelu`` becomes ``[1, H]``.

The GEMMs are untouched (still ``MatMul`` + ``Add``, for Q/DQ). Fires = Adds rewritten.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from bertopt.passes.common import MS_DOMAIN, PassContext, const_value, is_op, producer

NAME = "keep_fast_kernels"
FAMILY = "runtime"


def run(graph: gs.Graph, ctx: PassContext) -> int:
    count = 0
    for ln in [n for n in graph.nodes if is_op(n, "LayerNormalization")]:
        add = producer(ln.inputs[0])
        if add is not None and add.op == "Add" and all(const_value(t) is None for t in add.inputs):
            add.op = "Sum"
            count += 1
    for g in [n for n in graph.nodes if is_op(n, ("Gelu", "FastGelu"), MS_DOMAIN)]:
        add = producer(g.inputs[0])
        if add is None or add.op != "Add":
            continue
        for i, t in enumerate(add.inputs):
            v = const_value(t)
            if v is not None and v.ndim == 1:
                add.inputs[i] = gs.Constant(f"{t.name}_2d", v.reshape(1, -1))
                count += 1
                break
    if count == 0:
        ctx.miss("no residual Add before a LayerNormalization, no 1-D bias Add before a Gelu")
    return count
