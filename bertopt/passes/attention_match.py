"""Find multi-head attention blocks, whatever exporter wrote them (shared by both attention passes).

Structure first, anchored on each ``Softmax``::

    q = Add(MatMul(X, Wq), bq) ─ Reshape/Transpose (any chain) ─ [Mul/Div by a scalar] ─┐
    k = Add(MatMul(X, Wk), bk) ─ Reshape/Transpose (any chain) ─ [Mul/Div by a scalar] ─ MatMul
        ─ [Mul/Div by a scalar] ─ [Add(mask) | Where(mask, -big, .)] ─ Softmax(last axis)
        ─ [IsNaN/Where NaN guard (sdpa)] ─ MatMul(., v-side chain) ─ Transpose/Reshape ─ out [B,S,H]

then the numbers: one probe run (ONNX Runtime, optimizations off, padded synthetic inputs) gives
q, k, v, the score MatMul's inputs (their shapes give num_heads and head_size), the mask and the
tensors after the context MatMul. A block is accepted only when numpy attention computed from
q/k/v with that head split, scale and mask reproduces the block's output tensor. The same probe
tells whether the mask is a plain key-padding mask of a ``*mask*`` graph input (0 where the input
is nonzero, <= -1e4 where it is 0, the same for every query and head), which lets the fused op take
the 2-D mask directly and lets the exporter's mask subgraph die.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from bertopt.passes.common import PassContext, ancestors, const_value, producer, scalar_value

LAYOUT_OPS = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze")
MASK_MIN = -1e4  # a masked position's additive value is at most this


@dataclass
class Projection:
    out: gs.Tensor  # [B, S, H] after the bias Add (or the MatMul when there is no bias)
    matmul: gs.Node
    x: gs.Tensor
    weight: np.ndarray
    bias: np.ndarray | None
    bias_tensor: gs.Tensor | None
    quantized: bool = False  # W is DequantizeLinear(int8 constant): a Q/DQ model (calibrate's, qat's)


@dataclass
class AttentionMatch:
    softmax: gs.Node
    score_mm: gs.Node
    ctx_mm: gs.Node
    q: Projection
    k: Projection
    v: Projection
    scale: float
    mask: gs.Tensor | None
    out_chain: list[gs.Tensor]
    # filled in by the probe
    out: gs.Tensor | None = None
    num_heads: int = 0
    head_size: int = 0
    v_head_size: int = 0
    mask_kind: str = "none"  # none | key_padding | bias
    mask_input: gs.Tensor | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))


def weight_value(t: gs.Tensor) -> tuple[np.ndarray | None, bool]:
    """(float value, quantized?) of a GEMM weight: a constant, or ``DequantizeLinear`` of an int8
    constant with constant scale/zero point (per-tensor or per output channel: a Q/DQ model)."""
    w = const_value(t)
    if w is not None:
        return w, False
    p = producer(t)
    if p is None or p.op != "DequantizeLinear" or len(p.inputs) < 2:
        return None, False
    q, scale = const_value(p.inputs[0]), const_value(p.inputs[1])
    zp = const_value(p.inputs[2]) if len(p.inputs) > 2 else np.zeros((), np.int8)
    if q is None or scale is None or zp is None or q.ndim != 2 or scale.size not in (1, q.shape[1]):
        return None, False
    if scale.size > 1 and int(p.attrs.get("axis", 1)) % 2 != 1:
        return None, False
    return ((q.astype(np.float32) - zp.astype(np.float32)) * scale.astype(np.float32)), True


def projection(t: gs.Tensor) -> Projection | None:
    """``t`` = Add(MatMul(X, W), b) or MatMul(X, W) with constant 2-D W (or DequantizeLinear of an
    int8 constant) and 1-D b."""
    p = producer(t)
    if p is None:
        return None
    if p.op == "Add":
        for mm_out, b in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            bv = const_value(b)
            mm = producer(mm_out)
            if bv is not None and bv.ndim == 1 and mm is not None and mm.op == "MatMul":
                w, quantized = weight_value(mm.inputs[1])
                if w is not None and w.ndim == 2 and const_value(mm.inputs[0]) is None and w.shape[1] == bv.size:
                    return Projection(t, mm, mm.inputs[0], w, bv, b, quantized)
        return None
    if p.op == "MatMul":
        w, quantized = weight_value(p.inputs[1])
        if w is not None and w.ndim == 2 and const_value(p.inputs[0]) is None:
            return Projection(t, p, p.inputs[0], w, None, None, quantized)
    return None


def _scalar_step(node: gs.Node, t_in_pos: int = 0) -> tuple[gs.Tensor, float] | None:
    """Mul(t, c) / Mul(c, t) / Div(t, c) with scalar c: (t, factor)."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    cb = scalar_value(b)
    if cb is not None and const_value(a) is None:
        if node.op == "Div":
            return (a, 1.0 / cb) if cb != 0 else None
        return a, cb
    ca = scalar_value(a)
    if node.op == "Mul" and ca is not None and const_value(b) is None:
        return b, ca
    return None


def trace_to_projection(t: gs.Tensor, limit: int = 12) -> tuple[Projection, float] | str:
    """Walk back through layout ops and scalar scalings to a Q/K/V projection; or why not."""
    scale = 1.0
    for _ in range(limit):
        pr = projection(t)
        if pr is not None:
            return pr, scale
        p = producer(t)
        if p is None:
            return "reaches a graph input, not a MatMul(+bias) projection"
        if p.op in LAYOUT_OPS:
            t = p.inputs[0]
            continue
        step = _scalar_step(p)
        if step is not None:
            t, f = step
            scale *= f
            continue
        return f"meets {p.op}, not a layout op or a scalar scaling"
    return "too long a chain"


def _scores(t: gs.Tensor) -> tuple[gs.Node, float] | None:
    """``t`` = MatMul(a, b) (both non-constant), possibly scaled by scalars after it."""
    scale = 1.0
    for _ in range(4):
        p = producer(t)
        if p is None:
            return None
        if p.op == "MatMul" and const_value(p.inputs[0]) is None and const_value(p.inputs[1]) is None:
            return p, scale
        step = _scalar_step(p)
        if step is None:
            return None
        t, f = step
        scale *= f
    return None


def _scores_and_mask(graph: gs.Graph, sm: gs.Node) -> tuple[tuple[gs.Node, float] | None, gs.Tensor | None]:
    """The Softmax's input side: ((score MatMul, scale after it), additive mask or None), or (None, None)."""
    x = sm.inputs[0]
    p = producer(x)
    if p is not None and p.op == "Add":
        for cand, other in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            sc = _scores(cand)
            if sc is not None:
                return sc, other
        return None, None
    if p is not None and p.op == "Where":
        # masked_fill: Where(cond, -big, scores) -> additive mask Where(cond, -big, 0)
        cond, fill, scores = p.inputs
        fv = scalar_value(fill)
        sc = _scores(scores)
        if sc is None or fv is None or fv > MASK_MIN:
            return None, None
        dtype = const_value(fill).dtype
        zero = gs.Constant(f"{p.name}_zero", np.zeros((), dtype=dtype))
        mask = gs.Variable(f"{p.name}_additive_mask", dtype=dtype)
        graph.nodes.append(gs.Node("Where", name=f"{p.name}_additive", inputs=[cond, fill, zero], outputs=[mask]))
        return sc, mask
    return _scores(x), None


def _context_matmul(sm: gs.Node) -> gs.Node | None:
    """The one MatMul(probabilities, V) after the Softmax (through sdpa's optional NaN guard)."""
    y = sm.outputs[0]
    users = list(y.outputs)
    if len(users) == 2 and {u.op for u in users} == {"IsNaN", "Where"}:
        isnan = next(u for u in users if u.op == "IsNaN")
        where = next(u for u in users if u.op == "Where")
        if where.inputs[0] is isnan.outputs[0] and where.inputs[2] is y and scalar_value(where.inputs[1]) == 0.0:
            y = where.outputs[0]
            users = list(y.outputs)
    if len(users) != 1 or users[0].op != "MatMul" or users[0].inputs[0] is not y:
        return None
    return users[0]


def _out_chain(graph: gs.Graph, ctx_mm: gs.Node) -> list[gs.Tensor]:
    """The layout ops after the context MatMul (back to [batch, seq, hidden]), their outputs in order."""
    chain = []
    t = ctx_mm.outputs[0]
    for _ in range(4):
        # Shape consumers only feed the chain's own reshape targets: they die with it
        users = [c for c in t.outputs if c.op != "Shape"]
        if t in graph.outputs or len(users) != 1 or users[0].op not in LAYOUT_OPS or users[0].inputs[0] is not t:
            break
        t = users[0].outputs[0]
        chain.append(t)
    return chain


def candidates(graph: gs.Graph, ctx: PassContext) -> list[AttentionMatch]:
    """Structural matches (checked numerically by :func:`verify`); failures are recorded as misses."""
    found = []
    for sm in [n for n in graph.nodes if n.op == "Softmax"]:
        if not sm.outputs:
            continue
        if int(sm.attrs.get("axis", -1)) not in (-1, 3):
            ctx.miss("Softmax is not over the last axis")
            continue
        sc, mask = _scores_and_mask(graph, sm)
        if sc is None:
            ctx.miss("Softmax input is not [scaled] MatMul(q, k) [+ mask]")
            continue
        score_mm, post_scale = sc
        ctx_mm = _context_matmul(sm)
        if ctx_mm is None:
            ctx.miss("Softmax output does not feed one MatMul with V (as its first input)")
            continue
        traces = [trace_to_projection(t) for t in (score_mm.inputs[0], score_mm.inputs[1], ctx_mm.inputs[1])]
        bad = [(name, tr) for name, tr in zip(("query", "key", "value"), traces) if isinstance(tr, str)]
        if bad:
            ctx.miss(f"{bad[0][0]} side {bad[0][1]}")
            continue
        (q, qs), (k, ks), (v, vs) = traces
        if vs != 1.0:
            ctx.miss("value side is scaled")
            continue
        chain = _out_chain(graph, ctx_mm)
        if not chain:
            ctx.miss("context MatMul output is not reshaped back to [batch, seq, hidden]")
            continue
        found.append(AttentionMatch(sm, score_mm, ctx_mm, q, k, v, qs * ks * post_scale, mask, chain))
    return found


def verify(graph: gs.Graph, ctx: PassContext, found: list[AttentionMatch]) -> list[AttentionMatch]:
    """Keep the matches whose numbers are attention; fill in heads, head size, output and mask kind."""
    if not found:
        return []
    want: list[gs.Tensor] = []
    for m in found:
        want += [m.q.out, m.k.out, m.v.out, m.score_mm.inputs[0], m.score_mm.inputs[1], *m.out_chain]
        if m.mask is not None:
            want.append(m.mask)
    vals = ctx.values(graph, want)
    if vals is None:  # ORT cannot run the graph: the miss is recorded, nothing is fused
        return []
    ok = []
    for m in found:
        a, b = vals[m.score_mm.inputs[0].name], vals[m.score_mm.inputs[1].name]
        q, k, v = (vals[t.name].astype(np.float64) for t in (m.q.out, m.k.out, m.v.out))
        if a.ndim != 4 or b.ndim != 4 or q.ndim != 3:
            ctx.miss(f"score MatMul inputs are {a.ndim}-D/{b.ndim}-D, not [batch, heads, seq, head_size]")
            continue
        B, N, S, d = a.shape
        T = b.shape[3]
        H = q.shape[2]
        if N * d != H or k.shape[2] != H or v.shape[2] % N or b.shape[2] != d:
            ctx.miss("heads x head_size does not match the projection width")
            continue
        dv = v.shape[2] // N
        bias = None
        if m.mask is not None:
            mv = vals[m.mask.name]
            try:
                bias = np.broadcast_to(mv, (B, N, S, T)).astype(np.float64)
            except ValueError:
                ctx.miss(f"mask of shape {list(mv.shape)} does not broadcast to [batch, heads, seq, seq]")
                continue
        expected = _attention(q, k, v, N, m.scale, bias)
        out = None
        for t in m.out_chain:
            got = vals[t.name]
            if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                out = t
                break
        if out is None:
            ctx.miss("numeric check: the block does not compute softmax(q k^T * scale + mask) v for this head split")
            continue
        m.out, m.num_heads, m.head_size, m.v_head_size = out, N, d, dv
        m.dtype = vals[m.q.out.name].dtype
        if m.mask is not None:
            m.mask_kind, m.mask_input = _mask_kind(m.mask, vals[m.mask.name], ctx, (B, N, S, T))
            if m.mask_kind == "unsupported":
                ctx.miss(f"mask of shape {list(vals[m.mask.name].shape)} is neither a key-padding mask nor a [batch|1, heads|1, seq, seq] bias")
                continue
        ok.append(m)
    return ok


def _attention(q, k, v, n, scale, bias):
    B, S, H = q.shape
    T = k.shape[1]
    qh = q.reshape(B, S, n, -1).transpose(0, 2, 1, 3)
    kh = k.reshape(B, T, n, -1).transpose(0, 2, 3, 1)
    vh = v.reshape(B, T, n, -1).transpose(0, 2, 1, 3)
    s = (qh @ kh) * scale
    if bias is not None:
        s = s + np.maximum(bias, -1e30)  # -inf -> a finite large negative: same softmax
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(B, S, -1)


def _mask_kind(mask: gs.Tensor, mv: np.ndarray, ctx: PassContext, bnst) -> tuple[str, gs.Tensor | None]:
    B, N, S, T = bnst
    _, leaves = ancestors(mask)
    inputs = [t for t in leaves if "mask" in t.name.lower() and t.name in ctx.feeds and ctx.feeds[t.name].ndim == 2]
    for inp in inputs:
        am = ctx.feeds[inp.name]
        if am.shape != (B, T):
            continue
        keep = np.broadcast_to((am != 0)[:, None, None, :], (B, N, S, T))
        full = np.broadcast_to(mv, (B, N, S, T))
        if np.all(full[keep] == 0) and np.all(full[~keep] <= MASK_MIN) and (~keep).any():
            return "key_padding", inp
    if mv.ndim == 4 and mv.shape[0] in (1, B) and mv.shape[1] in (1, N) and mv.shape[2] == S and mv.shape[3] == T and mv.dtype.kind == "f":
        return "bias", None
    return "unsupported", None
