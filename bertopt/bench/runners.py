"""Open anything ``bench`` can run: an HF folder (PyTorch eager, the reference), an ONNX artifact
or bare .onnx (ONNX Runtime CPU, with the session config a ``build`` saved), a TensorRT engine artifact,
an OpenVINO artifact (its static shape buckets, else dynamic shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertopt.errors import BertoptError
from bertopt.graph import precision
from bertopt.paths import resolve_path


@dataclass
class Runner:
    name: str
    path: Path
    backend: str  # pytorch | onnxruntime | tensorrt | openvino
    precision: str  # fp32 | fp16 | int8
    stage: str
    task: str
    input_names: tuple[str, ...]
    outputs: list[str]
    tokenizer_dir: Path | None
    max_length: int
    id2label: dict | None
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = field(repr=False)
    # TensorRT runners may also time without host<->device copies
    run_device_only: Callable | None = field(default=None, repr=False)
    # why a (batch, seq) shape cannot run (a TensorRT engine's profiles), None when it can
    refuses: Callable[[int, int], str | None] | None = field(default=None, repr=False)
    max_batch: int | None = None
    # ONNX Runtime: calls of at most max_tokens go to a 1-thread session (session.json's short_calls);
    # "calls" counts the calls each session ran
    short_calls: dict | None = None
    # runs only the named outputs (ONNX Runtime: the others are neither copied nor converted)
    run_outputs: Callable[[dict[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]] | None = field(default=None, repr=False)
    _tokenizer: object = field(default=None, repr=False)

    def __call__(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All outputs, or only ``outputs``."""
        if outputs is None:
            return self.run(feeds)
        if self.run_outputs is not None:
            return self.run_outputs(feeds, outputs)
        res = self.run(feeds)
        return {k: res[k] for k in outputs}

    @property
    def serving_outputs(self) -> list[str]:
        """What a service returns: the sentence embedding or the logits when the model has them, else every output.
        At ~10 tokens a call lasts ~1.5 ms; converting the unused ``last_hidden_state`` holds the GIL, which
        two callers then wait for."""
        served = [o for o in ("sentence_embedding", "logits") if o in self.outputs]
        return served[:1] or list(self.outputs)

    @property
    def tokenizer(self):
        """The artifact's tokenizer, loaded once (bench and ``bertopt.load`` tokenize through it)."""
        if self._tokenizer is None:
            from bertopt.data import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_dir, where=str(self.path))
        return self._tokenizer


def open_runner(path: str | Path, threads: int | None, name: str | None = None, spinning: bool = True) -> Runner:
    """``spinning=False`` turns ONNX Runtime's intra-op spinning off (unless the artifact's session.json
    sets it): sessions timed in turn in one process must not steal the cores with idle spinning threads."""
    from bertopt.models import is_hf_folder

    p = resolve_path(path)
    if is_hf_folder(p):
        return _torch_runner(p, threads, name)
    if p.suffix == ".xml" and p.is_file():
        return _openvino_ir_runner(p, threads, name)
    from bertopt.artifacts import load_artifact

    art = load_artifact(p)
    build = art.manifest.get("build", {})
    info = art.model_info
    common = dict(
        name=name or (p.name if p.is_dir() else p.stem),
        path=p,
        stage=art.stage,
        task=info.get("task", "feature-extraction"),
        input_names=tuple(info.get("inputs") or ("input_ids", "attention_mask", "token_type_ids")),
        tokenizer_dir=art.tokenizer_dir,
        max_length=int(info.get("max_length") or 512),
        id2label=info.get("id2label"),
    )
    if build.get("backend") == "tensorrt":
        return _tensorrt_runner(art, build, common)
    if build.get("backend") == "openvino":
        return _openvino_runner(art, build, common, threads)
    return _onnxruntime_runner(art, build, common, threads, spinning)


def _tensorrt_runner(art, build: dict, common: dict) -> Runner:
    from bertopt.backends.tensorrt.runner import TensorRTRunner

    trt = TensorRTRunner(art)
    refuses, max_batch, max_seq = profile_limits(build.get("profiles") or [])
    if max_seq:
        common["max_length"] = min(common["max_length"], max_seq)
    return Runner(backend="tensorrt", precision=build.get("precision", "int8"), outputs=list(trt.output_names),
                  run=trt, run_device_only=getattr(trt, "run_device_only", None), refuses=refuses, max_batch=max_batch, **common)


def _openvino_runner(art, build: dict, common: dict, threads: int | None) -> Runner:
    from bertopt.backends.openvino.runner import OpenVINORunner

    ovr = OpenVINORunner.from_artifact(art, threads)
    if "logits" in ovr.output_names:
        common["task"] = "sequence-classification"
    common["input_names"] = tuple(ovr.input_names)
    return Runner(backend="openvino", precision=build.get("precision", "fp32"), outputs=list(ovr.output_names), run=ovr, run_outputs=ovr, **common)


def _onnxruntime_runner(art, build: dict, common: dict, threads: int | None, spinning: bool) -> Runner:
    """The artifact's model in an ONNX Runtime session configured by its ``session.json``."""
    from bertopt.backends.onnxruntime import load_session_config, make_session

    model_path = art.model_path
    cfg = dict(load_session_config(art.path) or {})  # outside the try: a refused session.json names its key
    if not spinning:
        cfg["session_config_entries"] = {"session.intra_op.allow_spinning": "0", **cfg.get("session_config_entries", {})}
    from bertopt.backends.short_calls import routed, tokens

    try:
        sess, short, max_tokens = routed(model_path, cfg, threads, make_session)
    except Exception as e:  # noqa: BLE001 - ORT's load errors are about the user's file
        raise BertoptError(f"{model_path}: ONNX Runtime cannot load it ({str(e)[:300]})", hint="re-run the stage that wrote it") from None
    sess_inputs = [i.name for i in sess.get_inputs()]
    missing = [n for n in sess_inputs if n not in ("input_ids", "attention_mask", "token_type_ids")]
    if missing:
        raise BertoptError(f"{model_path}: unexpected model inputs {missing}", hint="bench runs BERT-style encoders with input_ids/attention_mask/token_type_ids")
    common["input_names"] = tuple(sess_inputs)
    outs = [o.name for o in sess.get_outputs()]
    if "logits" in outs:
        common["task"] = "sequence-classification"

    calls = {"long": 0, "short": 0} if short is not None else None

    def pick(feeds: dict[str, np.ndarray]):
        if short is None:
            return sess
        route = "short" if tokens(feeds) <= max_tokens else "long"
        calls[route] += 1
        return short if route == "short" else sess

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outs, pick(feeds).run(outs, {n: feeds[n] for n in sess_inputs})))

    def run_outputs(feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, pick(feeds).run(list(names), {n: feeds[n] for n in sess_inputs})))

    return Runner(backend="onnxruntime", precision=build.get("precision") or precision(model_path), outputs=outs, run=run,
                  run_outputs=run_outputs, short_calls=({"max_tokens": max_tokens, "calls": calls} if calls is not None else None), **common)


def _openvino_ir_runner(xml: Path, threads: int | None, name: str | None) -> Runner:
    """A bare OpenVINO IR (another tool's, e.g. optimum-intel's or NNCF's ``openvino_model.xml``), with its
    tokenizer in ``tokenizer/`` beside it or in the same folder. It runs as that tool ships it: bertopt's
    latency properties (one stream, ``threads``) but OpenVINO's own ``INFERENCE_PRECISION_HINT``."""
    from bertopt.backends.openvino.compile import properties
    from bertopt.backends.openvino.runner import OpenVINORunner

    tok = xml.parent / "tokenizer" if (xml.parent / "tokenizer").is_dir() else xml.parent
    if not any((tok / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise BertoptError(f"{xml}: a bare OpenVINO IR needs its tokenizer beside it", hint=f"save the tokenizer into {tok}")
    props = {k: v for k, v in properties(threads or 2).items() if k != "INFERENCE_PRECISION_HINT"}
    ovr = OpenVINORunner(xml, (), props)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in ovr.ir.get_ordered_ops())
    outs = list(ovr.output_names)
    return Runner(name=name or (xml.parent.name if xml.stem == "openvino_model" else xml.stem), path=xml, backend="openvino",
                  precision="int8" if fq else "fp32", stage="external", task="sequence-classification" if "logits" in outs else "feature-extraction",
                  input_names=tuple(ovr.input_names), outputs=outs, tokenizer_dir=tok, max_length=512, id2label=None, run=ovr, run_outputs=ovr)


def profile_limits(profiles: list[dict]):
    """From a TensorRT build's ``profiles`` (manifest form): (refuses(batch, seq) -> reason | None,
    max batch, max sequence length), so ``bench`` skips grid shapes the engine was not built for
    and feeds fidelity texts in batches and lengths it takes."""
    from bertopt.backends.profiles import Profile, select_profile

    profs = [Profile.from_json(p) for p in profiles]
    if not profs:
        return None, None, None
    spans = "; ".join(p.spec() for p in profs)

    def refuses(batch: int, seq: int) -> str | None:
        return None if select_profile(profs, batch, seq) >= 0 else f"outside the engine's profiles ({spans})"

    # fidelity/accuracy batches: the largest batch one profile takes at its longest sequence
    longest = max(p.seq[2] for p in profs)
    return refuses, max(p.batch[2] for p in profs if p.seq[2] == longest), longest


def _torch_runner(model_dir: Path, threads: int | None, name: str | None) -> Runner:
    import torch

    from bertopt.export.torch_model import load_torch_model, make_wrapper
    from bertopt.models import output_names
    from bertopt.models import SUPPORTED, default_task, model_summary, read_config, sentence_transformers_normalize, sentence_transformers_pooling

    cfg = read_config(model_dir)
    task = default_task(cfg)
    pooling = (sentence_transformers_pooling(model_dir) or "none") if task == "feature-extraction" else "none"
    normalize = pooling != "none" and sentence_transformers_normalize(model_dir)
    if threads:
        torch.set_num_threads(threads)
    input_names = SUPPORTED[cfg["model_type"]]
    wrapper = make_wrapper(load_torch_model(model_dir, task), task, input_names, pooling, normalize)
    outs = output_names(task, pooling)

    @torch.inference_mode()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = wrapper(*(torch.from_numpy(feeds[n]) for n in input_names))
        return {o: r.numpy() for o, r in zip(outs, res)}

    info = model_summary(cfg, task)
    return Runner(
        name=name or (model_dir.parent.name if model_dir.name == "model" else model_dir.name) + " (pytorch)", path=model_dir, backend="pytorch", precision="fp32", stage="hf", task=task,
        input_names=input_names, outputs=outs, tokenizer_dir=model_dir, max_length=int(info.get("max_length") or 512),
        id2label=info.get("id2label"), run=run,
    )


def describe(r: Runner) -> dict:
    d = {"name": r.name, "path": str(r.path), "backend": r.backend, "precision": r.precision, "stage": r.stage, "task": r.task}
    if r.short_calls:
        d["short_calls_max_tokens"] = r.short_calls["max_tokens"]
    return d
