"""Word + position (+ token type) embedding Gathers, summed, + LayerNormalization ->
``com.microsoft`` ``EmbedLayerNormalization`` (onnxruntime target).

Guards: every summand is a Gather from a constant [vocab, hidden] table; the word and token-type
indices are graph inputs; the position indices are checked by the probe to be 0..seq-1 on every row
(so RoBERTa-style positions derived from the padding are left alone: the op would compute them
wrong). The op's 1-D mask_index output is not used: attention takes the 2-D mask, which is right
for left padding too.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertopt.passes.common import MS_DOMAIN, PassContext, const_value, ensure_ms_domain, int32_cast, is_op, producer, single_use

NAME = "embed_layernorm"
FAMILY = "embedding"


def _summands(graph: gs.Graph, t: gs.Tensor, depth: int = 0) -> list[gs.Tensor] | None:
    p = producer(t)
    if p is not None and p.op == "Add" and depth < 3 and (depth == 0 or single_use(graph, t)):
        out = []
        for i in p.inputs:
            s = _summands(graph, i, depth + 1)
            if s is None:
                return None
            out += s
        return out
    return [t]


def match(graph: gs.Graph, ln: gs.Node) -> list[gs.Node] | None:
    """The Gathers (axis 0) whose sum feeds ``ln``, or None: not an embedding sum (a residual LayerNorm, not a miss)."""
    if not is_op(ln, "LayerNormalization"):
        return None
    add = producer(ln.inputs[0])
    if add is None or add.op != "Add":
        return None
    parts = _summands(graph, ln.inputs[0])
    gathers = [producer(t) for t in parts or []]
    if not parts or not all(g is not None and g.op == "Gather" and int(g.attrs.get("axis", 0)) == 0 for g in gathers):
        return None
    return gathers


def check(graph: gs.Graph, ln: gs.Node, gathers: list[gs.Node]) -> tuple[dict[str, gs.Node], str | None]:
    """Each Gather's role (word, position, segment) and the reason this is no embedding LayerNorm, or None.
    The position ids are checked later, on probe values (:func:`_positions_ok`)."""
    tables = [const_value(g.inputs[0]) for g in gathers]
    if any(tb is None or tb.ndim != 2 for tb in tables) or len({tb.shape[1] for tb in tables}) != 1:
        return {}, "embedding Gathers do not all read constant [vocab, hidden] tables"
    if len(ln.inputs) < 3 or const_value(ln.inputs[1]) is None or const_value(ln.inputs[2]) is None:
        return {}, "embedding LayerNormalization has no constant gamma/beta"
    inputs = set(id(t) for t in graph.inputs)
    roles: dict[str, gs.Node] = {}
    for g in gathers:
        idx = g.inputs[1]
        if id(idx) in inputs:
            role = "segment" if any(s in idx.name.lower() for s in ("token_type", "segment")) else "word"
        else:
            role = "position"
        if role in roles:
            roles = {}
            break
        roles[role] = g
    if "word" not in roles or "position" not in roles:
        return roles, "embedding sum lacks a word Gather on a graph input and a position Gather"
    return roles, None


def _positions_ok(pos: np.ndarray, seq_in: int) -> bool:
    seq = pos.shape[-1] if pos.ndim else 0
    return pos.ndim in (1, 2) and bool(np.all(pos == np.arange(seq))) and seq == seq_in


def rewrite(graph: gs.Graph, ln: gs.Node, roles: dict[str, gs.Node], casts: dict[str, gs.Variable]) -> None:
    """One EmbedLayerNormalization (int32 ids) takes over ``ln``'s output; its mask_index is left unused."""
    word, segment = roles["word"], roles.get("segment")
    empty = gs.Variable.empty
    ins = [
        int32_cast(graph, word.inputs[1], casts),
        int32_cast(graph, segment.inputs[1], casts) if segment is not None else empty(),
        word.inputs[0],
        roles["position"].inputs[0],
        segment.inputs[0] if segment is not None else empty(),
        ln.inputs[1],
        ln.inputs[2],
    ]
    y = ln.outputs[0]
    ln.outputs.clear()
    mask_index = gs.Variable(f"{ln.name}_mask_index", dtype=np.int32)
    node = gs.Node(
        "EmbedLayerNormalization",
        name=(ln.name or "embed") + "_Embed",
        domain=MS_DOMAIN,
        attrs={"epsilon": float(ln.attrs.get("epsilon", 1e-5))},
        inputs=ins,
        outputs=[y, mask_index],
    )
    graph.nodes.append(node)


def run(graph: gs.Graph, ctx: PassContext) -> int:
    cands = []
    for ln in [n for n in graph.nodes if is_op(n, "LayerNormalization")]:
        gathers = match(graph, ln)
        if gathers is None:
            continue
        roles, reason = check(graph, ln, gathers)
        if reason:
            ctx.miss(reason)
            continue
        cands.append((ln, roles))
    if not cands:
        return 0
    vals = ctx.values(graph, [r["position"].inputs[1] for _, r in cands])
    if vals is None:
        return 0
    count = 0
    casts: dict[str, gs.Variable] = {}
    for ln, roles in cands:
        if not _positions_ok(vals[roles["position"].inputs[1].name], ctx.feeds[roles["word"].inputs[1].name].shape[1]):
            ctx.miss("position ids are not 0..seq-1 on every row")
            continue
        rewrite(graph, ln, roles, casts)
        count += 1
    if count:
        ensure_ms_domain(graph)
    return count
