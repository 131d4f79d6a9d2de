"""The ``build`` stage: an ONNX artifact -> a deployable artifact for one backend.

``run_build`` checks what every backend needs (an ONNX input, an encoder graph, the data file), then
hands over to the backend's ``build_stage`` named in :data:`BUILDERS`:

``onnxruntime`` (CPU, the default): ``model.onnx`` (ORT's offline-optimized graph) + ``session.json``
(the session options it was measured with), loaded by ``backends.onnxruntime.make_session``.

``tensorrt`` (GPU hosts): ``engine.plan`` (strongly typed; INT8 only from Q/DQ, FP16 from the ONNX
types), ``model.onnx`` (the exact ONNX the engine was built from), ``precision_map.json`` (the engine
inspector's per-layer precisions) and ``profiles.json``; the build fails when GEMMs that the Q/DQ
graph quantizes did not run in INT8.

``openvino`` (CPU): ``openvino_model.xml``/``.bin`` (OpenVINO IR), the compiled blobs cached per shape
bucket, and the runtime graph's per-layer precisions; the build fails when a Q/DQ GEMM runs in float.

Every backend records ``manifest["build"] = {"backend", "precision", ...}`` so ``bench`` says what ran.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bertopt.artifacts import Artifact, describe_input, load_artifact
from bertopt.backends.options import BuildOptions
from bertopt.errors import BertoptError

# backend -> "module:function" that builds it, imported on first use. Each one is
# ``build_stage(art, src, out, options, data_path, *, force) -> Artifact`` and starts with
# ``artifacts.up_to_date``; a backend's Triton model writer can sit beside it in a table like this one.
BUILDERS: dict[str, str] = {
    "onnxruntime": "bertopt.backends.onnxruntime_stage:build_stage",
    "tensorrt": "bertopt.backends.tensorrt.stage:build_stage",
    "openvino": "bertopt.backends.openvino.stage:build_stage",
    "auto": "bertopt.backends.auto:build_stage",
}


def run_build(input: str | Path, out: str | Path, options: BuildOptions | None = None, *, force: bool = False,
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
    built = builder(o.backend)(art, src, out, o, data_path, force=force)
    if repo_model is not None:
        triton.write_repository(built, repo_model, force=force)
    return built


def builder(backend: str):
    """The ``build_stage`` function of ``backend`` (see :data:`BUILDERS`)."""
    module, attr = BUILDERS[backend].split(":")
    return getattr(importlib.import_module(module), attr)


# ------------------------------------------------------------------------------ shared by the backends
def stage_inputs(art: Artifact, src: Path, data_path: Path | None) -> dict[str, dict]:
    """The build's recorded inputs: the model (its artifact folder, or the bare .onnx) and the data file."""
    inputs = {"model": describe_input(art.path if (art.path / "manifest.json").is_file() else src)}
    if data_path is not None:
        inputs["data"] = describe_input(data_path)
    return inputs


def graph_inputs(src: Path) -> list[str]:
    """The graph inputs of the model file ``src`` that are not initializers."""
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


def text_feeds(art: Artifact, data_path: Path, text_column, input_names, seq: int, batches) -> dict:
    """batch -> feeds of the first real texts of ``data_path``, padded to ``seq`` tokens."""
    from bertopt.data import load_texts, load_tokenizer, tokenize

    texts = load_texts(data_path, text_column=text_column, limit=max(batches)).texts
    while len(texts) < max(batches):
        texts = texts + texts
    tok = load_tokenizer(art.tokenizer_dir, where=str(art.path))
    return {b: tokenize(tok, texts[:b], input_names, seq, pad_to=seq) for b in batches}
