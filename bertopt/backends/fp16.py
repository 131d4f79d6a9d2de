"""FP16 in the ONNX types, for strongly typed TensorRT networks (TensorRT 11 has no FP16 builder flag).

``convert_to_fp16(model)`` turns the float32 tensors of a graph into float16, except the op types in
``keep_fp32`` (LayerNormalization and Softmax by default: their reductions overflow or lose precision
in FP16), which get Cast nodes around them. Constants are clamped to the FP16 range first, so an
attention mask built as ``(1 - mask) * finfo(float32).min`` becomes ``-65504`` instead of ``-inf``
(``0 * -inf`` is NaN). Graph inputs and outputs keep their types (``keep_io_types``), so callers
feed and read float32/int64 as before.

Q/DQ graphs (INT8 GEMMs, the float rest in FP16) need QuantizeLinear/DequantizeLinear with FP16
scales, which ONNX allows from opset 19: older graphs are converted to opset 19 first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DEFAULT_KEEP = ("LayerNormalization", "Softmax")


@dataclass
class Fp16Report:
    converted_nodes: int = 0
    kept_fp32_nodes: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    initializers_converted: int = 0
    values_clamped: int = 0
    qdq_scales_subnormal: int = 0  # Q/DQ scales below FP16's normal range (~6.1e-5): they lose precision
    opset_from: int | None = None
    opset_to: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def convert_to_fp16(model, keep_fp32: tuple[str, ...] | list[str] = DEFAULT_KEEP, keep_io_types: bool = True):
    """Return ``(fp16_model, Fp16Report)``; ``model`` is not modified."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bertopt.errors import BertoptError

    model = onnx.ModelProto.FromString(model.SerializeToString())
    rep = Fp16Report(opset_from=default_opset(model))
    ops = {n.op_type for n in model.graph.node}
    if ops & set(QDQ_OPS) and rep.opset_from < 19:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, 19)
        except Exception as e:  # noqa: BLE001 - the converter's failures are about this graph
            raise BertoptError(
                f"cannot move the Q/DQ graph from opset {rep.opset_from} to 19 for FP16 scales ({type(e).__name__}: {str(e)[:200]})",
                hint="export (and quantize) at opset 19 or newer",
            ) from None
    rep.opset_to = default_opset(model)

    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = model.graph
    ftype: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            ftype[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        ftype[t.name] = t.data_type

    keep = set(keep_fp32)
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def is_float(name: str) -> bool:
        return ftype.get(name) == TensorProto.FLOAT

    # Q/DQ nodes are converted like any node (opset 19 takes FP16 x and scale); their int8 side is
    # untouched. A kept op type never includes them.
    def kept(n) -> bool:
        return n.op_type in keep

    # 1) initializers: FP32 -> FP16 (clamped) unless only kept nodes read them.
    new_inits = []
    for t in g.initializer:
        users = consumers.get(t.name, [])
        if t.data_type == TensorProto.FLOAT and users and not all(kept(u) for u in users):
            arr = numpy_helper.to_array(t)
            rep.values_clamped += int(np.count_nonzero(np.abs(arr) > FP16_MAX))
            arr16 = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
            if any(u.op_type in QDQ_OPS and len(u.input) > 1 and u.input[1] == t.name for u in users):
                rep.qdq_scales_subnormal += int(np.count_nonzero((arr != 0) & (np.abs(arr) < np.finfo(np.float16).tiny)))
            new_inits.append(numpy_helper.from_array(arr16, t.name))
            ftype[t.name] = TensorProto.FLOAT16
            rep.initializers_converted += 1
        else:
            new_inits.append(t)
    del g.initializer[:]
    g.initializer.extend(new_inits)

    # 2) nodes: kept ones get casts; the others have their float attributes/outputs switched.
    new_nodes = []
    casted: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casted:
            out = f"{name}__to_{'fp32' if to == TensorProto.FLOAT else 'fp16'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            casted[key] = out
            rep.casts_inserted += 1
        return casted[key]

    # graph inputs of float type: cast once to FP16 for the FP16 consumers.
    input_remap: dict[str, str] = {}
    for vi in g.input:
        if vi.name in inits or not is_float(vi.name):
            continue
        if keep_io_types:
            input_remap[vi.name] = cast(vi.name, TensorProto.FLOAT16)
        else:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
            ftype[vi.name] = TensorProto.FLOAT16

    half: set[str] = {n for n, t in ftype.items() if t == TensorProto.FLOAT16}
    fp32_out: set[str] = set()  # float outputs of kept nodes: FP32, cast to FP16 for converted readers
    for n in g.node:
        if kept(n):
            rep.kept_fp32_nodes[n.op_type] = rep.kept_fp32_nodes.get(n.op_type, 0) + 1
            for idx, name in enumerate(n.input):
                if name in half:
                    n.input[idx] = cast(name, TensorProto.FLOAT)
            new_nodes.append(n)
            fp32_out.update(name for name in n.output if name and ftype.get(name, TensorProto.FLOAT) == TensorProto.FLOAT)
            continue
        for idx, name in enumerate(n.input):
            if name in input_remap:
                n.input[idx] = input_remap[name]
            elif name in fp32_out:
                n.input[idx] = cast(name, TensorProto.FLOAT16)
        _switch_attributes(n, rep)
        for name in n.output:
            if is_float(name) or _produces_float(n):
                half.add(name)
        rep.converted_nodes += 1
        new_nodes.append(n)

    # 3) float graph outputs: produced in FP16 by converted nodes -> cast back to FP32 for the user.
    final_nodes = []
    renames: dict[str, str] = {}
    for vi in g.output:
        if ftype.get(vi.name) == TensorProto.FLOAT and vi.name in half:
            if keep_io_types:
                renames[vi.name] = f"{vi.name}__fp16"
            else:
                vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    for n in new_nodes:
        for idx, name in enumerate(n.input):
            if name in renames:
                n.input[idx] = renames[name]
        for idx, name in enumerate(n.output):
            if name in renames:
                n.output[idx] = renames[name]
        final_nodes.append(n)
    for orig, tmp in renames.items():
        final_nodes.append(helper.make_node("Cast", [tmp], [orig], to=TensorProto.FLOAT, name=f"{orig}__cast_fp32"))
        rep.casts_inserted += 1
    del g.node[:]
    g.node.extend(_toposort(final_nodes, g))

    # 4) types: drop inferred value_info and infer again from the new graph.
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model, rep


def _produces_float(n) -> bool:
    from onnx import TensorProto

    for a in n.attribute:
        if n.op_type == "Cast" and a.name == "to":
            return a.i in (TensorProto.FLOAT, TensorProto.FLOAT16)
    return False


def _switch_attributes(n, rep: Fp16Report) -> None:
    """Float32 in attributes -> float16: Cast(to=FLOAT), Constant/ConstantOfShape values, EyeLike/Random dtypes."""
    from onnx import TensorProto, helper, numpy_helper

    if n.op_type == "ConstantOfShape" and not any(a.name == "value" for a in n.attribute):
        # the default value is a float32 zero
        n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16), "")))
        return
    for a in n.attribute:
        if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif a.name in ("value", "value_float", "value_floats") and n.op_type in ("Constant", "ConstantOfShape"):
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(a.t)
                rep.values_clamped += int(np.count_nonzero(np.abs(arr) > FP16_MAX))
                a.t.CopyFrom(numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), a.t.name))
            elif a.name == "value_float":
                arr = np.array(a.f, dtype=np.float32)
                rep.values_clamped += int(abs(a.f) > FP16_MAX)
                t = numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), "")
                a.CopyFrom(_tensor_attr("value", t))
            elif a.name == "value_floats":
                arr = np.array(list(a.floats), dtype=np.float32)
                rep.values_clamped += int(np.count_nonzero(np.abs(arr) > FP16_MAX))
                t = numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), "")
                a.CopyFrom(_tensor_attr("value", t))
        elif a.name == "dtype" and a.i == TensorProto.FLOAT and n.op_type in ("EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
            a.i = TensorProto.FLOAT16


def _tensor_attr(name: str, t):
    from onnx import helper

    return helper.make_attribute(name, t)


def _toposort(nodes: list, g) -> list:
    """Order ``nodes`` so every input is produced before it is read (inserted casts sit anywhere)."""
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    producers = {}
    for n in nodes:
        for o in n.output:
            producers[o] = n
    out, placed = [], set()
    pending = list(nodes)
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all(i in available or i not in producers for i in n.input):
                out.append(n)
                placed.add(id(n))
                available.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:  # a cycle or dangling input: keep the original order for the checker to report
            out.extend(rest)
            break
        pending = rest
    return out
