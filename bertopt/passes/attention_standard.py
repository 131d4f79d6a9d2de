"""Multi-head attention -> the canonical standard-op form TensorRT's MHA fusion recognises (tensorrt target).

Every matched block (see ``attention_match``) is rebuilt as::

    Q = Transpose(Reshape(q, [0, 0, N, d]), 0213)      K^T = Transpose(Reshape(k, [0, 0, N, d]), 0231)
    V = Transpose(Reshape(v, [0, 0, N, dv]), 0213)
    out = Reshape(Transpose(MatMul(Softmax(Add(Mul(MatMul(Q, K^T), scale), mask), -1), V), 0213), [0, 0, N*dv])

which drops what the sdpa and dynamo exports add around it (the K transpose as Reshape/Transpose/
Reshape, the scale split over Q and K, the IsNaN/Where guard after the Softmax) and replaces a
key-padding mask subgraph by one ``Where(bool(mask[:, None, None, :]), 0, -10000)`` shared by all
layers (-10000 is exact in FP16, unlike float32's minimum). Only ai.onnx ops are emitted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertopt.passes.attention_match import candidates, verify
from bertopt.passes.common import PassContext, take_over

NAME = "attention_standard"
FAMILY = "attention"
MASK_VALUE = -10000.0


def run(graph: gs.Graph, ctx: PassContext) -> int:
    matches = verify(graph, ctx, candidates(graph, ctx))
    count = 0
    masks: dict[str, gs.Variable] = {}
    for m in matches:
        base = m.softmax.name or f"attn{count}"
        N, d, dv = m.num_heads, m.head_size, m.v_head_size
        nodes: list[gs.Node] = []

        def op(kind, inputs, attrs=None):
            out = gs.Variable(f"{base}_{kind}_{len(nodes)}", dtype=m.dtype)
            nodes.append(gs.Node(kind, name=f"{base}_{kind}_{len(nodes)}", inputs=inputs, outputs=[out], attrs=attrs or {}))
            return out

        def const(tag, value):
            return gs.Constant(f"{base}_{tag}", np.asarray(value))

        shp = const("split_heads", np.array([0, 0, N, d], dtype=np.int64))
        shp_v = shp if dv == d else const("split_heads_v", np.array([0, 0, N, dv], dtype=np.int64))
        qh = op("Transpose", [op("Reshape", [m.q.out, shp])], {"perm": [0, 2, 1, 3]})
        kt = op("Transpose", [op("Reshape", [m.k.out, shp])], {"perm": [0, 2, 3, 1]})
        vh = op("Transpose", [op("Reshape", [m.v.out, shp_v])], {"perm": [0, 2, 1, 3]})
        scores = op("Mul", [op("MatMul", [qh, kt]), const("scale", np.array(m.scale, dtype=m.dtype))])
        if m.mask_kind == "key_padding":
            scores = op("Add", [scores, _standard_mask(graph, m.mask_input, masks, m.dtype)])
        elif m.mask_kind == "bias":
            scores = op("Add", [scores, m.mask])
        probs = op("Softmax", [scores], {"axis": -1})
        merged = op("Transpose", [op("MatMul", [probs, vh])], {"perm": [0, 2, 1, 3]})
        last = gs.Node("Reshape", name=f"{base}_merge_heads", inputs=[merged, const("merge_heads", np.array([0, 0, N * dv], dtype=np.int64))])
        take_over(m.out, last)
        graph.nodes.extend(nodes + [last])
        count += 1
        ctx.info.setdefault("num_heads", int(N))
        ctx.info.setdefault("hidden_size", int(m.q.weight.shape[1]))
    return count


def _standard_mask(graph: gs.Graph, mask_input: gs.Tensor, cache: dict, dtype: np.dtype) -> gs.Variable:
    """[batch, 1, 1, seq] additive mask: 0 where attention_mask != 0, -10000 elsewhere (built once)."""
    if mask_input.name in cache:
        return cache[mask_input.name]
    name = f"{mask_input.name}_additive"
    unsq = gs.Variable(f"{name}_4d", dtype=mask_input.dtype)
    keep = gs.Variable(f"{name}_bool", dtype=np.bool_)
    out = gs.Variable(name, dtype=dtype)
    graph.nodes += [
        gs.Node("Unsqueeze", name=f"{name}_unsqueeze", inputs=[mask_input, gs.Constant(f"{name}_axes", np.array([1, 2], dtype=np.int64))], outputs=[unsq]),
        gs.Node("Cast", name=f"{name}_cast", attrs={"to": onnx.TensorProto.BOOL}, inputs=[unsq], outputs=[keep]),
        gs.Node(
            "Where",
            name=f"{name}_where",
            inputs=[keep, gs.Constant(f"{name}_zero", np.array(0.0, dtype=dtype)), gs.Constant(f"{name}_min", np.array(MASK_VALUE, dtype=dtype))],
            outputs=[out],
        ),
    ]
    cache[mask_input.name] = out
    return out
