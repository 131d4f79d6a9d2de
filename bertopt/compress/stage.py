"""``run_compress``: HF teacher folder + text (+ labels) -> a smaller HF student folder, distilled.

Steps: the teacher's layers are chosen (``--layers``, ``--select``), its FFN neurons ranked on the
training text and the top ``--ffn-size`` kept (``prune``); the student is a plain model of the
teacher's class with a smaller config, initialised from the kept weights; it then learns from the
teacher on the training text with qat's distillation loop (``bertopt.qat.train``: output logits KL
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
from pathlib import Path
from typing import Literal

from bertopt.artifacts import MANIFEST, Artifact, describe_input, fingerprint, load_artifact, up_to_date, write_artifact
from bertopt.errors import BertoptError
from bertopt.params import HalfOpenFraction, MaxLength, NonNegativeFloat, OpenFraction, PositiveFloat, PositiveInt, accepts_renamed
from bertopt.models import TASKS, read_config, resolve_head, resolve_task
from bertopt.paths import resolve_path
from bertopt.qat.train import Checkpointer
from bertopt.ui import console, note, skipped

# Files a student folder carries over from the teacher besides the weights and config
# (sentence-transformers metadata, so `export` finds the pooling and normalization).
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
COMPRESSIBLE = ("bert", "roberta", "xlm-roberta", "electra")


@accepts_renamed("compress")
def run_compress(
    input: str | Path,
    out: str | Path,
    *,
    data: str,
    val_data: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    val_fraction: OpenFraction = 0.1,
    samples: PositiveInt | None = None,
    layers: PositiveInt | None = None,
    select: str = "spaced",
    ffn_size: PositiveInt | None = None,
    importance_batches: PositiveInt = 32,
    epochs: PositiveFloat = 3.0,
    steps: PositiveInt | None = None,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 1e-4,
    warmup_ratio: HalfOpenFraction = 0.1,
    eval_every: PositiveInt | None = None,
    patience: PositiveInt = 3,
    min_delta: HalfOpenFraction = 0.01,
    max_length: MaxLength = 128,
    temperature: PositiveFloat = 2.0,
    output_weight: NonNegativeFloat = 1.0,
    hidden_weight: NonNegativeFloat = 1.0,
    task_weight: NonNegativeFloat = 1.0,
    task: Literal[TASKS] | None = None,
    pooling: Literal["auto", "mean", "cls", "none"] = "auto",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    resume: bool = True,
    force: bool = False,
    verbose: bool = False,
) -> Artifact:
    """Compress the HF model ``input`` (the teacher) into a smaller HF model folder ``out`` (the student).

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
    from bertopt.qat.stage import _check_numbers, _describe_data

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
    task = resolve_task(cfg, task)
    pooling, _ = resolve_head(model_dir, task, pooling)
    n_teacher = int(cfg.get("num_hidden_layers") or 0)
    full_ffn = int(cfg.get("intermediate_size") or 0)
    keep = _keep_layers(layers, select, n_teacher)
    if ffn_size is None:
        ffn_size = full_ffn
    if not 1 <= ffn_size <= full_ffn:
        raise BertoptError(f"--ffn-size {ffn_size}: must be from 1 to the teacher's {full_ffn}",
                           hint=f"{model_dir / 'config.json'} has intermediate_size {full_ffn}")
    if len(keep) == n_teacher and ffn_size == full_ffn:
        raise BertoptError("nothing to compress: all layers and all FFN neurons are kept",
                           hint="pass --layers N (fewer than the teacher's {}) and/or --ffn-size (below {})".format(n_teacher, full_ffn))
    if importance_batches < 1:
        raise BertoptError(f"importance_batches={importance_batches}: must be at least 1", hint="fix --importance-batches")
    _check_numbers(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup_ratio, val_fraction=val_fraction, eval_every=eval_every,
                   patience=patience, min_delta=min_delta, max_length=max_length, calib_batches=1, temperature=temperature, limit=samples,
                   parity_min_mean_cosine=0.0, opset=17, weights=(output_weight, hidden_weight, 0.0, task_weight))
    if label_column and task != "sequence-classification":
        raise BertoptError(f"--label-column '{label_column}' given, but {model_dir} is a {task} model",
                           hint="labels train classifiers; for an encoder, distil from the teacher on text alone (drop --label-column)")

    data_path = resolve_path(data)
    inputs = {"model": describe_input(model_dir), "data": _describe_data(data_path)}
    if val_data:
        inputs["val_data"] = _describe_data(resolve_path(val_data))
    params = {
        "task": task, "pooling": pooling, "text_column": text_column, "label_column": label_column,
        "val_fraction": None if val_data else val_fraction, "samples": samples, "layers": keep, "ffn_size": ffn_size,
        "importance_batches": importance_batches if ffn_size < full_ffn else None, "epochs": None if steps else epochs, "steps": steps,
        "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio, "eval_every": eval_every, "patience": patience, "min_delta": min_delta,
        "max_length": max_length, "temperature": temperature, "output_weight": output_weight, "hidden_weight": hidden_weight,
        "task_weight": task_weight if label_column else None, "seed": seed,
    }
    if (done := up_to_date(out, "compress", inputs, params, force)) is not None:
        skipped("compress", out)
        return done

    from bertopt.qat import dist

    env = dist.setup()
    try:
        return _run(model_dir, out, cfg, env, task=task, pooling=pooling, data_path=data_path, val_data=val_data, text_column=text_column,
                    label_column=label_column, keep=keep, select=select, inputs=inputs, params=params, checkpoint_dir=checkpoint_dir, resume=resume,
                    verbose=verbose)
    finally:
        env.close()


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


def _run(model_dir: Path, out: Path, cfg: dict, env, *, task, pooling, data_path, val_data, text_column, label_column, keep, select, inputs,
         params, checkpoint_dir, resume, verbose) -> Artifact:
    import torch

    from bertopt.compress import prune
    from bertopt.data import load_texts
    from bertopt.export import load_torch_model
    from bertopt.models import SUPPORTED
    from bertopt.qat import batches
    from bertopt.qat.losses import LossWeights
    from bertopt.qat.stage import _fmt_eval, _labels
    from bertopt.qat.train import TrainConfig, train

    say = note if env.main else (lambda *_: None)
    torch.manual_seed(params["seed"])
    input_names = SUPPORTED[cfg["model_type"]]

    # ---- data (read and checked before anything is written)
    train_td = load_texts(data_path, text_column=text_column, label_column=label_column, limit=params["samples"])
    labels = _labels(train_td, cfg) if label_column else None
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    max_len = min(params["max_length"], cfg.get("max_position_embeddings") or params["max_length"])
    type_ids = "token_type_ids" in input_names
    enc = batches.encode(tokenizer, train_td.texts, labels, max_len, type_ids)
    if val_data:
        val_td = load_texts(resolve_path(val_data), text_column=text_column, label_column=label_column)
        held = batches.encode(tokenizer, val_td.texts, _labels(val_td, cfg) if label_column else None, max_len, type_ids)
        train_enc = enc
    else:
        if len(enc) < 10:
            raise BertoptError(f"{data_path}: {len(enc)} texts are too few to hold some out for early stopping",
                               hint="use more texts, or pass --val-data with a held-out file")
        tr_rows, held_rows = batches.split_holdout(len(enc), params["val_fraction"], params["seed"])
        train_enc, held = enc.subset(tr_rows), enc.subset(held_rows)

    # ---- teacher, importance, student
    teacher = load_torch_model(model_dir, task).to(env.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    ffn_size = params["ffn_size"]
    importance = None
    if ffn_size < cfg["intermediate_size"]:
        lengths = [len(x) for x in train_enc.ids]
        rows = batches.epoch_batches(lengths, params["batch_size"], params["seed"], 0)[: params["importance_batches"]]
        with console.status("compress: ranking FFN neurons on the training text") if env.main else contextlib.nullcontext():
            importance = prune.ffn_importance(teacher, [batches.collate(train_enc, r, env.device) for r in rows], keep)
    student, neurons = prune.build_student(teacher, keep, ffn_size, importance)
    student = student.to(env.device)
    for m in student.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # the student matches the teacher's deterministic outputs (qat measured dropout hurting)
    for p in student.parameters():
        p.requires_grad_(True)
    if task == "feature-extraction":  # the pooler is not part of the exported encoder
        for n, p in student.named_parameters():
            if ".pooler." in f".{n}":
                p.requires_grad_(False)
    before = {"params": prune.n_params(teacher), "flops_per_token_seq128": prune.flops_per_token(teacher.config), **prune.shape(teacher.config)}
    after = {"params": prune.n_params(student), "flops_per_token_seq128": prune.flops_per_token(student.config), **prune.shape(student.config)}
    say(f"compress: student keeps teacher layers {keep} of {before['layers']}, FFN {ffn_size} of {before['ffn_size']}: "
        f"{after['params'] / 1e6:.1f}M params (teacher {before['params'] / 1e6:.1f}M), encoder FLOPs/token "
        f"{after['flops_per_token_seq128'] / before['flops_per_token_seq128']:.2f}x; {len(train_enc)} training / {len(held)} held-out texts"
        + (f", {env.world} processes ({env.backend})" if env.enabled else ""))

    # ---- distil
    weights = LossWeights(output=params["output_weight"], hidden=params["hidden_weight"], attention=0.0,
                          task=params["task_weight"] or 0.0, temperature=params["temperature"])
    tcfg = TrainConfig(epochs=params["epochs"] or 1.0, steps=params["steps"], batch_size=params["batch_size"], lr=params["lr"],
                       warmup=params["warmup_ratio"], eval_every=params["eval_every"], patience=params["patience"], min_delta=params["min_delta"],
                       seed=params["seed"])
    ckpt_dir = resolve_path(checkpoint_dir) if checkpoint_dir else out.parent / f".{out.name}.compress-checkpoint"
    ckpt = Checkpointer(ckpt_dir, fingerprint("compress-checkpoint", inputs, params | {"world_size": env.world}), owned=not checkpoint_dir)
    if not resume and env.main:
        ckpt.remove()
    env.barrier()
    history = train(student, teacher, train_enc, held, task=task, pooling=pooling, weights=weights, cfg=tcfg, env=env, ckpt=ckpt,
                    layer_map=keep, name="compress")
    b, i0 = history["best"], history["initial"]
    say(f"compress: best held-out step {b['step']}/{history['total_steps']}: " + _fmt_eval(b) + f" (pruned, before distillation: {_fmt_eval(i0)})"
        + (", stopped early" if history["stopped_early"] else ""))

    # ---- write (rank 0; the others wait and read the result)
    error: BaseException | None = None
    if env.main:
        try:
            _write(out, student.to("cpu"), tokenizer, model_dir, task=task, inputs=inputs, params=params, history=history, keep=keep,
                   select=select, neurons=neurons, before=before, after=after)
            ckpt.remove()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    if env.any_failed(error is not None):
        if error is not None:
            raise error
        raise BertoptError("compress: rank 0 failed to write the artifact", hint="see rank 0's error above")
    art = load_artifact(out)
    if env.main:
        console.print(f"compress: {out}  layers {after['layers']}/{before['layers']}, FFN {after['ffn_size']}/{before['ffn_size']}, "
                      f"params {after['params'] / 1e6:.1f}M/{before['params'] / 1e6:.1f}M, held-out " + _fmt_eval(b), markup=False)
    return art


def _write(out, student, tokenizer, model_dir, *, task, inputs, params, history, keep, select, neurons, before, after) -> None:
    from bertopt.models import model_summary

    with write_artifact(out, "compress", inputs, params) as w:
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
            "kept_layers": keep,
            "layer_selection": select,
            "ffn_importance": "mean |GELU activation| over real tokens x L2 norm of the neuron's output weights (Minitron-style)",
            "heads": "all kept (transformers 5 cannot persist per-layer head pruning in a plain config)",
            "kept_ffn_neurons": {str(k): v for k, v in neurons.items()} if params["ffn_size"] < before["ffn_size"] else None,
        }
        w.extra["training"] = {k: v for k, v in history.items() if k not in ("initial", "best")}
        w.add_output("history", "compress_history.json").write_text(json.dumps(history["history"], indent=1) + "\n")

