"""Start QAT from a ``bertopt calibrate`` artifact (``--init-from``): its exact INT8 model.

The calibrated Q/DQ model itself is read (not only ranges.json), because calibrate does more than
pick ranges: it equalizes each GEMM input (``Mul(x, 1/s) -> Add(-c/s)`` in front of the
QuantizeLinear, with ``diag(s) W`` folded into the weight), corrects the biases, and may leave
sensitive GEMMs in float. For every quantized GEMM this module reads:

- the activation scale (QuantizeLinear/DequantizeLinear on the GEMM input) -> ``input amax``;
- the equalization in front of it, as a per-channel affine ``x * mul + add`` (absent: identity);
- the weight as DequantizeLinear of int8 (or Q/DQ of float) with per-channel scales -> the weight
  (already on its INT8 grid) and ``weight amax``;
- the bias added to the GEMM output (bias-corrected by calibrate).

``apply_ranges`` puts all of it into the fake-quantized torch student: the Linear's weight, bias
and quantizer amax (``amax = scale * 127``), and the equalization as two buffers and a forward
pre-hook on the Linear (exported as the same Mul/Add in front of the QuantizeLinear). The student
then starts as calibrate's model (step 0 of the training history is calibrate's INT8 accuracy), and
GEMMs calibrate left in float stay float (same placement, same kernels).

A GEMM is matched to its ``nn.Linear`` by the module path in the node name (legacy export names
nodes ``/model/<module path>/MatMul``), else by value (the teacher's weight times the equalization
scale, to within half a quantization step). ``check_equivalent`` then runs the student with its
quantizers off against the teacher: calibrate's rewrites are exact in float, so anything but a
near-perfect match means the artifact was calibrated from another model, which is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertopt.errors import BertoptError
from bertopt.graph import QMAX, attr, constant_values

GEMM_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1}  # op -> index of the weight input
EQ_MUL, EQ_ADD = "_bertopt_eq_mul", "_bertopt_eq_add"


@dataclass
class GemmRange:
    node: str
    act_scale: float | None  # per-tensor activation scale at the GEMM input (None: float input)
    weight: np.ndarray  # dequantized weight, [in, N]
    weight_scale: np.ndarray  # [N]
    pre_mul: np.ndarray | None = None  # equalization in front of the activation quantizer: x * mul + add
    pre_add: np.ndarray | None = None
    bias: np.ndarray | None = None  # [N], the constant added to the GEMM output


@dataclass
class InitRanges:
    source: str
    linears: dict[str, GemmRange] = field(default_factory=dict)  # module name -> its GEMM
    unmatched_gemms: list[str] = field(default_factory=list)
    exact: int = 0  # matched GEMMs whose weight was checked value by value


def read_qdq_gemms(onnx_path: Path) -> list[GemmRange]:
    """Every GEMM of a Q/DQ model whose weight is quantized, with its scales, equalization and bias."""
    import onnx

    from bertopt.passes.qkv_bias import split_qkv_bias

    model = onnx.load(str(onnx_path))
    model, _ = split_qkv_bias(model)  # a fused MultiHeadAttention holds the Q/K/V biases
    reader = _QdqReader(model.graph, onnx_path)
    return [gr for node in model.graph.node if node.op_type in GEMM_WEIGHT_INPUT and (gr := reader.gemm(node)) is not None]


class _QdqReader:
    """Lookups over one Q/DQ graph, and the steps that read one GEMM: its weight, activation scale and
    equalization, and bias."""

    def __init__(self, g, onnx_path: Path):
        self.path = onnx_path
        self.value = constant_values(g)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def gemm(self, node) -> GemmRange | None:
        w = self.weight(node)
        if w is None:
            return None
        wf, ws = w
        gr = GemmRange(node=node.name, act_scale=None, weight=wf, weight_scale=ws)
        self.activation(node, gr)
        self.bias(node, gr)
        return gr

    def dq_of(self, name: str):
        """(scale, zero point, axis, int values or None, source float or None, Q input) for a DQ output."""
        n = self.producer.get(name)
        if n is None or n.op_type != "DequantizeLinear":
            return None
        scale = self.value(n.input[1])
        zp = self.value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        q = self.value(n.input[0])
        src, q_in = None, None
        qn = self.producer.get(n.input[0])
        if q is None and qn is not None and qn.op_type == "QuantizeLinear":
            q_in = qn.input[0]
            src = self.value(q_in)
        return scale, zp, attr(n, "axis", 1), q, src, q_in

    def weight(self, node) -> tuple[np.ndarray, np.ndarray] | None:
        """(dequantized weight [in, N], per-output-channel scales [N]), None for a GEMM without a quantized weight."""
        wname = node.input[GEMM_WEIGHT_INPUT[node.op_type]]
        transposed = bool(node.op_type == "Gemm" and attr(node, "transB", 0))
        p = self.producer.get(wname)
        if p is not None and p.op_type == "Transpose" and list(attr(p, "perm", [1, 0])) == [1, 0]:
            transposed, wname = not transposed, p.input[0]
        w = self.dq_of(wname)
        if w is None:
            return None
        scale, zp, axis, q, src, _ = w
        if q is None and src is None:
            return None  # an activation x activation MatMul (attention), not a weight GEMM
        if zp is not None and np.any(zp != 0):
            raise BertoptError(f"{self.path}: weight zero point of '{node.name}' is not 0", hint="--init-from needs symmetric INT8 (calibrate's)")
        if q is None:
            q = np.clip(np.round(src / _bcast(scale, src.ndim, axis)), -128, 127)
        if q.ndim != 2:
            return None
        wf = q.astype(np.float32) * _bcast(scale, q.ndim, axis)
        scale_arr = np.asarray(scale, np.float32).reshape(-1)
        if transposed:
            wf = wf.T
            axis = 1 - (axis % 2)
        if scale_arr.size == 1:
            ws = np.full(wf.shape[1], scale_arr[0], np.float32)
        elif axis % 2 == 1 and scale_arr.size == wf.shape[1]:
            ws = scale_arr
        else:
            return None  # per-input-channel weight scales: not calibrate's placement
        return wf, ws

    def activation(self, node, gr: GemmRange) -> None:
        """The input quantizer's scale and the equalization in front of it."""
        a = self.dq_of(node.input[0])
        if a is not None and a[5] is not None:
            s, azp = a[0], a[1]
            if azp is not None and np.any(azp != 0):
                raise BertoptError(f"{self.path}: activation zero point of '{node.name}' is not 0", hint="--init-from needs symmetric INT8 (calibrate's)")
            gr.act_scale = float(np.asarray(s).reshape(-1)[0])
            gr.pre_mul, gr.pre_add = self.pre_affine(a[5], gr.weight.shape[0])

    def pre_affine(self, t: str, width: int):
        """Walk up from the activation quantizer's input through Mul/Add/Sub by per-channel constants."""
        mul, add = np.ones(width, np.float32), np.zeros(width, np.float32)
        found = False
        for _ in range(4):
            p = self.producer.get(t)
            if p is None or p.op_type not in ("Mul", "Add", "Sub") or len(p.input) != 2:
                break
            c0, c1 = self.value(p.input[0]), self.value(p.input[1])
            c, other = (c1, p.input[0]) if c1 is not None else (c0, p.input[1])
            if c is None or (c0 is not None and c1 is not None) or c.ndim != 1 or c.shape[0] != width:
                break
            c = c.astype(np.float32)
            if p.op_type == "Mul":
                mul = mul * c
            elif p.op_type == "Add":
                add = add + c * mul
            elif c1 is not None:  # x - c
                add = add - c * mul
            else:
                break  # c - x flips the sign: not an equalization
            t, found = other, True
        return (mul, add) if found else (None, None)

    def bias(self, node, gr: GemmRange) -> None:
        """Gemm's C input, plus every constant Add right after the GEMM: fuse may hold the original as
        [1, N] and calibrate's bias correction adds its own Add in front of it."""
        n_out = gr.weight.shape[1]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            b = self.value(node.input[2])
            gr.bias = None if b is None else np.broadcast_to(b.astype(np.float32), (n_out,)).copy()
            beta = float(attr(node, "beta", 1.0))
            if beta != 1.0 and gr.bias is not None:
                gr.bias = gr.bias * beta
        t = node.output[0]
        while True:
            outs = self.consumers.get(t, [])
            if len(outs) != 1 or outs[0].op_type != "Add" or len(outs[0].input) != 2:
                break
            other = outs[0].input[1] if outs[0].input[0] == t else outs[0].input[0]
            b = self.value(other)
            if b is None or b.size != n_out or b.shape[-1] != n_out:
                break
            gr.bias = (0 if gr.bias is None else gr.bias) + b.astype(np.float32).reshape(-1)
            t = outs[0].output[0]


def _bcast(scale, ndim: int, axis: int) -> np.ndarray:
    s = np.asarray(scale, np.float32)
    if s.size == 1:
        return s.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return s.reshape(shape)


def _same_weight(wq: np.ndarray, w: np.ndarray, scale: np.ndarray) -> bool:
    """``wq`` (dequantized, [in, out]) is ``w`` quantized with per-column ``scale``: every value within
    half a step, or clipped at the range end (a weight beyond its channel's amax) with the same sign."""
    s = scale[None, :]
    near = np.abs(wq - w) <= s * 0.5 * 1.001 + 1e-6 * np.abs(w)
    edge = np.abs(wq) >= s * 126.999
    clipped = edge & (np.sign(wq) == np.sign(w)) & (np.abs(w) >= np.abs(wq) - s * 0.5)
    return bool(np.all(near | clipped))


def _expected_weight(gm: GemmRange, w: np.ndarray) -> np.ndarray:
    """The teacher weight ([in, out]) as the calibrated graph should hold it: ``diag(1/mul) W``."""
    if gm.pre_mul is None:
        return w
    with np.errstate(divide="ignore"):
        return w / gm.pre_mul[:, None]


def resolve_init_from(path: str | Path) -> Path:
    """The Q/DQ ONNX of a calibrate artifact folder (or a bare Q/DQ .onnx)."""
    from bertopt.artifacts import load_artifact

    art = load_artifact(path)
    model = art.model_path
    if model.suffix != ".onnx":
        raise BertoptError(f"{path}: --init-from needs a Q/DQ ONNX artifact, this one holds '{model.name}'", hint="pass the folder `bertopt calibrate` wrote")
    return model


def _module_of(node_name: str, names: set[str]) -> str | None:
    """``/model/bert/encoder/layer.0/attention/self/query/MatMul`` -> ``bert.encoder.layer.0.attention.self.query``."""
    parts = [p for p in node_name.split("/") if p][:-1]
    for k in range(len(parts)):
        cand = ".".join(parts[k:])
        if cand in names:
            return cand
    return None


def match_ranges(onnx_path: Path, teacher) -> InitRanges:
    """Map the calibrated model's GEMMs onto the torch model's Linear modules."""
    import torch

    gemms = read_qdq_gemms(onnx_path)
    if not gemms:
        raise BertoptError(
            f"{onnx_path}: no quantized GEMMs (no DequantizeLinear on a MatMul/Gemm weight)",
            hint="--init-from takes the artifact written by `bertopt calibrate` (a Q/DQ model)",
        )
    linears = {n: m for n, m in teacher.named_modules() if isinstance(m, torch.nn.Linear)}
    weights = {n: m.weight.detach().float().cpu().numpy().T for n, m in linears.items()}  # [in, out]
    res = InitRanges(source=str(onnx_path))
    exact = 0  # GEMMs whose weight is the teacher's (times the equalization) to within half a step
    for gm in gemms:
        name = _module_of(gm.node, set(weights))
        if name is not None and name not in res.linears and weights[name].shape == gm.weight.shape:
            # Named: taken as it is. Equalization may also have rescaled its output columns or input
            # rows without a Mul in the graph (the attention output's smoothing folds into V's
            # columns and bias), so its value is only counted, not required, here.
            res.linears[name] = gm
            exact += _same_weight(gm.weight, _expected_weight(gm, weights[name]), gm.weight_scale)
            continue
        for n, w in weights.items():
            if n not in res.linears and w.shape == gm.weight.shape and _same_weight(gm.weight, _expected_weight(gm, w), gm.weight_scale):
                res.linears[n] = gm
                exact += 1
                break
        else:
            res.unmatched_gemms.append(gm.node)
    if exact * 2 < max(len(res.linears), 1):
        raise BertoptError(
            f"{onnx_path}: {exact} of its {len(gemms)} quantized GEMMs hold this model's weights",
            hint="--init-from must be `bertopt calibrate`'s output for the same model (same MODEL_DIR / export)",
        )
    res.exact = exact
    return res


def _equalize_hook(module, args):
    x = args[0]
    return (x * getattr(module, EQ_MUL) + getattr(module, EQ_ADD),) + tuple(args[1:])


def apply_ranges(student, ranges: InitRanges) -> dict:
    """Make the student calibrate's model: weights, biases, amax, equalization; unmatched GEMMs float."""
    import torch

    from bertopt.qat.placement import quantized_linears

    set_, floated, equalized = 0, [], 0
    for name, mod in quantized_linears(student).items():
        gm = ranges.linears.get(name)
        if gm is None or gm.act_scale is None:
            mod.input_quantizer.disable()
            mod.weight_quantizer.disable()
            floated.append(name)
            continue
        dev = mod.weight.device
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(gm.weight.T)).to(dev))
            if mod.bias is not None:
                if gm.bias is not None:
                    b = gm.bias
                elif gm.pre_add is not None:  # no bias found: keep (x*mul + add) W' + b' == x W + b
                    b = mod.bias.detach().cpu().numpy() - gm.pre_add @ gm.weight
                else:
                    b = None
                if b is not None:
                    mod.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)).to(dev))
        mod.input_quantizer.amax = torch.tensor(gm.act_scale * QMAX, dtype=torch.float32, device=dev)
        wq = mod.weight_quantizer
        wq.amax = torch.from_numpy(gm.weight_scale * QMAX).to(dev).reshape(wq.amax.shape)
        if gm.pre_mul is not None:
            mod.register_buffer(EQ_MUL, torch.from_numpy(gm.pre_mul.astype(np.float32)).to(dev))
            mod.register_buffer(EQ_ADD, torch.from_numpy(gm.pre_add.astype(np.float32)).to(dev))
            mod.register_forward_pre_hook(_equalize_hook)
            equalized += 1
        set_ += 1
    return {"from": ranges.source, "linears_set": set_, "weights_checked": ranges.exact, "equalized": equalized,
            "left_float": floated, "unmatched_gemms": ranges.unmatched_gemms}


def check_equivalent(student, teacher, batch: dict, source: str, min_cosine: float = 0.99) -> float:
    """Mean cosine, over real tokens, between the teacher's last hidden states and those of the student
    with its quantizers bypassed (calibrate's equalized float model with its rounded weights). It is
    ~0.9999 for the model the artifact was calibrated from (0.979 when one bias was misread) and ~0.2
    for another fine-tune of the same base, so anything under ``min_cosine`` is a user error."""
    import torch
    import torch.nn.functional as F

    quantizers = [m for n, m in student.named_modules() if n.endswith("_quantizer") and getattr(m, "is_enabled", False)]
    for q in quantizers:
        q.disable()
    was = student.training
    student.eval()
    try:
        with torch.no_grad():
            a = student(**batch, output_hidden_states=True).hidden_states[-1]
            b = teacher(**batch, output_hidden_states=True).hidden_states[-1]
        m = batch["attention_mask"].bool()
        cos = float(F.cosine_similarity(a[m].float(), b[m].float(), dim=-1).mean())
    finally:
        for q in quantizers:
            q.enable()
        student.train(was)
    if cos < min_cosine:
        raise BertoptError(
            f"{source}: the calibrated model does not compute this model's function (hidden-state cosine {cos:.4f} < {min_cosine})",
            hint="--init-from must be `bertopt calibrate`'s output for the same model (same MODEL_DIR / export)",
        )
    return cos
