"""``run_build(backend="openvino")``: ONNX -> OpenVINO IR, compiled (and cached) per shape, INT8 checked, parity checked."""

from __future__ import annotations

import json
from pathlib import Path


from bertopt.artifacts import Artifact, load_artifact, up_to_date, write_artifact
from bertopt.backends.openvino import CACHE_DIR, IR_FILE, PRECISIONS_FILE, WEIGHTS_FILE, require_openvino
from bertopt.backends.openvino import compile as oc
from bertopt.backends.openvino.shapes import PADDING_RULE, Bucket, merge, parse_shapes, plan_buckets
from bertopt.backends.hf_folder import write_hf_folder
from bertopt.backends.options import BuildOptions
from bertopt.errors import BertoptError
from bertopt.ui import note, skipped

PARITY_MIN = 0.99  # OpenVINO vs ONNX Runtime on the input graph: below this the conversion is broken, not rounded


def build_stage(art: Artifact, src: Path, out: Path, o: BuildOptions, data_path: Path | None, *, force: bool) -> Artifact:
    """OpenVINO runs the graph's own precision (Q/DQ -> INT8 layers); ``o.precision`` is checked against it."""
    from bertopt.backends.onnxruntime import physical_cores
    from bertopt.backends.stage import stage_inputs
    from bertopt.graph import precision as graph_precision

    detected = graph_precision(src)
    if o.precision is not None and o.precision != detected:
        raise BertoptError(f"{src}: the graph is {detected}, but --precision {o.precision} was asked for",
                           hint=("for int8 run `bertopt calibrate` (or qat) first" if o.precision == "int8" else
                                 "OpenVINO runs the graph's own types; for half-precision float ops pass --inference-precision bf16/f16"))
    max_length = int(art.model_info.get("max_length") or 512)
    buckets, planned = _plan(art, o, data_path, max_length)
    threads = o.threads or physical_cores()
    props = oc.properties(threads, o.inference_precision)
    inputs = stage_inputs(art, src, data_path)
    params = {"backend": "openvino", "precision": detected, "buckets": [b.spec() for b in buckets], "threads": o.threads,
              "inference_precision": o.inference_precision, "data": str(data_path) if data_path else None, "text_column": o.text_column}
    if (done := up_to_date(out, "build", inputs, params, force)) is not None:
        skipped("build", out)
        return done
    ov = require_openvino()
    from bertopt.ui import console

    with write_artifact(out, "build", inputs, params) as w:
        with console.status("build: openvino: converting") as status, w.timed("convert"):
            _convert(src, w.add_output("model", IR_FILE))
            w.add_output("weights", WEIGHTS_FILE)
            status.update("build: openvino: compiling")
            shapes = _compile_all(w.dir, buckets, props, src, detected, o.inference_precision)
        w.add_output("cache", CACHE_DIR)
        w.add_output("precisions", PRECISIONS_FILE).write_text(json.dumps(shapes, indent=1) + "\n")
        with console.status("build: openvino: parity vs ONNX Runtime"), w.timed("parity"):
            w.metrics["parity"] = parity(art, src, w.dir, buckets, props)
        w.copy_tokenizer(art.tokenizer_dir)
        w.model = dict(art.model_info)
        write_hf_folder(w, w.model)  # sentence-transformers (backend="openvino") / optimum-intel load the folder as it is
        w.extra["build"] = {
            "backend": "openvino", "precision": detected, "openvino": ov.__version__, "device": oc.DEVICE,
            "cpu": oc.device_name(), "compile_properties": props, "device_properties": shapes["dynamic"]["properties"],
            "inference_precision": o.inference_precision, "shapes": "static" if buckets else "dynamic",
            "buckets": [b.spec() for b in buckets], "beyond_buckets": "dynamic" if buckets else None,
            "overpadded": PADDING_RULE if buckets else None,
            "buckets_planned_from": planned, "int8_gemms": shapes["dynamic"]["int8_gemms"],
            "layer_precisions": shapes["dynamic"]["layer_precisions"], "int8_check": shapes["dynamic"]["int8_check"],
        }
    _report(out, w.extra["build"], w.metrics["parity"])
    return load_artifact(out)


def _plan(art: Artifact, o: BuildOptions, data_path: Path | None, max_length: int) -> tuple[list[Bucket], dict | None]:
    explicit, cover = parse_shapes(o.shapes, max_length)
    if cover is None:
        return explicit, None
    if data_path is None:
        raise BertoptError("--shapes auto plans buckets from real texts, but no --data was given",
                           hint="pass --data FILE, or give the buckets explicitly (e.g. --shapes 1x16,1x32,8x128)")
    from bertopt.backends.profiles import length_histogram, token_lengths
    from bertopt.data import load_texts, load_tokenizer

    texts = load_texts(data_path, text_column=o.text_column).texts
    lengths = token_lengths(load_tokenizer(art.tokenizer_dir, where=str(art.path)), texts, max_length)
    planned = plan_buckets(lengths, max_length, cover)
    return merge(explicit, planned), {"data": str(data_path), "texts": len(lengths), "max_tokens": max(lengths),
                                      "planned": [b.spec() for b in planned], "length_histogram": length_histogram(lengths, max_length)}


def _convert(src: Path, xml: Path) -> None:
    import openvino as ov

    try:
        model = ov.convert_model(str(src))
    except Exception as e:  # noqa: BLE001 - the ONNX frontend's errors are about the user's graph
        raise BertoptError(f"{src}: OpenVINO cannot convert this ONNX model ({oc.first_line(e)})",
                           hint="build for --backend onnxruntime, or fuse with --target tensorrt (standard ONNX ops only)") from None
    ov.save_model(model, str(xml), compress_to_fp16=False)  # keep the weights as the graph has them


def _compile_all(d: Path, buckets: list[Bucket], props: dict, src: Path, precision: str, hint: str) -> dict:
    """Compile the dynamic model and every bucket into ``d/cache``; their properties, precisions and INT8 checks.
    Fails when a GEMM the Q/DQ graph quantizes runs in float, or a layer runs in bf16/f16 that was not asked for."""
    from bertopt.backends.tensorrt.prepare import expected_int8_gemms
    from bertopt.graph import load

    expected = expected_int8_gemms(load(src)) if precision == "int8" else []
    c = oc.core(d / CACHE_DIR)
    model = oc.read_ir(c, d / IR_FILE)
    shapes = {}
    for b in [None, *buckets]:
        compiled = oc.compile_for(c, model, b, props, src)
        layers = oc.runtime_layers(compiled)
        check = oc.check_int8(layers, expected) if expected else None
        shapes["dynamic" if b is None else b.spec()] = rec = {
            "properties": oc.read_properties(compiled), "int8_gemms": oc.int8_gemms(layers),
            "layer_precisions": oc.layer_precisions(layers), "int8_check": check.to_json() if check else None,
            "reduced_float": oc.float_precisions(layers)}
        where = f"OpenVINO ({'dynamic shapes' if b is None else 'bucket ' + b.spec()})"
        if check is not None and not check.ok:
            bad = ", ".join(f"{k} ({v})" for k, v in list(check.fell_back.items())[:6]) or f"none of {check.expected} found in the runtime graph"
            raise BertoptError(f"{src}: {where} does not run {len(check.fell_back) or check.expected} GEMM(s) the Q/DQ graph quantizes in INT8: {bad}",
                               hint="OpenVINO could not fuse their Q/DQ (re-calibrate with Q/DQ on both MatMul inputs), or build for "
                                    "--backend onnxruntime; nothing was written")
        if hint == "f32" and rec["reduced_float"]:
            raise BertoptError(f"{src}: {where} runs layers in {'/'.join(rec['reduced_float'])} although INFERENCE_PRECISION_HINT is f32",
                               hint="report it with `bertopt inspect`; nothing was written")
    return shapes


def parity(art: Artifact, src: Path, d: Path, buckets: list[Bucket], props: dict) -> dict:
    """Cosine of the compared output, OpenVINO (dynamic, and every bucket) vs ONNX Runtime on the input graph, on real sentences."""
    from bertopt.backends.onnxruntime import make_session
    from bertopt.backends.openvino.runner import OpenVINORunner
    from bertopt.data import load_tokenizer, tokenize
    from bertopt.export.stage import PARITY_TEXTS
    from bertopt.outputs import choose_for_arrays, row_cosines

    runner = OpenVINORunner(d / IR_FILE, buckets, props, d / CACHE_DIR)
    sess = make_session(src, threads=int(props["INFERENCE_NUM_THREADS"]))
    tok = load_tokenizer(art.tokenizer_dir, where=str(art.path))
    out: dict = {"texts": len(PARITY_TEXTS)}
    for b in [None, *buckets]:
        n, seq = (len(PARITY_TEXTS), 128) if b is None else (b.batch, b.seq)
        feeds = tokenize(tok, [PARITY_TEXTS[i % len(PARITY_TEXTS)] for i in range(n)], runner.input_names, seq)
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        got = runner.run_on(b, feeds)
        choice = choose_for_arrays(ref, task=art.task, where=str(src))
        cos = row_cosines(*(choice.vectors(x[choice.name], feeds["attention_mask"]) for x in (ref, got)))
        out["dynamic" if b is None else b.spec()] = round(float(cos.min()), 6)
        out["output"] = choice.name
    worst = min(v for k, v in out.items() if k not in ("texts", "output"))
    out["cosine_min"] = worst
    if worst < PARITY_MIN:
        raise BertoptError(f"{src}: OpenVINO's '{out['output']}' differs from ONNX Runtime's on the same graph (cosine min {worst:.4f} < {PARITY_MIN})",
                           hint="build for --backend onnxruntime; nothing was written")
    return out


def _report(out: Path, b: dict, par: dict) -> None:
    check = b.get("int8_check") or {}
    int8 = f" INT8 GEMMs {b['int8_gemms']}" + (f" ({check['int8']}/{check['expected']} of the Q/DQ GEMMs verified)" if check else "")
    shapes = ("buckets " + ",".join(b["buckets"]) + " (other shapes: dynamic)") if b["buckets"] else "dynamic shapes"
    note(f"build: {out / IR_FILE}  backend=openvino {b['openvino'].split('-')[0]} precision={b['precision']}{int8}; {shapes}; "
         f"threads={b['compile_properties']['INFERENCE_NUM_THREADS']} hint=LATENCY inference_precision={b['inference_precision']}; "
         f"'{par['output']}' cosine vs ONNX Runtime min {par['cosine_min']:.5f}")
