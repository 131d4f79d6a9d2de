"""The ``build`` stage: an ONNX artifact -> a deployable artifact for one backend.

``onnxruntime`` (CPU, the default): ``model.onnx`` (ORT's offline-optimized graph) + ``session.json``
(the session options it was measured with), loaded by ``backends.onnxruntime.make_session``.

``tensorrt`` (GPU hosts): ``engine.plan`` (strongly typed; INT8 only from Q/DQ, FP16 from the ONNX
types), ``model.onnx`` (the exact ONNX the engine was built from), ``precision_map.json`` (the engine
inspector's per-layer precisions) and ``profiles.json``; the build fails when GEMMs that the Q/DQ
graph quantizes did not run in INT8.

Both record ``manifest["build"] = {"backend", "precision", ...}`` so ``bench`` says what ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertopt.artifacts import MODEL_FILE, Artifact, describe_input, load_artifact, up_to_date, write_artifact
from bertopt.backends.hf_folder import write_hf_folder
from bertopt.backends.options import BuildOptions
from bertopt.errors import BertoptError
from bertopt.ui import note, skipped


def run_build(input: str | Path, out: str | Path, options: BuildOptions | None = None, *, force: bool = False, verbose: bool = False,
              **kwargs: Any) -> Artifact:
    """Build ``input`` (an ONNX artifact or bare ``.onnx``) for ``backend`` into the artifact ``out``.

    The options are a :class:`~bertopt.backends.options.BuildOptions` (``options=``) or its fields as
    keywords (``run_build(m, out, backend="tensorrt", profile="auto")``):

    - ``precision``: int8 | fp16 | fp32. ORT keeps the graph's own precision (Q/DQ -> int8) and only
      checks it; TensorRT builds int8 from a Q/DQ graph (the float rest in FP16), fp16 from a float
      graph (converted in the ONNX types, ``keep_fp32`` op types stay FP32), fp32 as is.
    - ``profile`` (TensorRT): ``"batch=1:8:32,seq=1:128:256"``, several separated by ``;``, or ``auto``
      to plan them from the sequence lengths of the texts in ``data`` (``auto:N``: the last one reaches N).
    - ``tune`` (ORT): measure a small search of session options on this machine (~30 s) instead of
      the fixed defaults; what was measured goes into the manifest.
    - ``timing_cache`` (TensorRT): the tactic timing cache file, kept between builds
      (default ``~/.cache/bertopt/trt-timing.cache``).
    - ``strict``: a graph with no BERT encoder layer is an error (default: a warning).
    """
    from bertopt.paths import resolve_path

    o = BuildOptions.of(options, kwargs)
    out = resolve_path(out)
    art = load_artifact(input)
    src = art.model_path
    if src.suffix != ".onnx":
        raise BertoptError(
            f"{src}: build takes an ONNX model, but this artifact's model is '{src.name}' (stage '{art.stage}')",
            hint="pass the artifact written by export, fuse, calibrate or qat",
        )
    from bertopt.artifacts import check_onnx_readable
    from bertopt.models import check_encoder

    check_onnx_readable(src, f" (output 'model' of {art.path})")
    check_encoder(src, src, "build", o.strict)  # a warning (strict: an error) for a graph with no encoder layer
    if art.tokenizer_dir is None:  # the engine builds, but text cannot reach it through bertopt
        from bertopt.ui import console

        console.print(f"warning: build: no tokenizer beside {src} (no {art.path / 'tokenizer'}): the artifact will run on token ids, "
                      "but bertopt.load(...).encode and bench's text checks need one; build from the "
                      "`bertopt export` artifact, or put a tokenizer/ folder beside the model", style="yellow", markup=False)
    data_path = resolve_path(o.data) if o.data else None
    if data_path is not None and not data_path.is_file():
        raise BertoptError(f"{data_path}: no such data file", hint="pass a .txt/.csv/.tsv/.jsonl file of real texts")

    from bertopt.backends import triton

    repo_model = triton.check_repository(resolve_path(o.triton), o.triton_name, out, force) if o.triton else None  # before any work
    if o.backend == "onnxruntime":
        built = _build_ort(art, src, out, precision=o.precision, data_path=data_path, text_column=o.text_column,
                           threads=o.threads, tune=o.tune, force=force, verbose=verbose)
    else:
        built = _build_trt(art, src, out, precision=o.precision, profile=o.profile, data_path=data_path, text_column=o.text_column,
                           timing_cache=o.timing_cache, keep_fp32=o.keep_fp32, force=force, verbose=verbose)
    if repo_model is not None:
        triton.write_repository(built, repo_model, force=force)
    return built


# ------------------------------------------------------------------------------------- ONNX Runtime
def _build_ort(art: Artifact, src: Path, out: Path, *, precision, data_path, text_column, threads, tune, force, verbose) -> Artifact:
    from bertopt.backends import onnxruntime as ortb

    detected = ortb.detect_precision(src)
    if precision is not None and precision != detected:
        raise BertoptError(
            f"{src}: the graph is {detected}, but --precision {precision} was asked for",
            hint=("ONNX Runtime runs the graph's own precision: for int8 run `bertopt calibrate` (or qat) first"
                  if precision == "int8" else "drop --precision, or build from an artifact of that precision"),
        )
    inputs = {"model": describe_input(art.path if (art.path / "manifest.json").is_file() else src)}
    if data_path is not None:
        inputs["data"] = describe_input(data_path)
    params = {"backend": "onnxruntime", "precision": detected, "threads": threads, "tune": tune,
              "data": str(data_path) if data_path else None, "text_column": text_column}
    if (done := up_to_date(out, "build", inputs, params, force)) is not None:
        skipped("build", out)
        return done

    input_names = list(art.model_info.get("inputs") or _graph_inputs(src))
    tune_feeds = None
    if tune and data_path is not None:
        tune_feeds = _text_feeds(art, data_path, text_column, input_names, seq=128, batches=(1, 8))
    from bertopt.ui import console

    with write_artifact(out, "build", inputs, params) as w:
        w.add_output("model", MODEL_FILE)
        w.add_output("session", ortb.SESSION_FILE)
        with console.status("build: onnxruntime") as status, w.timed("build"):
            decision = ortb.build_onnxruntime(
                src, w.dir, input_names=input_names, threads=threads, tune=tune, tune_feeds=tune_feeds,
                progress=lambda m: status.update(f"build: {m}"),
            )
        if (w.dir / (MODEL_FILE + ".data")).is_file():
            w.add_output("model_data", MODEL_FILE + ".data")
        w.copy_tokenizer(art.tokenizer_dir)
        w.model = dict(art.model_info)
        write_hf_folder(w, w.model)  # sentence-transformers / Optimum / pipelines load the folder as it is
        w.extra["build"] = {
            "backend": "onnxruntime",
            "precision": detected,
            "machine": {"cpu": ortb.cpu_name(), "physical_cores": ortb.physical_cores()},
            "tune_texts": str(data_path) if tune_feeds else None,
            **decision,
        }
    _report_ort(out, detected, decision, verbose)
    return load_artifact(out)


def _report_ort(out: Path, precision: str, d: dict, verbose: bool) -> None:
    cfg = d["session"]
    entries = ", ".join(f"{k}={v}" for k, v in cfg.get("session_config_entries", {}).items()) or "defaults"
    note(f"build: {out / MODEL_FILE}  backend=onnxruntime precision={precision} offline={d['offline_optimization']} "
         f"threads={cfg.get('intra_op_num_threads', 'ORT default')} entries: {entries}")
    if d.get("tuned"):
        conf = d["confirm"]["latency_ms"]
        rows = "  ".join(f"{k}: " + "/".join(f"b{b} {v:.1f}" for b, v in lat.items()) + " ms" for k, lat in conf.items())
        note(f"build: measured (interleaved) {rows}; chose '{d['chosen']}'")
        load = d.get("load_average") or {}
        if (load.get("before") or 0) > load.get("cores", 1):
            note(f"build: the machine was busy while measuring (load {load['before']} on {load['cores']} cores): the choice "
                 "reflects that; re-run --tune on the machine state you deploy to")
    if verbose:
        before, after = d["ops_before"], d["ops_after"]
        changed = {k: (before.get(k, 0), after.get(k, 0)) for k in sorted(set(before) | set(after)) if before.get(k, 0) != after.get(k, 0)}
        note("build: ORT offline optimization changed op counts: " + (", ".join(f"{k} {a}->{b}" for k, (a, b) in changed.items()) or "nothing"))


def _graph_inputs(src: Path) -> list[str]:
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


def _text_feeds(art: Artifact, data_path: Path, text_column, input_names, seq: int, batches) -> dict:
    from bertopt.data import load_texts, load_tokenizer, tokenize

    texts = load_texts(data_path, text_column=text_column, limit=max(batches)).texts
    while len(texts) < max(batches):
        texts = texts + texts
    tok = load_tokenizer(art.tokenizer_dir, where=str(art.path))
    return {b: tokenize(tok, texts[:b], input_names, seq, pad_to=seq) for b in batches}


# ------------------------------------------------------------------------------------- TensorRT
def _build_trt(art: Artifact, src: Path, out: Path, *, precision, profile, data_path, text_column, timing_cache, keep_fp32, force, verbose) -> Artifact:
    from bertopt.backends import tensorrt as trtb

    return trtb.build_stage(art, src, out, precision=precision, profile=profile, data_path=data_path, text_column=text_column,
                            timing_cache=timing_cache, keep_fp32=keep_fp32, force=force, verbose=verbose)
