"""FP16 in the ONNX types, for strongly typed TensorRT networks (TensorRT 11 has no FP16 builder flag).

``convert_to_fp16(model)`` runs ONNX Runtime's converter
(``onnxruntime.transformers.float16.convert_float_to_float16``) with the op types in ``keep_fp32``
blocked (LayerNormalization and Softmax by default: their reductions overflow or lose precision in
FP16; the library puts Cast nodes around them) and the graph's I/O types kept (``keep_io_types``), so
callers feed and read float32/int64 as before. The library clamps values to the FP16 range, so an
attention mask built as ``(1 - mask) * finfo(float32).min`` becomes ``-65504`` instead of ``-inf``
(``0 * -inf`` is NaN).

Around it, the steps the library does not do (measured on the real MiniLM and its calibrated Q/DQ
model, ``benchmarks/fp16_compare.py``):
- Q/DQ graphs need QuantizeLinear/DequantizeLinear with FP16 scales, which ONNX allows from opset 19;
  the library keeps the opset (17) and writes an invalid graph, so older graphs are moved to 19 first.
- Q/DQ scales that would round to 0 in FP16 are raised to FP16's smallest positive normal value
  (TensorRT rejects non-positive scales) and counted; the library maps them to its ``min_positive_val``.
- The library rounds the output of a kept op through FP16 when the reader is another kept op or a float
  graph output (FP32 -> FP16 -> FP32 Casts): the round trip is dropped (``_drop_round_trips``).
- The library's output is not topologically sorted (``onnx.checker`` rejects it; TensorRT's parser
  reads nodes in order): onnx-graphsurgeon's ``toposort`` puts it in order, then full shape inference
  and the checker run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bertopt.graph import opset_version

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = float(np.finfo(np.float16).tiny)  # 6.1e-5, the smallest positive normal FP16 value
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DEFAULT_KEEP = ("LayerNormalization", "Softmax")


@dataclass
class Fp16Report:
    converted_nodes: int = 0
    kept_fp32_nodes: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    initializers_converted: int = 0
    values_clamped: int = 0  # float values beyond +-65504 in converted initializers/constants
    qdq_scales_subnormal: int = 0  # Q/DQ scales below FP16's normal range (~6.1e-5): they lose precision
    qdq_scales_clamped: int = 0  # Q/DQ scales that would be 0 in FP16 (below ~3e-8): raised to FP16_TINY
    opset_from: int | None = None
    opset_to: int | None = None
    converter: str = "onnxruntime.transformers.float16.convert_float_to_float16"

    def to_json(self) -> dict:
        return dict(self.__dict__)


def convert_to_fp16(model, keep_fp32: tuple[str, ...] | list[str] = DEFAULT_KEEP, keep_io_types: bool = True):
    """Return ``(fp16_model, Fp16Report)``; ``model`` is not modified."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model, rep = _to_qdq_opset(onnx.ModelProto.FromString(model.SerializeToString()))
    _raise_underflowing_scales(model, rep)
    keep = list(keep_fp32)
    m16 = convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + keep)
    m16 = _finish(m16)
    _describe(model, m16, set(keep), rep)
    return m16, rep


def _to_qdq_opset(model):
    """FP16 Q/DQ scales need opset 19: move a Q/DQ graph there first."""
    from bertopt.errors import BertoptError

    rep = Fp16Report(opset_from=opset_version(model))
    if {n.op_type for n in model.graph.node} & set(QDQ_OPS) and rep.opset_from < 19:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, 19)
        except Exception as e:  # noqa: BLE001 - the converter's failures are about this graph
            raise BertoptError(
                f"cannot move the Q/DQ graph from opset {rep.opset_from} to 19 for FP16 scales ({type(e).__name__}: {str(e)[:200]})",
                hint="export (and quantize) at opset 19 or newer",
            ) from None
    rep.opset_to = opset_version(model)
    return model, rep


def _qdq_scale_names(model) -> set[str]:
    return {n.input[1] for n in model.graph.node if n.op_type in QDQ_OPS and len(n.input) > 1}


def _raise_underflowing_scales(model, rep: Fp16Report) -> None:
    """FP32 Q/DQ scale initializers: values that would round to 0 in FP16 -> FP16_TINY (counted);
    subnormal ones are counted (they keep fewer significant bits)."""
    from onnx import TensorProto, numpy_helper

    names = _qdq_scale_names(model)
    for t in model.graph.initializer:
        if t.name not in names or t.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(t)
        underflow = (arr > 0) & (arr.astype(np.float16) == 0)
        rep.qdq_scales_clamped += int(np.count_nonzero(underflow))
        rep.qdq_scales_subnormal += int(np.count_nonzero((arr > 0) & ~underflow & (arr < FP16_TINY)))
        if underflow.any():
            t.CopyFrom(numpy_helper.from_array(np.where(underflow, np.float32(FP16_TINY), arr).astype(np.float32), t.name))


def _finish(model):
    """Nodes in topological order (onnx-graphsurgeon), then full shape inference and the checker."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    _drop_round_trips(graph)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    onnx.checker.check_model(out)
    return out


def _drop_round_trips(graph) -> int:
    """Cast(to FP32) of Cast(to FP16) of an FP32 tensor reads the FP32 tensor instead. The library
    writes such a round trip between adjacent kept ops and before a float graph output fed by a kept
    op (the last LayerNorm -> token_embeddings): a needless FP16 rounding, which a strongly typed
    TensorRT network would execute. The outer Cast stays (FP32 -> FP32, an identity) so names hold."""
    from onnx import TensorProto

    count = 0
    for node in graph.nodes:
        if node.op != "Cast" or node.attrs.get("to") != TensorProto.FLOAT or not node.inputs[0].inputs:
            continue
        inner = node.inputs[0].inputs[0]
        if inner.op == "Cast" and inner.attrs.get("to") == TensorProto.FLOAT16 and inner.inputs[0].dtype == np.float32:
            node.inputs[0] = inner.inputs[0]
            count += 1
    return count


def _float_values(model) -> dict[str, np.ndarray]:
    """FP32 initializers and Constant-node values, by name."""
    from onnx import TensorProto, numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _describe(src, m16, keep: set[str], rep: Fp16Report) -> None:
    """What the conversion did, by comparing the graphs (for the manifest)."""
    from onnx import TensorProto

    for n in src.graph.node:
        if n.op_type in keep:
            rep.kept_fp32_nodes[n.op_type] = rep.kept_fp32_nodes.get(n.op_type, 0) + 1
        else:
            rep.converted_nodes += 1
    rep.casts_inserted = sum(n.op_type == "Cast" for n in m16.graph.node) - sum(n.op_type == "Cast" for n in src.graph.node)
    half = {t.name for t in m16.graph.initializer if t.data_type == TensorProto.FLOAT16}
    half |= {n.output[0] for n in m16.graph.node if n.op_type == "Constant" and any(
        a.name == "value" and a.t.data_type == TensorProto.FLOAT16 for a in n.attribute)}
    before = _float_values(src)
    rep.initializers_converted = sum(1 for t in src.graph.initializer if t.name in half and t.name in before)
    rep.values_clamped = int(sum(np.count_nonzero(np.abs(v) > FP16_MAX) for k, v in before.items() if k in half))
