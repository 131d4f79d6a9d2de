"""The ONNX a TensorRT engine is built from: precision checked against the graph, FP16 in the types, the GEMMs a
Q/DQ graph quantizes (plain Python: no TensorRT needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bertopt.errors import BertoptError
from bertopt.graph import GEMM_OPS

@dataclass
class Prepared:
    model: Any  # onnx.ModelProto
    precision: str
    expected_int8: list[str]
    fp16: dict | None = None


def prepare_onnx(src: Path, precision: str | None, keep_fp32: Sequence[str]) -> Prepared:
    """The ONNX the engine is built from: precision checked against the graph, FP16 in the types.

    int8 needs Q/DQ (TensorRT 11 has no implicit calibration); its float rest is converted to FP16
    (``keep_fp32`` op types stay FP32). fp16 converts a float graph the same way. fp32 builds as is.
    """
    import onnx

    from bertopt.backends.fp16 import FP16_TINY, convert_to_fp16
    from bertopt.graph import precision as precision_of  # `precision` is the one asked for

    model = onnx.load(str(src))
    graph_precision = precision_of(model)
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise BertoptError(
            f"{src}: TensorRT's ONNX parser cannot read ONNX Runtime contrib ops: {', '.join(foreign[:6])}",
            hint="build TensorRT engines from the export/calibrate/qat artifact, not from a graph fused for ONNX Runtime",
        )
    if precision is None:
        precision = "int8" if graph_precision == "int8" else ("fp16" if graph_precision in ("fp32", "fp16") else graph_precision)
    if precision == "int8" and graph_precision != "int8":
        raise BertoptError(
            f"{src}: --precision int8 needs a Q/DQ graph, but this one is {graph_precision}",
            hint="run `bertopt calibrate` (or qat) first: TensorRT 11 removed implicit INT8 calibration, INT8 comes only from Q/DQ",
        )
    if precision in ("fp16", "fp32") and graph_precision == "int8":
        raise BertoptError(
            f"{src}: this graph is INT8 (it has Q/DQ nodes), but --precision {precision} was asked for",
            hint="use --precision int8, or build fp16/fp32 from the export or fuse artifact",
        )
    if precision == "fp32" and graph_precision == "fp16":
        raise BertoptError(f"{src}: this graph is already FP16", hint="build fp32 from the FP32 export")
    if precision == "int8":
        bad = asymmetric_qdq(model)
        if bad:
            raise BertoptError(
                f"{src}: {len(bad)} Q/DQ node(s) use a non-zero or unsigned zero point (e.g. {', '.join(bad[:3])}); "
                "TensorRT supports only symmetric signed INT8 (zero point 0, int8)",
                hint="calibrate for TensorRT with symmetric INT8 (ONNX Runtime's quantize_static: "
                     "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}, QInt8)",
            )
    expected = expected_int8_gemms(model) if precision == "int8" else []
    if precision == "int8" and not expected:
        raise BertoptError(
            f"{src}: the Q/DQ graph quantizes no MatMul/Gemm (no GEMM has dequantized inputs)",
            hint="calibrate with MatMul/Gemm quantization enabled",
        )
    fp16 = None
    if precision in ("int8", "fp16") and graph_precision != "fp16":
        model, rep = convert_to_fp16(model, keep_fp32=tuple(keep_fp32))
        fp16 = rep.to_json()
        from bertopt.ui import note

        if rep.qdq_scales_clamped:
            note(f"build: {rep.qdq_scales_clamped} Q/DQ scale value(s) would be 0 in FP16 (TensorRT rejects non-positive "
                 f"scales): raised to FP16's smallest normal value {FP16_TINY:.3g}")
        if rep.qdq_scales_subnormal:
            note(f"build: {rep.qdq_scales_subnormal} Q/DQ scale value(s) are below FP16's normal range and lose precision in FP16")
    return Prepared(model=model, precision=precision, expected_int8=expected, fp16=fp16)


def asymmetric_qdq(model) -> list[str]:
    """Q/DQ nodes TensorRT cannot take: a zero point that is not all 0, or not int8 (uint8)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    bad = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or not n.input[2]:
            continue
        zp = n.input[2]
        if zp in inits:
            arr, dtype = numpy_helper.to_array(inits[zp]), inits[zp].data_type
        elif zp in consts:
            t = next(a.t for a in consts[zp].attribute if a.name == "value")
            arr, dtype = numpy_helper.to_array(t), t.data_type
        else:
            continue
        if dtype != onnx.TensorProto.INT8 or np.any(arr != 0):
            bad.append(n.name or f"{n.op_type}_{i}")
    return bad


def expected_int8_gemms(model) -> list[str]:
    """Names of the MatMul/Gemm nodes whose both operands come out of DequantizeLinear (possibly
    through a Transpose/Reshape), i.e. the GEMMs TensorRT should run in INT8."""
    producers = {o: n for n in model.graph.node for o in n.output}
    passthrough = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast"}

    def from_dq(name: str, depth: int = 0) -> bool:
        n = producers.get(name)
        if n is None or depth > 3:
            return False
        if n.op_type == "DequantizeLinear":
            return True
        return n.op_type in passthrough and bool(n.input) and from_dq(n.input[0], depth + 1)

    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type in GEMM_OPS and len(n.input) >= 2 and from_dq(n.input[0]) and from_dq(n.input[1]):
            out.append(n.name or f"{n.op_type}_{i}")
    return out
