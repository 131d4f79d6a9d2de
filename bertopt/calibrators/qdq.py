"""Where Q/DQ goes and how it is written: TensorRT's explicit-quantization form, which ORT also runs.

The rules (one place, shared by ``calibrate`` and ``qat``):

- INT8 is symmetric with zero point 0 and the narrow range [-127, 127] (TensorRT's requirement).
- GEMMs (``MatMul`` with a constant 2-D weight, ``Gemm`` with a constant B): the weight becomes an
  INT8 initializer with a per-channel ``DequantizeLinear`` on its output-channel axis (axis 1 of a
  MatMul's [K, N] weight; axis 0 of a Gemm's B when ``transB=1``); the activation input gets a
  per-tensor ``QuantizeLinear -> DequantizeLinear`` pair.
- Attention batched MatMuls (both inputs activations: Q.K^T and softmax.V) get a per-tensor pair on
  both inputs only with ``include_bmm=True``.
- Everything else stays in float: LayerNorm, Softmax, GELU, residual Adds, biases, the embeddings,
  com.microsoft fused ops (Attention carries its QKV weight inside; it stays float).
- Every quantized GEMM input gets its own Q/DQ pair, even when Q, K and V read the same tensor (as
  modelopt exports one quantizer per Linear). A Q shared by three DQs stops ONNX Runtime's
  s8->u8 rewrite, which leaves those GEMMs in float on x86 (measured: 18 of 36 int8 kernels);
  TensorRT merges the duplicates itself.

With these rules ONNX Runtime's CPU provider turns every quantized GEMM into
``MatMulIntegerToFloat`` (u8 x s8 VNNI kernels, after its own s8->u8 activation rewrite), and
TensorRT fuses DQ -> GEMM -> Q chains into INT8 kernels.

API::

    targets = quantizable_gemms(model, include_bmm=False, exclude=["*/layer.5/output/dense/*"])
    qmodel = insert_qdq(model, ranges={tensor: amax, ...}, targets=targets)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from bertopt.graph import QMAX, FreshNames, constants, opset_version

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute)


@dataclass(frozen=True)
class GemmTarget:
    """One GEMM to quantize.

    ``activations``: (input index, tensor name) of each input that gets a per-tensor Q/DQ pair;
    ``weight``: (input index, initializer name, output-channel axis) or None for a batched MatMul.
    ``module``: the PyTorch module path the node came from when the name says so
    (``/model/encoder/layer.0/attention/self/query/MatMul`` -> ``model.encoder.layer.0.attention.self.query``),
    so QAT can map placements onto modules.
    """

    node: str
    op: str
    kind: str  # "gemm" or "bmm"
    activations: tuple[tuple[int, str], ...]
    weight: tuple[int, str, int] | None = None
    module: str | None = None
    shape: tuple[int, ...] | None = field(default=None, compare=False)  # weight shape

    @property
    def activation_tensors(self) -> list[str]:
        return [t for _, t in self.activations]


def _graph(model_or_graph):
    return model_or_graph.graph if hasattr(model_or_graph, "graph") else model_or_graph


def node_id(node, index: int) -> str:
    """A node's name, or a stable stand-in for an unnamed node."""
    return node.name or f"{node.op_type}_{index}:{node.output[0]}"


def module_path(node_name: str) -> str | None:
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return None
    return ".".join(parts[:-1])


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Exact name or shell-style glob (``*/layer.5/*``)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def quantizable_gemms(model, include_bmm: bool = False, exclude: Sequence[str] = ()) -> list[GemmTarget]:
    """The GEMMs that get Q/DQ, in graph order, following the rules in the module docstring.

    ``model`` is an ``onnx.ModelProto`` or ``GraphProto``; ``exclude`` holds node names or globs
    (matched against the node name and the module path) that stay in float.
    """
    import onnx

    graph = _graph(model)
    consts = constants(graph)
    targets: list[GemmTarget] = []
    for i, n in enumerate(graph.node):
        if n.domain not in ("", "ai.onnx") or n.op_type not in ("MatMul", "Gemm"):
            continue
        name = node_id(n, i)
        mod = module_path(n.name) if n.name else None
        if exclude and (matches(name, exclude) or (mod and matches(mod, exclude))):
            continue
        a, b = n.input[0], n.input[1]
        b_const = consts.get(b)
        a_const = consts.get(a)
        if a_const is not None and b_const is not None:
            continue  # constant expression: not a GEMM on data
        if b_const is not None:
            if b_const.data_type != onnx.TensorProto.FLOAT or len(b_const.dims) != 2:
                continue
            if n.op_type == "Gemm":
                attrs = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
                axis = 0 if attrs.get("transB", 0) else 1
            else:
                axis = 1
            targets.append(GemmTarget(node=name, op=n.op_type, kind="gemm", activations=((0, a),),
                                      weight=(1, b, axis), module=mod, shape=tuple(b_const.dims)))
        elif a_const is None and n.op_type == "MatMul" and include_bmm:
            targets.append(GemmTarget(node=name, op=n.op_type, kind="bmm", activations=((0, a), (1, b)), module=mod))
    return targets


WEIGHT_METHODS = ("max", "mse")


def weight_scales(w: np.ndarray, axis: int, method: str = "max") -> np.ndarray:
    """Per-channel symmetric scales along output axis ``axis`` of a 2-D weight.

    ``max``: max |w| / 127 per channel. ``mse``: per channel, the clipping ratio of max |w| (from
    0.5 to 1 in steps of 0.02) with the smallest squared rounding + clipping error.
    An all-zero channel gets scale 1.0 (its weights quantize to exactly 0; a zero scale is invalid).
    """
    wk = w if axis == 1 else w.T  # [K, N]: channels along axis 1
    amax = np.abs(wk).max(axis=0).astype(np.float64)
    if method == "mse":
        best_err = np.full(amax.shape, np.inf)
        best = amax.copy()
        for r in np.linspace(0.5, 1.0, 26):
            s = np.where(amax > 0, amax * r / QMAX, 1.0)
            q = np.clip(np.rint(wk / s), -QMAX, QMAX) * s
            err = ((wk - q) ** 2).sum(axis=0)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best = np.where(better, amax * r, best)
        amax = best
    elif method != "max":
        raise ValueError(f"unknown weight calibration '{method}' (methods: {', '.join(WEIGHT_METHODS)})")
    return np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, method: str = "max") -> tuple[np.ndarray, np.ndarray]:
    s = weight_scales(w, axis, method)
    shape = [1, 1]
    shape[axis] = -1
    q = np.clip(np.rint(w / s.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, s


def activation_scale(amax: float) -> np.float32:
    return np.float32(amax / QMAX)


def insert_qdq(model, ranges: Mapping[str, float], targets: Sequence[GemmTarget] | None = None, *,
               include_bmm: bool = False, exclude: Sequence[str] = (), weight_method: str = "max"):
    """A copy of ``model`` with Q/DQ around ``targets`` (default: ``quantizable_gemms(model, ...)``).

    ``ranges`` maps each activation tensor to its amax (> 0, finite). Weights are quantized per
    channel from their own values. Raises ``ValueError`` for a missing or unusable range (the stage
    filters zero ranges out first and says which GEMMs stay in float).
    """
    import onnx

    if opset_version(model) < MIN_OPSET:
        raise ValueError(f"opset {opset_version(model)} < {MIN_OPSET}: per-channel Q/DQ needs opset 13 or later")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if targets is None:
        targets = quantizable_gemms(m, include_bmm=include_bmm, exclude=exclude)
    _check_ranges(targets, ranges)
    by_node = {t.node: t for t in targets}
    w = _QdqWriter(g, ranges, weight_method)
    body = []
    for i, n in enumerate(g.node):
        t = by_node.get(node_id(n, i))
        if t is not None:
            for idx, tensor in t.activations:
                body += w.activation(n, idx, tensor, f"{t.node}/input{idx}")
            if t.weight is not None:
                w.weight(n, *t.weight)
        body.append(n)
    del g.node[:]
    g.node.extend(w.head_nodes + body)
    _drop_replaced_weights(g, w.replaced_weights, w.new_inits)
    return m


def _check_ranges(targets: Sequence[GemmTarget], ranges: Mapping[str, float]) -> None:
    for t in targets:
        for _, tensor in t.activations:
            amax = ranges.get(tensor)
            if amax is None:
                raise ValueError(f"no range for tensor '{tensor}' (input of {t.node})")
            if not np.isfinite(amax) or amax <= 0:
                raise ValueError(f"range of tensor '{tensor}' (input of {t.node}) is {amax}: needs a finite value > 0")


class _QdqWriter:
    """Makes the Q/DQ nodes and initializers of :func:`insert_qdq` under names not yet taken in ``g``."""

    def __init__(self, g, ranges: Mapping[str, float], weight_method: str):
        self.ranges = ranges
        self.weight_method = weight_method
        self.consts = constants(g)
        self.fresh = FreshNames(g)
        self.new_inits: list = []
        self.head_nodes: list = []  # weight DQs: they read initializers only, so they go first
        self.weight_dq: dict[tuple[str, int], str] = {}  # (weight, axis) -> dequantized tensor name
        self.replaced_weights: set[str] = set()

    def activation(self, n, idx: int, tensor: str, base: str) -> list:
        """Point ``n.input[idx]`` at a Q/DQ of ``tensor``; returns the Q and DQ nodes (they go before ``n``)."""
        from onnx import helper, numpy_helper

        fresh = self.fresh
        scale = fresh(f"{base}/scale")
        zp = fresh(f"{base}/zero_point")
        q_out = fresh(f"{base}/quantized")
        dq_out = fresh(f"{base}/dequantized")
        self.new_inits.append(numpy_helper.from_array(np.array(activation_scale(self.ranges[tensor]), dtype=np.float32), scale))
        self.new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zp))
        nodes = [helper.make_node("QuantizeLinear", [tensor, scale, zp], [q_out], name=fresh(f"{base}/QuantizeLinear")),
                 helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out], name=fresh(f"{base}/DequantizeLinear"))]
        n.input[idx] = dq_out
        return nodes

    def weight(self, n, idx: int, wname: str, axis: int) -> None:
        """Point ``n.input[idx]`` at the per-channel INT8 DQ of weight ``wname`` (made once per weight and axis)."""
        from onnx import helper, numpy_helper

        fresh = self.fresh
        key = (wname, axis)
        if key not in self.weight_dq:
            w = numpy_helper.to_array(self.consts[wname]).astype(np.float32)
            q, s = quantize_weight(w, axis, self.weight_method)
            qn, sn, zn = fresh(f"{wname}/int8"), fresh(f"{wname}/scale"), fresh(f"{wname}/zero_point")
            dq_out = fresh(f"{wname}/dequantized")
            self.new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(s, sn),
                               numpy_helper.from_array(np.zeros(s.shape, dtype=np.int8), zn)]
            self.head_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq_out], axis=axis,
                                                    name=fresh(f"{wname}/DequantizeLinear")))
            self.weight_dq[key] = dq_out
        n.input[idx] = self.weight_dq[key]
        self.replaced_weights.add(wname)


def _drop_replaced_weights(g, replaced_weights: set[str], new_inits: list) -> None:
    """Drop the float weights nothing reads any more (initializers or Constant nodes); append ``new_inits``."""
    still_used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [init for init in g.initializer if init.name not in replaced_weights or init.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    # a Constant node that held a replaced weight is now dead
    dead = [n for n in g.node if n.op_type == "Constant" and n.output[0] in replaced_weights and n.output[0] not in still_used]
    for n in dead:
        g.node.remove(n)


def qdq_summary(model) -> dict:
    """Counts a reader checks: Q/DQ nodes, INT8 weight initializers, GEMMs fed by a DQ on every input."""
    g = _graph(model)
    producers = {o: n for n in g.node for o in n.output}
    q = sum(1 for n in g.node if n.op_type == "QuantizeLinear")
    dq = sum(1 for n in g.node if n.op_type == "DequantizeLinear")
    gemms = [n for n in g.node if n.op_type in ("MatMul", "Gemm")]
    quantized = sum(1 for n in gemms if all(x in producers and producers[x].op_type == "DequantizeLinear" for x in n.input[:2]))
    return {"quantize_linear": q, "dequantize_linear": dq, "gemms": len(gemms), "quantized_gemms": quantized}
