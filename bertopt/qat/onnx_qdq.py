"""Q/DQ ONNX out of the fake-quantized student, and its parity check.

modelopt exports each quantizer as QuantizeLinear -> DequantizeLinear through the legacy exporter;
for a weight that is ``W[out,in] (float) -> Q -> DQ(axis 0) -> Transpose -> MatMul``. ``fold_weights``
turns it into the usual form of a Q/DQ model (what ORT's quantize_static and ``bertopt calibrate``
write, and what TensorRT and ORT's QDQ fusions look for): an int8 initializer ``[in,out]`` ->
``DequantizeLinear(axis 1)`` -> MatMul, which is bit-identical (the float weight is quantized once
instead of at load time) and a quarter of the size.

Each GEMM keeps its own QuantizeLinear -> DequantizeLinear pair even where Q, K and V read the same
tensor: merging them into one shared Q (or DQ) stops ORT's QDQ fusion for those GEMMs (measured: 18
instead of 36 MatMulIntegerToFloat on MiniLM-L6, the other 18 fall back to float MatMul).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertopt.graph import attr, constant_values, set_attr
from bertopt.outputs import row_cosines


def export_qdq(wrapper, args: tuple, path: Path, input_names, outs, axes: dict, opset: int) -> None:
    """torch.onnx.export (legacy) of the fake-quant model. modelopt refuses to export narrow-range signed
    quantizers, so the weight quantizers are exported as full range and ``fold_weights(narrow=True)``
    then clips the int8 weights to [-127, 127], which is what the narrow-range fake quant computed."""
    narrow = [m for n, m in wrapper.named_modules() if n.endswith("weight_quantizer") and getattr(m, "narrow_range", False)]
    for m in narrow:
        m.narrow_range = False
    try:
        _export(wrapper, args, path, input_names, outs, axes, opset)
    finally:
        for m in narrow:
            m.narrow_range = True


def _export(wrapper, args, path, input_names, outs, axes, opset) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from transformers' mask code; parity checks the trace
        torch.onnx.export(
            wrapper, args, str(path), input_names=list(input_names), output_names=list(outs),
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def postprocess(path: Path) -> dict:
    """Drop identity Casts, fold weight quantization into int8 initializers, share duplicate
    equalization Mul/Add; returns counts."""
    import onnx

    model = onnx.load(str(path))
    counts = {"identity_casts_removed": remove_identity_casts(model), "weights_folded": fold_weights(model, narrow=True),
              "equalization_ops_shared": share_constant_ops(model)}
    _prune(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return counts


def remove_identity_casts(model) -> int:
    """Drop Identity nodes and Casts to the type their input already has (modelopt's quantizer export
    leaves float->float Casts that chain Q, K and V's input quantizers one behind another instead of
    reading the same tensor; the exporter puts Identity nodes on initializers with equal values).

    The Casts become Identity here (their types come from ONNX shape inference); onnx_ir's
    ``IdentityEliminationPass`` then removes every Identity, keeping graph output names."""
    import onnx
    from onnx_ir.passes.common import IdentityEliminationPass

    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    for n in g.node:
        if n.op_type == "Cast" and types.get(n.input[0]) and types.get(n.input[0]) == attr(n, "to"):
            n.op_type = "Identity"
            del n.attribute[:]
    before = sum(n.op_type == "Identity" for n in g.node)
    _ir_passes(model, IdentityEliminationPass())
    return before - sum(n.op_type == "Identity" for n in model.graph.node)


def _ir_passes(model, *passes) -> None:
    """Run onnx_ir passes on ``model`` in place."""
    import onnx_ir as ir

    m = ir.serde.deserialize_model(model)
    for p in passes:
        p(m)
    model.CopyFrom(ir.serde.serialize_model(m))


def _keep_nodes(g, drop: set[str]) -> None:
    """Remove the nodes whose first output is in ``drop`` (nodes are keyed by output name: protobuf's
    Python wrappers are not stable objects, so ``id()`` cannot name them)."""
    import onnx

    keep = []
    for n in g.node:
        if not n.output or n.output[0] not in drop:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            keep.append(c)
    del g.node[:]
    g.node.extend(keep)


def fold_weights(model, narrow: bool = True) -> int:
    """``W(float) -> Q -> DQ [-> Transpose]`` becomes ``W(int8) -> DQ`` (transposed when a Transpose followed).

    ``narrow``: signed int8 weights are clipped to [-127, 127] (the weight quantizers' narrow range)."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name for i in g.initializer}
    value = constant_values(g)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    drop, count = set(), 0
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in inits:
            continue
        if len(consumers.get(q.output[0], [])) != 1:
            continue
        w = value(q.input[0])
        scale, zp = value(q.input[1]), value(q.input[2]) if len(q.input) > 2 else None
        if w is None or scale is None or w.ndim != 2:
            continue
        axis = attr(q, "axis", 1) % w.ndim
        s = scale.astype(np.float32)
        if s.size > 1:
            shape = [1, 1]
            shape[axis] = -1
            s = s.reshape(shape)
        z = 0 if zp is None else zp.astype(np.int32).reshape(s.shape if s.ndim else ())
        qmin, qmax = (-128, 127) if zp is None or zp.dtype == np.int8 else (0, 255)
        if narrow and qmin < 0:
            qmin = -127
        # ONNX QuantizeLinear: saturate(round_half_to_even(x / scale) + zero_point)
        qv = np.clip(np.rint(w.astype(np.float32) / s) + z, qmin, qmax).astype(np.int8 if qmin < 0 else np.uint8)
        outs = consumers.get(dq.output[0], [])
        transpose = len(outs) == 1 and outs[0].op_type == "Transpose" and list(attr(outs[0], "perm", [1, 0])) == [1, 0]
        if transpose:
            qv = np.ascontiguousarray(qv.T)
            set_attr(dq, "axis", 1 - axis)
        name = q.input[0] + "_int8"
        g.initializer.append(numpy_helper.from_array(qv, name))
        dq.input[0] = name
        drop.add(q.output[0])
        if transpose:
            t = outs[0]
            for n in consumers.get(t.output[0], []):
                for k, i in enumerate(n.input):
                    if i == t.output[0]:
                        n.input[k] = dq.output[0]
            for k, o in enumerate(g.output):
                if o.name == t.output[0]:
                    raise RuntimeError("a transposed weight is a graph output")
            drop.add(t.output[0])
        count += 1
    _keep_nodes(g, drop)
    return count


def share_constant_ops(model) -> int:
    """Common-subexpression elimination of Mul/Add/Sub by a constant: the equalization that ``--init-from``
    brings in runs once per GEMM in torch (a pre-hook on each Linear), so Q, K and V each export the same
    ``Mul(x, 1/s) -> Add(-c/s)``; one shared pair is what calibrate writes (and one pass over x, not three)."""
    g = model.graph
    value = constant_values(g)
    seen: dict = {}
    rename: dict[str, str] = {}
    drop: set[str] = set()
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
        if n.op_type not in ("Mul", "Add", "Sub") or len(n.input) != 2:
            continue
        vals = [value(i) for i in n.input]
        if (vals[0] is None) == (vals[1] is None):
            continue
        k = 0 if vals[0] is not None else 1
        c = vals[k]
        key = (n.op_type, k, n.input[1 - k], c.tobytes(), c.shape, str(c.dtype))
        if key in seen:
            rename[n.output[0]] = seen[key]
            drop.add(n.output[0])
        else:
            seen[key] = n.output[0]
    for o in g.output:
        if o.name in rename:
            raise RuntimeError(f"cannot merge graph output {o.name}")
    _keep_nodes(g, drop)
    return len(drop)


def _prune(model) -> None:
    """Drop the nodes (Constants) and initializers nothing reads any more (onnx_ir's ``RemoveUnusedNodesPass``)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    _ir_passes(model, RemoveUnusedNodesPass())


# --------------------------------------------------------------------------------------- checks
# The op and kernel counts come from bertopt.graph (op_counts, ort_kernel_counts, int8_gemms).


def torch_onnx_parity(wrapper, onnx_path: Path, feeds_list: list[dict], outs: list[str], task: str, output: str | None = None) -> dict:
    """The exported Q/DQ model on ONNX Runtime (int8 kernels) against the fake-quant torch model.

    Quantization turns float rounding noise into whole quantization steps wherever a value sits on a
    rounding boundary, so max |diff| is not the yardstick: cosine (embeddings, logits rows) and
    argmax agreement (classifiers) are, with max |diff| recorded alongside."""
    import torch

    from bertopt.backends.onnxruntime import make_session

    sess = make_session(onnx_path)
    refs, gots, masks = [], [], []
    for feeds in feeds_list:
        with torch.no_grad():
            ref = wrapper(*(torch.from_numpy(v) for v in feeds.values()))
        got = sess.run(outs, feeds)
        refs.append([r.numpy() for r in ref])
        gots.append(got)
        masks.append(feeds["attention_mask"].astype(bool))
    res: dict = {"texts": int(sum(m.shape[0] for m in masks)), "max_abs_diff": 0.0, "per_output": {}}
    for k, name in enumerate(outs):
        if name == "last_hidden_state":
            r = np.concatenate([x[k][m] for x, m in zip(refs, masks)])
            o = np.concatenate([x[k][m] for x, m in zip(gots, masks)])
        else:
            r = np.concatenate([x[k] for x in refs])
            o = np.concatenate([x[k] for x in gots])
        cos = row_cosines(r, o)
        d = float(np.max(np.abs(r - o)))
        entry = {"max_abs_diff": d, "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
        if name == "logits":
            entry["argmax_agreement"] = float(np.mean(r.argmax(-1) == o.argmax(-1)))
        res["per_output"][name] = entry
        res["max_abs_diff"] = max(res["max_abs_diff"], d)
    from bertopt.outputs import choose_for_onnx

    choice = choose_for_onnx(onnx_path, requested=output, task=task, where=str(onnx_path))
    main = choice.name
    res["cosine_min"] = res["per_output"][main]["cosine_min"]
    res["cosine_mean"] = res["per_output"][main]["cosine_mean"]
    if "argmax_agreement" in res["per_output"][main]:
        res["argmax_agreement"] = res["per_output"][main]["argmax_agreement"]
    res["checked_output"] = main
    res["compared_output"] = choice.describe()
    return res
