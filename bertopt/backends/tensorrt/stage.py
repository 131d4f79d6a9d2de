"""``run_build(backend="tensorrt")``: profiles planned, the ONNX prepared, the engine built, its INT8 check and
precision map written."""

from __future__ import annotations

import json
from pathlib import Path

from bertopt.backends.tensorrt import ENGINE_FILE, PRECISION_MAP_FILE, PROFILES_FILE, default_timing_cache, require_tensorrt
from bertopt.backends.tensorrt.engine import build_engine
from bertopt.backends.tensorrt.inspector import check_int8, parse_layer_info, precision_map, unique_layers
from bertopt.backends.tensorrt.prepare import prepare_onnx
from bertopt.errors import BertoptError

def build_stage(art, src: Path, out: Path, o, data_path, *, force: bool):
    """``run_build(backend="tensorrt")`` (``o`` a ``BuildOptions``): options are validated before TensorRT is imported."""
    from bertopt.artifacts import load_artifact, up_to_date, write_artifact
    from bertopt.backends.stage import stage_inputs
    from bertopt.ui import skipped

    keep = tuple(k.strip() for k in (o.keep_fp32 or "").split(",") if k.strip())
    max_length = int(art.model_info.get("max_length") or 512)
    input_names = list(art.model_info.get("inputs") or ("input_ids", "attention_mask", "token_type_ids"))
    profiles, planned_from, hist = _plan_profiles(art, o.profile, data_path, o.text_column, max_length)
    prepared = prepare_onnx(src, o.precision, keep)

    cache_path = Path(o.timing_cache).expanduser() if o.timing_cache else default_timing_cache()
    inputs = stage_inputs(art, src, data_path)
    params = {"backend": "tensorrt", "precision": prepared.precision, "profiles": [p.spec() for p in profiles], "keep_fp32": list(keep)}
    if (done := up_to_date(out, "build", inputs, params, force)) is not None:
        skipped("build", out)
        return done
    trt = require_tensorrt()

    with write_artifact(out, "build", inputs, params) as w:
        eb, layers, pmap, check = _write_engine(w, art, prepared, profiles, input_names, cache_path)
        w.extra["build"] = {
            "backend": "tensorrt",
            "precision": prepared.precision,
            "tensorrt": eb.tensorrt_version,
            "strongly_typed": True,
            "keep_fp32": list(keep),
            "fp16_conversion": prepared.fp16,
            "profiles": [p.to_json() for p in profiles],
            "profiles_planned_from": planned_from,
            "length_histogram": hist,
            "max_sequence_length": max(p.seq[2] for p in profiles),
            "max_batch": max(p.batch[2] for p in profiles),
            "timing_cache": eb.timing_cache,
            "build_seconds": eb.build_seconds,
            "gemm_precisions": pmap["gemm_precisions"],
            "int8_check": pmap["int8_check"],
        }
        if check is not None and not check.ok:
            bad = ", ".join(f"{k} ({v})" for k, v in list(check.fell_back.items())[:8])
            raise BertoptError(
                f"{len(check.fell_back)} GEMM(s) that the Q/DQ graph quantizes did not run in INT8: {bad}",
                hint="TensorRT could not fuse their Q/DQ (check the per-layer precisions with --verbose, or re-calibrate with "
                     "Q/DQ on both MatMul inputs); nothing was written",
            )
    _report_build(out, prepared, eb, pmap, profiles, check, layers)
    _ = trt
    return load_artifact(out)


def _plan_profiles(art, profile, data_path, text_column, max_length: int):
    """The optimization profiles (explicit, planned from ``data_path``'s token lengths, or the default),
    where they were planned from and the length histogram (both None unless planned)."""
    from bertopt.backends import profiles as prof

    planned_from = None
    hist = None
    cover = prof.parse_auto(profile, max_length) if profile else 0
    if profile and cover is None:
        profiles = prof.parse_profiles(profile, max_length=max_length)
    elif data_path is not None:
        from bertopt.data import load_texts, load_tokenizer

        texts = load_texts(data_path, text_column=text_column).texts
        tok = load_tokenizer(art.tokenizer_dir, where=str(art.path))
        lengths = prof.token_lengths(tok, texts, max_length)
        profiles = prof.plan_profiles(lengths, max_length=max_length, cover=cover or 0)
        planned_from = {"data": str(data_path), "texts": len(lengths), "max_tokens": max(lengths)}
        hist = prof.length_histogram(lengths, max_length)
    elif profile:
        raise BertoptError("--profile auto plans profiles from real texts, but no --data was given", hint="pass --data FILE, or give explicit profiles")
    else:
        profiles = prof.default_profiles(max_length)
    return profiles, planned_from, hist


def _write_engine(w, art, prepared, profiles, input_names, cache_path: Path):
    """Into the artifact being written: the prepared ONNX, the engine built from it, its precision map,
    profiles and tokenizer. Returns the build, its unique layers, the precision map and the INT8 check."""
    import onnx

    from bertopt.artifacts import MODEL_FILE
    from bertopt.ui import console

    onnx_out = w.add_output("onnx", MODEL_FILE)
    onnx.save(prepared.model, str(onnx_out))
    with console.status("build: tensorrt") as status, w.timed("build"):
        eb = build_engine(onnx_out, profiles, input_names, timing_cache=cache_path, log=lambda m: status.update(f"build: {m}"))
    w.add_output("model", ENGINE_FILE).write_bytes(eb.engine)
    layers = unique_layers(parse_layer_info(eb.layer_info))
    pmap = precision_map(layers)
    check = check_int8(layers, prepared.expected_int8) if prepared.precision == "int8" else None
    pmap["int8_check"] = check.to_json() if check else None
    w.add_output("precision_map", PRECISION_MAP_FILE).write_text(json.dumps(pmap, indent=1) + "\n")
    w.add_output("profiles", PROFILES_FILE).write_text(json.dumps([p.to_json() for p in profiles], indent=1) + "\n")
    w.copy_tokenizer(art.tokenizer_dir)
    w.model = dict(art.model_info)
    return eb, layers, pmap, check


def _report_build(out: Path, prepared, eb, pmap, profiles, check, layers) -> None:
    from bertopt.log import logger
    from bertopt.ui import note

    note(f"build: {out / ENGINE_FILE}  backend=tensorrt {eb.tensorrt_version} precision={prepared.precision} "
         f"GEMMs by precision {pmap['gemm_precisions']} profiles: {'; '.join(p.spec() for p in profiles)}")
    if eb.timing_cache.get("note"):
        note(f"build: timing cache {eb.timing_cache['path']}: {eb.timing_cache['note']}")
    if check is not None and check.unverified:
        note(f"build: {len(check.unverified)} quantized GEMM(s) sit in fused Myelin regions the inspector does not itemize: unverified")
    for layer in layers:
        logger.debug(f"  {layer.precision:6s} {layer.layer_type:28s} {layer.name[:100]}")
