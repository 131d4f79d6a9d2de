"""Quantizer ranges taken from a ``bertopt calibrate`` artifact (``--init-from``).

The calibrated Q/DQ model itself is read, not a side file: for every GEMM it holds the activation
scale (QuantizeLinear/DequantizeLinear on the GEMM input) and the weights as DequantizeLinear of int8
(or Q/DQ of float) with per-channel scales. Each quantized GEMM weight is matched to the torch
``nn.Linear`` it came from by value (the dequantized weight lies within half a quantization step of
the FP32 weight, channel by channel), which works whatever the node names are and also when a fuse
pass packed Q/K/V into one weight. Then ``amax = scale * 127`` (symmetric INT8), so the re-exported
QAT model starts from exactly the calibrated scales, and GEMMs the calibrated model left in float
stay float in QAT too (same placement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertopt.errors import BertoptError

GEMM_OPS = {"MatMul": 1, "Gemm": 1, "Attention": 1}  # op -> index of the weight input


@dataclass
class GemmRange:
    node: str
    act_scale: float | None  # per-tensor activation scale at the GEMM input (None: float input)
    weight: np.ndarray  # dequantized weight, [in, N]
    weight_scale: np.ndarray  # [N]


@dataclass
class InitRanges:
    source: str
    linears: dict[str, dict] = field(default_factory=dict)  # module name -> {"input_amax", "weight_amax"}
    unmatched_gemms: list[str] = field(default_factory=list)


def read_qdq_gemms(onnx_path: Path) -> list[GemmRange]:
    """Every GEMM of a Q/DQ model whose weight is quantized, with its scales."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        n = consts.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def attr(node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def dq_of(name: str):
        """(scale, zero point, axis, int values or None, source float or None) when ``name`` is a DQ output."""
        n = producer.get(name)
        if n is None or n.op_type != "DequantizeLinear":
            return None
        scale = value(n.input[1])
        zp = value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        q = value(n.input[0])
        src = None
        if q is None:  # Q/DQ of a float initializer
            qn = producer.get(n.input[0])
            if qn is not None and qn.op_type == "QuantizeLinear":
                src = value(qn.input[0])
        return scale, zp, attr(n, "axis", 1), q, src

    out = []
    for node in g.node:
        if node.op_type not in GEMM_OPS:
            continue
        wname = node.input[GEMM_OPS[node.op_type]]
        transposed = bool(node.op_type == "Gemm" and attr(node, "transB", 0))
        p = producer.get(wname)
        if p is not None and p.op_type == "Transpose" and list(attr(p, "perm", [1, 0])) == [1, 0]:
            transposed, wname = not transposed, p.input[0]
        w = dq_of(wname)
        if w is None:
            continue
        scale, zp, axis, q, src = w
        if q is None and src is None:
            continue  # an activation x activation MatMul (attention), not a weight GEMM
        if zp is not None and np.any(zp != 0):
            raise BertoptError(f"{onnx_path}: weight zero point of '{node.name}' is not 0", hint="--init-from needs symmetric INT8 (calibrate's)")
        if q is None:
            q = np.clip(np.round(src / _bcast(scale, src.ndim, axis)), -128, 127)
        if q.ndim != 2:
            continue
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
            continue  # per-input-channel weight scales: not calibrate's placement
        a = dq_of(node.input[0])
        act = None
        if a is not None:
            s, azp, _, _, _ = a
            if azp is not None and np.any(azp != 0):
                raise BertoptError(f"{onnx_path}: activation zero point of '{node.name}' is not 0", hint="--init-from needs symmetric INT8 (calibrate's)")
            act = float(np.asarray(s).reshape(-1)[0])
        out.append(GemmRange(node=node.name, act_scale=act, weight=wf, weight_scale=ws))
    return out


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
    near = np.abs(wq - w) <= s * 0.5 * 1.001 + 1e-7
    edge = np.abs(wq) >= s * 126.999
    clipped = edge & (np.sign(wq) == np.sign(w)) & (np.abs(w) >= np.abs(wq) - s * 0.5)
    return bool(np.all(near | clipped))


def resolve_init_from(path: str | Path) -> Path:
    """The Q/DQ ONNX of a calibrate artifact folder (or a bare Q/DQ .onnx)."""
    from bertopt.artifacts import load_artifact

    art = load_artifact(path)
    model = art.model_path
    if model.suffix != ".onnx":
        raise BertoptError(f"{path}: --init-from needs a Q/DQ ONNX artifact, this one holds '{model.name}'", hint="pass the folder `bertopt calibrate` wrote")
    return model


def match_ranges(onnx_path: Path, teacher) -> InitRanges:
    """Map the calibrated model's GEMM scales onto the torch model's Linear modules (by weight value)."""
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
    for gm in gemms:
        found = False
        n_in, n_cols = gm.weight.shape
        for name, w in weights.items():
            if name in res.linears or w.shape[0] != n_in or w.shape[1] > n_cols or n_cols % w.shape[1]:
                continue
            k = w.shape[1]
            for j in range(0, n_cols, k):
                s = gm.weight_scale[j : j + k]
                if _same_weight(gm.weight[:, j : j + k], w, s):
                    res.linears[name] = {
                        "input_amax": None if gm.act_scale is None else gm.act_scale * 127.0,
                        "weight_amax": (s * 127.0).astype(np.float32),
                        "gemm": gm.node,
                    }
                    found = True
                    break
            if found and n_cols == w.shape[1]:
                break
        if not found:
            res.unmatched_gemms.append(gm.node)
    if not res.linears:
        raise BertoptError(
            f"{onnx_path}: none of its {len(gemms)} quantized GEMMs has this model's weights",
            hint="--init-from must be `bertopt calibrate`'s output for the same model (same MODEL_DIR)",
        )
    return res


def apply_ranges(student, ranges: InitRanges) -> dict:
    """Set the student's quantizer amax from ``ranges``; GEMMs the calibrated model left float stay float."""
    import torch

    from bertopt.qat.placement import quantized_linears

    set_, floated = 0, []
    for name, mod in quantized_linears(student).items():
        r = ranges.linears.get(name)
        if r is None or r["input_amax"] is None:
            mod.input_quantizer.disable()
            mod.weight_quantizer.disable()
            floated.append(name)
            continue
        dev = mod.weight.device
        mod.input_quantizer.amax = torch.tensor(r["input_amax"], dtype=torch.float32, device=dev)
        wq = mod.weight_quantizer
        mod.weight_quantizer.amax = torch.as_tensor(r["weight_amax"], device=dev).reshape(wq.amax.shape)
        set_ += 1
    return {"from": ranges.source, "linears_set": set_, "left_float": floated, "unmatched_gemms": ranges.unmatched_gemms}
