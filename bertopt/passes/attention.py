"""Multi-head attention -> one ``com.microsoft`` op (onnxruntime target).

Default form: ``MultiHeadAttention(q, k, v, key_padding_mask=int32 attention_mask)`` fed by the
three separate Q/K/V ``MatMul + Add`` outputs, so the GEMMs stay standard nodes that ``bertopt
calibrate`` can put Q/DQ on. The alternative ``Attention`` form packs Wq|Wk|Wv into one [H, 3H]
GEMM inside the op (one bigger GEMM, but nothing left for Q/DQ; ``fuse_model(...,
options={"attention_op": "Attention"})``, timed by ``benchmarks/fuse_vs_ort_optimizer.py --variants``:
about 1% faster in FP32 on this CPU, within noise). When the exporter's mask is not a plain key-padding mask
(a causal or relative bias) it is passed as ``attention_bias`` instead.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertopt.passes.attention_match import AttentionMatch, candidates, verify
from bertopt.passes.common import MS_DOMAIN, PassContext, ensure_ms_domain, int32_cast, take_over

NAME = "attention"
FAMILY = "attention"


def run(graph: gs.Graph, ctx: PassContext) -> int:
    form = str(ctx.info.get("attention_op", "MultiHeadAttention"))  # FuseOptions' Literal checked it
    matches = verify(graph, ctx, candidates(graph, ctx))
    count = 0
    masks: dict[str, gs.Variable] = {}
    for m in matches:
        if form == "Attention" and any(p.quantized for p in (m.q, m.k, m.v)):
            ctx.miss("Attention form would pack quantized (Q/DQ) weights into a float GEMM")
            continue
        if form == "Attention" and not _packable(m):
            ctx.miss("Attention form needs Q, K and V projected from one input with biases")
            continue
        kpm = int32_cast(graph, m.mask_input, masks) if m.mask_kind == "key_padding" else None
        bias = m.mask if m.mask_kind == "bias" else None
        name = f"{m.softmax.name or 'attn'}_{form}"
        attrs = {"num_heads": int(m.num_heads), "scale": float(m.scale)}
        if form == "MultiHeadAttention":
            inputs = [m.q.out, m.k.out, m.v.out, gs.Variable.empty(), kpm or gs.Variable.empty(), bias or gs.Variable.empty()]
        else:
            w = np.concatenate([m.q.weight, m.k.weight, m.v.weight], axis=1)
            b = np.concatenate([m.q.bias, m.k.bias, m.v.bias])
            if m.v.weight.shape[1] != m.q.weight.shape[1]:
                attrs["qkv_hidden_sizes"] = [m.q.weight.shape[1], m.k.weight.shape[1], m.v.weight.shape[1]]
            inputs = [m.q.x, gs.Constant(name + "_qkv_weight", w), gs.Constant(name + "_qkv_bias", b), kpm or gs.Variable.empty(), gs.Variable.empty(), bias or gs.Variable.empty()]
        while inputs and inputs[-1].name == "":
            inputs.pop()
        node = gs.Node(form, name=name, domain=MS_DOMAIN, attrs=attrs, inputs=inputs)
        take_over(m.out, node)
        graph.nodes.append(node)
        count += 1
        ctx.info.setdefault("num_heads", int(m.num_heads))
        ctx.info.setdefault("hidden_size", int(m.q.weight.shape[1]))
    if count:
        ensure_ms_domain(graph)
    return count


def _packable(m: AttentionMatch) -> bool:
    return m.q.x is m.k.x is m.v.x and all(p.bias is not None for p in (m.q, m.k, m.v))
