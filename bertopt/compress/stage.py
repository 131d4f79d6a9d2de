"""``run_compress``: HF teacher folder + text (+ labels) -> a smaller HF student folder, distilled.

Steps: the teacher's layers are chosen (``--layers``, ``--select``), its FFN neurons ranked on the
training text and the top ``--ffn-size`` kept (``prune``); the student is a plain model of the
teacher's class with a smaller config, initialised from the kept weights; it then learns from the
teacher on the training text with qat's distillation loop (``bertopt.distill.train``: output logits KL
or embedding cosine, hidden states of each kept layer against the teacher layer it came from, the
task loss with labels), early stopping on held-out text, resumable checkpoints, data-parallel under
``torchrun``. The best held-out state is written as a Hugging Face folder (config.json +
model.safetensors + tokenizer, sentence-transformers files copied) with manifest.json, which
``export`` (and ``qat``) take like any model folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertopt.artifacts import MANIFEST, Artifact, describe_data, describe_input, load_artifact, up_to_date, write_artifact
from bertopt.compress.options import CompressOptions
from bertopt.errors import BertoptError
from bertopt.models import read_config, resolve_head, resolve_task
from bertopt.paths import resolve_path
from bertopt.ui import console, note, skipped

# Files a student folder carries over from the teacher besides the weights and config
# (sentence-transformers metadata, so `export` finds the pooling and normalization).
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
COMPRESSIBLE = ("bert", "roberta", "xlm-roberta", "electra")


def run_compress(input: str | Path, out: str | Path, options: CompressOptions | None = None, *, force: bool = False,
                 **kwargs: Any) -> Artifact:
    """Compress the HF model ``input`` (the teacher) into a smaller HF model folder ``out`` (the student).

    The options are a :class:`~bertopt.compress.options.CompressOptions` (``options=``) or its fields as keywords:

    - ``layers``: how many of the teacher's layers the student keeps (default: all);
      ``select``: which ones: ``spaced`` (evenly spread, the last always kept), ``first``, or an
      explicit comma-separated list of 0-based teacher layers (``"1,3,5"``).
    - ``ffn_size``: FFN intermediate neurons kept per layer (default: all), the most important on
      ``importance_batches`` batches of ``data`` (mean |activation| x output weight norm).
    - distillation on ``data`` (``label_column`` adds the task loss, classifiers only): output
      (``output_weight``: logits KL at ``temperature`` / embedding cosine), hidden states of every
      student layer against its teacher layer (``hidden_weight``), cross-entropy (``task_weight``).
    - early stopping on ``val_data`` (or a seeded ``val_fraction`` of ``data``): held-out accuracy
      with labels, else the distillation loss; the best held-out state is written.
    - ``epochs`` or ``steps`` (one step = one batch per process), ``batch_size`` per process,
      ``lr`` peak AdamW (linear warmup over ``warmup_ratio`` of the steps, then linear decay); checkpoints in ``checkpoint_dir`` (default: a hidden
      ``.<out>.compress-checkpoint`` beside ``out``), resumed when a killed run is started again.
    """
    o = CompressOptions.of(options, kwargs)
    job = _plan(input, out, o)
    if (done := up_to_date(job.out, "compress", job.inputs, job.params, force)) is not None:
        skipped("compress", job.out)
        return done

    from bertopt.distill import dist

    env = dist.setup()
    try:
        return _run(job, env)
    finally:
        env.close()


@dataclass
class _Job:
    """One compress run: the options and what they resolve to for this teacher."""

    o: CompressOptions
    out: Path
    model_dir: Path
    cfg: dict
    task: str
    pooling: str
    keep: list[int]  # the teacher layers the student keeps
    ffn_size: int
    inputs: dict
    params: dict


def _plan(input, out, o: CompressOptions) -> _Job:
    """Resolve the options against the teacher (task, head, kept layers, FFN size) and check them before any work."""
    out = resolve_path(out)
    model_dir = resolve_path(input)
    if (model_dir / MANIFEST).is_file() and not (model_dir / "config.json").is_file():
        art = load_artifact(model_dir, verify=False)
        raise BertoptError(f"{model_dir}: compress takes a Hugging Face model folder, and this is a '{art.stage}' artifact",
                           hint="pass the model folder (config.json + weights + tokenizer) that was exported")
    cfg = read_config(model_dir)
    if cfg["model_type"] not in COMPRESSIBLE:
        raise BertoptError(f"{model_dir / 'config.json'}: compress does not support model_type '{cfg['model_type']}'",
                           hint="compress takes BERT-style encoders: " + ", ".join(COMPRESSIBLE))
    task = resolve_task(cfg, o.task)
    pooling, _ = resolve_head(model_dir, task, o.pooling)
    n_teacher = int(cfg.get("num_hidden_layers") or 0)
    full_ffn = int(cfg.get("intermediate_size") or 0)
    keep = _keep_layers(o.layers, o.select, n_teacher)
    ffn_size = full_ffn if o.ffn_size is None else o.ffn_size
    if not ffn_size <= full_ffn:
        raise BertoptError(f"--ffn-size {ffn_size}: must be from 1 to the teacher's {full_ffn}",
                           hint=f"{model_dir / 'config.json'} has intermediate_size {full_ffn}")
    if len(keep) == n_teacher and ffn_size == full_ffn:
        raise BertoptError("nothing to compress: all layers and all FFN neurons are kept",
                           hint="pass --layers N (fewer than the teacher's {}) and/or --ffn-size (below {})".format(n_teacher, full_ffn))
    if o.label_column and task != "sequence-classification":
        raise BertoptError(f"--label-column '{o.label_column}' given, but {model_dir} is a {task} model",
                           hint="labels train classifiers; for an encoder, distil from the teacher on text alone (drop --label-column)")
    if not o.data:
        raise BertoptError("--data: no training file given", hint="pass --data FILE (repeat it for several files)")
    # the first file is "data" as before; more are "data_2", "data_3", ... (each hashed into the fingerprint)
    inputs = {"model": describe_input(model_dir)} | {"data" if i == 0 else f"data_{i + 1}": describe_data(resolve_path(p))
                                                     for i, p in enumerate(o.data)}
    if o.val_data:
        inputs["val_data"] = describe_data(resolve_path(o.val_data))
    params = o.params(task=task, pooling=pooling, layers=keep, ffn_size=ffn_size, prunes_ffn=ffn_size < full_ffn)
    return _Job(o=o, out=out, model_dir=model_dir, cfg=cfg, task=task, pooling=pooling, keep=keep, ffn_size=ffn_size, inputs=inputs,
                params=params)


def _keep_layers(layers, select, n_teacher) -> list[int]:
    from bertopt.compress.prune import SELECTIONS, parse_layers, select_layers

    if select not in SELECTIONS:
        keep = parse_layers(select, n_teacher)
        if layers is not None and layers != len(keep):
            raise BertoptError(f"--layers {layers} but --select '{select}' names {len(keep)} layers", hint="drop --layers, or make them agree")
        return keep
    if layers is None:
        return list(range(n_teacher))
    if not 1 <= layers <= n_teacher:
        raise BertoptError(f"--layers {layers}: must be from 1 to the teacher's {n_teacher}",
                           hint=f"the teacher has num_hidden_layers {n_teacher}; a student keeps some of them")
    return select_layers(n_teacher, layers, select)


def _run(job: _Job, env) -> Artifact:
    import torch

    from bertopt.distill import batches
    from bertopt.distill.dist import rank0_writes
    from bertopt.distill.train import distil, fmt_eval

    o = job.o
    torch.manual_seed(o.seed)
    # data read and checked before anything is written
    data = batches.load_training_data(job.model_dir, job.cfg, o, [resolve_path(p) for p in o.data], o.samples)
    teacher, student, neurons, before, after = _student(job, env, data)
    if env.main:
        note(f"compress: student keeps teacher layers {job.keep} of {before['layers']}, FFN {job.ffn_size} of {before['ffn_size']}: "
             f"{after['params'] / 1e6:.1f}M params (teacher {before['params'] / 1e6:.1f}M), encoder FLOPs/token "
             f"{after['flops_per_token_seq128'] / before['flops_per_token_seq128']:.2f}x; {len(data.train)} training / {len(data.held)} held-out texts"
             + (f", {env.world} processes ({env.backend})" if env.enabled else ""))
    history, ckpt = distil(student, teacher, data, o, job, env, stage="compress", layer_map=job.keep)
    b, i0 = history["best"], history["initial"]
    if env.main:
        note(f"compress: best held-out step {b['step']}/{history['total_steps']}: " + fmt_eval(b) + f" (pruned, before distillation: {fmt_eval(i0)})"
             + (", stopped early" if history["stopped_early"] else ""))

    def write() -> None:  # rank 0; the others wait and read the result
        _write(job, student.to("cpu"), data.tokenizer, history=history, neurons=neurons, before=before, after=after)
        ckpt.remove()

    rank0_writes(env, write, "compress")
    art = load_artifact(job.out)
    if env.main:
        console.print(f"compress: {job.out}  layers {after['layers']}/{before['layers']}, FFN {after['ffn_size']}/{before['ffn_size']}, "
                      f"params {after['params'] / 1e6:.1f}M/{before['params'] / 1e6:.1f}M, held-out " + fmt_eval(b), markup=False)
    return art


def _student(job: _Job, env, data):
    """The frozen teacher, its FFN neurons ranked on the training text (when the FFN shrinks), and the
    student built from the kept layers and neurons; sizes before and after."""
    import torch

    from bertopt.compress import prune
    from bertopt.export.torch_model import load_torch_model
    from bertopt.distill import batches

    o = job.o
    teacher = load_torch_model(job.model_dir, job.task).to(env.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    importance = None
    if job.ffn_size < job.cfg["intermediate_size"]:
        lengths = [len(x) for x in data.train.ids]
        rows = batches.epoch_batches(lengths, o.batch_size, o.seed, 0)[: o.importance_batches]
        with console.status("compress: ranking FFN neurons on the training text") if env.main else contextlib.nullcontext():
            importance = prune.ffn_importance(teacher, [batches.collate(data.train, r, env.device) for r in rows], job.keep)
    student, neurons = prune.build_student(teacher, job.keep, job.ffn_size, importance)
    student = student.to(env.device)
    for m in student.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # the student matches the teacher's deterministic outputs (qat measured dropout hurting)
    for p in student.parameters():
        p.requires_grad_(True)
    if job.task == "feature-extraction":  # the pooler is not part of the exported encoder
        for n, p in student.named_parameters():
            if ".pooler." in f".{n}":
                p.requires_grad_(False)
    before = {"params": prune.n_params(teacher), "flops_per_token_seq128": prune.flops_per_token(teacher.config), **prune.shape(teacher.config)}
    after = {"params": prune.n_params(student), "flops_per_token_seq128": prune.flops_per_token(student.config), **prune.shape(student.config)}
    return teacher, student, neurons, before, after


def _write(job: _Job, student, tokenizer, *, history, neurons, before, after) -> None:
    from bertopt.models import model_summary

    model_dir, task, params = job.model_dir, job.task, job.params
    with write_artifact(job.out, "compress", job.inputs, params) as w:
        with w.timed("save"):
            student.config.architectures = student.config.architectures or [type(student).__name__]
            student.save_pretrained(str(w.dir), safe_serialization=True)
            tokenizer.save_pretrained(str(w.dir))
            for name in ST_FILES:
                if (model_dir / name).is_file():
                    shutil.copy2(model_dir / name, w.dir / name)
            for sub in model_dir.iterdir():  # sentence-transformers module folders: 1_Pooling, 2_Normalize, ...
                if sub.is_dir() and sub.name[:1].isdigit() and "_" in sub.name:
                    shutil.copytree(sub, w.dir / sub.name)
        w.add_output("model", "model.safetensors")
        w.add_output("config", "config.json")
        scfg = json.loads((w.dir / "config.json").read_text())
        w.model = model_summary(scfg, task) | {"pooling": params["pooling"], "format": "huggingface"}
        w.metrics.update({
            "teacher": {"path": str(model_dir), **before},
            "student": after,
            "params_ratio": round(after["params"] / before["params"], 4),
            "flops_ratio": round(after["flops_per_token_seq128"] / before["flops_per_token_seq128"], 4),
            "validation": {k: v for k, v in history["best"].items() if k != "train_loss"},
            "before_distillation": history["initial"],
        })
        if "accuracy" in history["best"]:
            w.metrics["accuracy"] = round(history["best"]["accuracy"], 6)
        w.extra["compression"] = {
            "kept_layers": job.keep,
            "layer_selection": job.o.select,
            "ffn_importance": "mean |GELU activation| over real tokens x L2 norm of the neuron's output weights (Minitron-style)",
            "heads": "all kept (transformers 5 cannot persist per-layer head pruning in a plain config)",
            "kept_ffn_neurons": {str(k): v for k, v in neurons.items()} if params["ffn_size"] < before["ffn_size"] else None,
        }
        w.extra["training"] = {k: v for k, v in history.items() if k not in ("initial", "best")}
        w.add_output("history", "compress_history.json").write_text(json.dumps(history["history"], indent=1) + "\n")

