"""Equalization before INT8: smoothing, shifting and bias correction of GEMM inputs.

BERT's LayerNorm outputs have a few hidden channels 10-15x larger than the rest (in MiniLM-L6,
channels 99, 223 and 63 reach |x| ~ 30 while the median channel stays under 2), so one per-tensor
INT8 scale spends most of its levels on three channels: per-tensor activation quantization of the
FFN input alone takes the minimum embedding cosine down to ~0.988. Three exact float rewrites fix
most of that before anything is quantized:

- smoothing (SmoothQuant, Xiao et al. 2023): scale each input channel j of a GEMM by
  ``s_j = r_j^alpha / max|W_j|^(1-alpha)`` (``r_j`` the channel's half-range) so that
  ``X W = (X / s) (diag(s) W)``: the activation's outlier channels move into the weight, which is
  quantized per output channel and copes far better;
- shifting (Outlier Suppression+, Wei et al. 2023): subtract each channel's midpoint
  ``c_j = (max_j + min_j) / 2`` so every channel is centred on 0 (a GELU output lives in
  [-0.17, max], and symmetric INT8 would waste its negative half), and add ``c W`` to the GEMM's
  bias, so ``X W + b = (X - c) W + (b + c W)``;
- bias correction (Nagel et al. 2019): the rounding of the weights shifts every output by
  ``E[X] (W - deq(q(W)))`` on average; that constant is added back to the bias. Sentence embeddings
  are means over tokens, where such a bias does not average out.

In the graph, smoothing and shifting are a ``Mul(X, 1/s)`` and an ``Add(., -c/s)`` in front of the
activation's ``QuantizeLinear`` (one pair shared by the GEMMs that read X, e.g. Q, K and V); the
rest is folded into weights and biases. modelopt's INT8 SmoothQuant exports the same form (a
pre-quant scale in front of the input quantizer): TensorRT fuses these pointwise ops into the
preceding kernel; on ONNX Runtime they are elementwise passes over a [tokens, hidden] tensor,
small next to the GEMMs they make accurate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from bertopt.calibrators.qdq import GemmTarget, quantize_weight
from bertopt.graph import MS_DOMAIN, FreshNames, attr, constants

S_MIN, S_MAX = 1e-4, 1e4


@dataclass
class ChannelStats:
    """Per-channel (last axis) min, max and sum of a tensor over the calibration tokens."""

    min: np.ndarray
    max: np.ndarray
    sum: np.ndarray
    count: int = 0

    @classmethod
    def of(cls, x: np.ndarray) -> "ChannelStats":
        x2 = x.reshape(-1, x.shape[-1])
        return cls(x2.min(axis=0).astype(np.float64), x2.max(axis=0).astype(np.float64),
                   x2.sum(axis=0, dtype=np.float64), x2.shape[0])

    def update(self, x: np.ndarray) -> None:
        o = ChannelStats.of(x)
        self.min = np.minimum(self.min, o.min)
        self.max = np.maximum(self.max, o.max)
        self.sum = self.sum + o.sum
        self.count += o.count

    @property
    def amax(self) -> np.ndarray:
        return np.maximum(np.abs(self.min), np.abs(self.max))

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)


@dataclass
class Equalization:
    """What is applied to one GEMM input: ``X' = (X - shift) / scale``."""

    scale: np.ndarray
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        return {"scale": self.scale.tolist(), "shift": self.shift.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Equalization":
        return cls(np.asarray(d["scale"], dtype=np.float32), np.asarray(d.get("shift", []), dtype=np.float32))


def smoothable(targets: Sequence[GemmTarget]) -> list[str]:
    """Activation tensors equalization applies to (GEMM inputs, not attention BMMs)."""
    return list(dict.fromkeys(t.activations[0][1] for t in targets if t.kind == "gemm"))


def _weight_rows_amax(model, targets: Sequence[GemmTarget]) -> dict[str, np.ndarray]:
    """tensor -> max |W| per input channel over the weights of every GEMM reading it."""
    from onnx import numpy_helper

    consts = constants(model.graph)
    out: dict[str, np.ndarray] = {}
    for t in targets:
        if t.kind != "gemm":
            continue
        x = t.activations[0][1]
        _, wname, axis = t.weight
        rows = np.abs(numpy_helper.to_array(consts[wname]).astype(np.float32)).max(axis=axis)
        out[x] = np.maximum(out[x], rows) if x in out else rows
    return out


def equalization_params(model, targets: Sequence[GemmTarget], stats: Mapping[str, ChannelStats],
                        alpha: float, shift: bool = True) -> dict[str, Equalization]:
    """Scale (and shift) per smoothable tensor. ``alpha = 0`` turns smoothing off (scale 1; with
    ``shift`` only the shift remains); channels that never fire, or whose weight rows are all zero,
    keep scale 1."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    out = {}
    for x, wa in _weight_rows_amax(model, targets).items():
        st = stats[x]
        if st.min.shape != wa.shape:
            raise ValueError(f"tensor '{x}': {st.min.shape[0]} channels but its GEMM weights have {wa.shape[0]} input rows")
        c = (st.max + st.min) / 2.0 if shift else np.zeros_like(st.max)
        r = (st.max - st.min) / 2.0 if shift else st.amax
        ok = (r > 0) & (wa > 0)
        s = np.ones_like(r)
        if alpha > 0:
            s[ok] = r[ok] ** alpha / wa[ok].astype(np.float64) ** (1.0 - alpha)
        out[x] = Equalization(np.clip(s, S_MIN, S_MAX).astype(np.float32), c.astype(np.float32))
    return out


class _Editor:
    """Small helpers over a copied ModelProto: fresh names, node lookup, GEMM bias access."""

    def __init__(self, model):
        import onnx

        self.m = onnx.ModelProto()
        self.m.CopyFrom(model)
        self.g = self.m.graph
        self.consts = constants(self.g)
        self.fresh = FreshNames(self.g)
        self.new_inits: list = []
        self.replaced: set[str] = set()
        self.insert_before: dict[int, list] = {}
        self.append_after: dict[int, list] = {}
        self.index = {(n.name or f"{n.op_type}_{i}:{n.output[0]}"): i for i, n in enumerate(self.g.node)}

    def producer(self, name: str):
        for n in self.g.node:
            if name in n.output:
                return n
        return None

    def readers(self, name: str) -> list:
        return [n for n in self.g.node if name in n.input]

    attr = staticmethod(attr)

    def const(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.consts[name])

    def add_init(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        arr = np.asarray(value)
        self.new_inits.append(numpy_helper.from_array(arr, name))
        self.consts[name] = self.new_inits[-1]
        return name

    def node(self, t: GemmTarget):
        return self.g.node[self.index[t.node]]

    def add_to_bias(self, t: GemmTarget, delta: np.ndarray) -> None:
        """Add ``delta`` ([N]) to the GEMM's bias: the constant operand of an ``Add`` that is the only
        reader of its output, or (Gemm) its C input; else a new ``Add`` after it."""
        from onnx import helper

        n = self.node(t)
        delta = delta.astype(np.float32)
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in self.consts:
            b = self.const(n.input[2]).astype(np.float32)
            if b.shape == delta.shape or b.size == 1:
                self.replaced.add(n.input[2])
                n.input[2] = self.add_init(f"{n.input[2]}/corrected", b + delta)
                return
        readers = [(k, r) for k, r in enumerate(self.g.node) if n.output[0] in r.input]
        if len(readers) == 1 and readers[0][1].op_type == "Add" and readers[0][1].domain in ("", "ai.onnx"):
            add = readers[0][1]
            for pos, name in enumerate(add.input):
                if name != n.output[0] and name in self.consts:
                    b = self.const(name).astype(np.float32)
                    if b.shape == delta.shape or (b.size == delta.size and b.ndim and b.shape[-1] == delta.shape[-1]):  # [N] or fuse's [1, N]
                        self.replaced.add(name)
                        add.input[pos] = self.add_init(f"{name}/corrected", b + delta.reshape(b.shape))
                        return
        # no bias to fold into: add one
        out = n.output[0]
        pre = self.fresh(f"{out}/before_bias")
        n.output[0] = pre
        name = self.add_init(f"{t.node}/bias", delta)
        self.append_after.setdefault(self.index[t.node], []).append(
            helper.make_node("Add", [pre, name], [out], name=self.fresh(f"{t.node}/BiasAdd")))

    def finish(self, replaced: set[str] = frozenset()):
        nodes = []
        for i, n in enumerate(self.g.node):
            nodes.extend(self.insert_before.get(i, []))
            nodes.append(n)
            nodes.extend(self.append_after.get(i, []))
        del self.g.node[:]
        self.g.node.extend(nodes)
        used = {x for n in self.g.node for x in n.input} | {o.name for o in self.g.output}
        replaced = set(replaced) | self.replaced
        keep = [init for init in self.g.initializer if init.name in used or init.name not in replaced]
        new = [init for init in self.new_inits if init.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep + new)
        return self.m


def apply_equalization(model, targets: Sequence[GemmTarget], params: Mapping[str, Equalization]):
    """(equalized model copy, targets re-pointed at the equalized tensors and weights).

    Each equalized tensor X gets ``Mul(X, 1/s)`` (and ``Add(., -c/s)`` when shifted) before its
    first quantized reader; those readers read the result, their weights are scaled by ``s`` along
    the input-channel axis and their biases absorb ``c W``. Other readers of X (the residual Add,
    excluded GEMMs) keep reading X unchanged. When X is the attention context and only quantized
    GEMMs read it, ``1/s`` and ``-c/s`` are folded into the value projection instead (free at run
    time; exact because every softmax row sums to 1). The float model computes the same function.
    """
    from onnx import helper

    ed = _Editor(model)
    by_tensor: dict[str, list[GemmTarget]] = {}
    for t in targets:
        if t.kind == "gemm" and t.activations[0][1] in params:
            by_tensor.setdefault(t.activations[0][1], []).append(t)
    outputs = {o.name for o in ed.g.output}
    for x, ts in by_tensor.items():
        eq = params[x]
        s = eq.scale.astype(np.float32)
        c = eq.shift.astype(np.float32) if eq.shift.size else np.zeros_like(s)
        fold = None
        # Compare nodes by their outputs, not id(): protobuf hands out fresh wrapper objects, so ids
        # of nodes fetched at different times may or may not match (that made the fold flaky).
        if x not in outputs and {tuple(r.output) for r in ed.readers(x)} == {tuple(ed.node(t).output) for t in ts}:
            fold = _value_projection(ed, x, s.shape[0])
        if fold is not None:
            vmm, w_idx, add, b_pos = fold
            wv = ed.const(vmm.input[w_idx]).astype(np.float32)
            ed.replaced.add(vmm.input[w_idx])
            vmm.input[w_idx] = ed.add_init(f"{vmm.input[w_idx]}/folded", (wv / s[None, :]).astype(np.float32))
            bv = ed.const(add.input[b_pos]).astype(np.float32)
            ed.replaced.add(add.input[b_pos])
            add.input[b_pos] = ed.add_init(f"{add.input[b_pos]}/folded", ((bv - c) / s).astype(np.float32))
            out = x
        else:
            first = min(ed.index[t.node] for t in ts)
            nodes = ed.insert_before.setdefault(first, [])
            out = ed.fresh(f"{x}/smoothed")
            inv = ed.add_init(f"{x}/smooth_inv_scale", (1.0 / s).astype(np.float32))
            if np.any(c != 0):
                mid = ed.fresh(f"{x}/scaled")
                nodes.append(helper.make_node("Mul", [x, inv], [mid], name=ed.fresh(f"{x}/SmoothMul")))
                nodes.append(helper.make_node("Add", [mid, ed.add_init(f"{x}/smooth_shift", (-c / s).astype(np.float32))], [out],
                                              name=ed.fresh(f"{x}/SmoothShift")))
            else:
                nodes.append(helper.make_node("Mul", [x, inv], [out], name=ed.fresh(f"{x}/SmoothMul")))
        for t in ts:
            n = ed.node(t)
            n.input[t.activations[0][0]] = out
            idx, _, axis = t.weight
            w = ed.const(n.input[idx]).astype(np.float32)  # the current weight (a fold may have changed it)
            shape = [1, 1]
            shape[1 - axis] = -1  # the input-channel axis
            ed.replaced.add(n.input[idx])
            n.input[idx] = ed.add_init(f"{t.weight[1]}/smoothed", (w * s.reshape(shape)).astype(np.float32))
            if np.any(c != 0):
                ed.add_to_bias(t, (c.astype(np.float64) @ w.astype(np.float64)) if axis == 1 else (w.astype(np.float64) @ c))
    new_targets = []
    for t in targets:
        n = ed.node(t)
        acts = tuple((i, n.input[i]) for i, _ in t.activations)
        weight = (t.weight[0], n.input[t.weight[0]], t.weight[2]) if t.weight is not None else None
        new_targets.append(replace(t, activations=acts, weight=weight))
    return ed.finish(), new_targets


def _value_projection(ed: "_Editor", x: str, channels: int):
    """(value MatMul, its weight input index, bias Add, bias input index) when ``x`` is an attention
    context whose channels are the value projection's output channels, else None.

    Recognised: ``com.microsoft.MultiHeadAttention`` output 0 with separate Q/K/V inputs, and the
    standard ``Reshape(Transpose_0213(MatMul(Softmax(.), Transpose_0213(Reshape(V)))))``; V must be
    ``Add(MatMul(h, W[K, channels]), b[channels])`` read only along that path.
    """
    p = ed.producer(x)
    if p is None:
        return None
    if p.op_type == "MultiHeadAttention" and p.domain == MS_DOMAIN:
        if p.output[0] != x or len(p.input) < 3 or not p.input[1] or (len(p.input) > 3 and p.input[3]):
            return None
        v = p.input[2]
        if len(ed.readers(v)) != 1:
            return None
    elif p.op_type == "Reshape":
        t1 = ed.producer(p.input[0])
        if not (_is_transpose_0213(ed, t1) and len(ed.readers(t1.output[0])) == 1):
            return None
        mm = ed.producer(t1.input[0])
        if mm is None or mm.op_type != "MatMul" or len(ed.readers(mm.output[0])) != 1:
            return None
        sm = ed.producer(mm.input[0])
        if sm is None or sm.op_type != "Softmax" or ed.attr(sm, "axis", -1) not in (-1, 3):
            return None
        t0 = ed.producer(mm.input[1])
        if not (_is_transpose_0213(ed, t0) and len(ed.readers(t0.output[0])) == 1):
            return None
        r0 = ed.producer(t0.input[0])
        if r0 is None or r0.op_type != "Reshape" or len(ed.readers(r0.output[0])) != 1:
            return None
        v = r0.input[0]
        if len(ed.readers(v)) != 1:
            return None
    else:
        return None
    add = ed.producer(v)
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    for b_pos in (0, 1):
        bname, other = add.input[b_pos], add.input[1 - b_pos]
        if bname in ed.consts and ed.const(bname).shape == (channels,):
            vmm = ed.producer(other)
            if (vmm is not None and vmm.op_type == "MatMul" and len(ed.readers(other)) == 1 and vmm.input[1] in ed.consts
                    and ed.const(vmm.input[1]).ndim == 2 and ed.const(vmm.input[1]).shape[1] == channels):
                return vmm, 1, add, b_pos
    return None


def _is_transpose_0213(ed: "_Editor", node) -> bool:
    return node is not None and node.op_type == "Transpose" and list(ed.attr(node, "perm", [])) == [0, 2, 1, 3]


def equalized_mean(mean: np.ndarray, eq: Equalization | None) -> np.ndarray:
    """E[X'] for X' = (X - c) / s, from E[X]."""
    mean = np.asarray(mean, dtype=np.float64)
    if eq is None:
        return mean
    c = eq.shift.astype(np.float64) if eq.shift.size else 0.0
    return (mean - c) / eq.scale.astype(np.float64)


def bias_correction(model, targets: Sequence[GemmTarget], means: Mapping[str, np.ndarray], weight_method: str = "max"):
    """Add ``E[X] (W - deq(q(W)))`` to each GEMM's bias (``means``: activation tensor -> E[X])."""
    ed = _Editor(model)
    for t in targets:
        if t.kind != "gemm" or t.activations[0][1] not in means:
            continue
        _, wname, axis = t.weight
        w = ed.const(wname).astype(np.float32)
        q, s = quantize_weight(w, axis, weight_method)
        wdq = q.astype(np.float64) * s.astype(np.float64).reshape((1, -1) if axis == 1 else (-1, 1))
        err = w.astype(np.float64) - wdq
        mx = np.asarray(means[t.activations[0][1]], dtype=np.float64)
        ed.add_to_bias(t, mx @ err if axis == 1 else err @ mx)
    return ed.finish()
