"""``run_qat``: HF model folder + text (+ labels) -> Q/DQ ONNX artifact trained with distillation.

Steps: the FP32 model is the teacher; its copy gets modelopt quantizers by ``calibrate``'s placement
(``placement``), ranges from a max calibration on training batches or from a ``calibrate`` artifact
(``--init-from``); the copy trains against the teacher on the training texts (``train``); the best
held-out state is exported through the legacy exporter as a Q/DQ ONNX (``onnx_qdq``), checked
against the fake-quant torch model on ONNX Runtime, and written like export's artifact: model.onnx +
tokenizer/ + manifest (model block, parity, training history, ORT's int8 kernel counts).

Under ``torchrun`` the same call trains data-parallel (``dist``); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Literal

from bertopt.params import Cosine, HalfOpenFraction, MaxLength, NonNegativeFloat, OpenFraction, Opset, PositiveFloat, PositiveInt, accepts_renamed
from bertopt.artifacts import MANIFEST, MODEL_FILE, Artifact, describe_input, fingerprint, load_artifact, up_to_date, write_artifact
from bertopt.errors import BertoptError, MissingDependencyError
from bertopt.models import SUPPORTED, TASKS, dynamic_axes, model_summary, output_names, read_config, resolve_head, resolve_task
from bertopt.paths import resolve_path
from bertopt.qat.placement import DEFAULT_EXCLUDE
from bertopt.ui import console, note, skipped

PARITY_TEXTS = 64


@accepts_renamed("qat")
def run_qat(
    input: str | Path,
    out: str | Path,
    *,
    data: str,
    text_column: str | None = None,
    label_column: str | None = None,
    val_data: str | None = None,
    val_fraction: OpenFraction = 0.1,
    samples: PositiveInt | None = None,
    epochs: PositiveFloat = 1.0,
    steps: PositiveInt | None = None,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 2e-5,
    warmup_ratio: HalfOpenFraction = 0.1,
    eval_every: PositiveInt | None = None,
    patience: PositiveInt = 3,
    min_delta: HalfOpenFraction = 0.01,
    max_length: MaxLength = 128,
    init_from: str | None = None,
    start: Literal["calibrate", "max"] = "calibrate",
    calib_batches: PositiveInt = 16,
    exclude: list[str] | None = None,
    quantize_bmm: bool = False,
    temperature: PositiveFloat = 2.0,
    output_weight: NonNegativeFloat = 1.0,
    hidden_weight: NonNegativeFloat = 1.0,
    attention_weight: NonNegativeFloat = 0.0,
    task_weight: NonNegativeFloat = 1.0,
    dropout: bool = False,
    task: Literal[TASKS] | None = None,
    pooling: Literal["auto", "mean", "cls", "none"] = "auto",
    normalize: bool | None = None,
    opset: Opset = 17,
    seed: int = 0,
    parity_min_mean_cosine: Cosine = 0.99,
    min_cosine: Cosine | None = None,
    max_accuracy_drop: NonNegativeFloat | None = None,
    eval: str | None = None,  # noqa: A002 - the CLI option is --eval
    eval_samples: PositiveInt = 64,
    max_float: PositiveInt | None = None,
    checkpoint_dir: str | None = None,
    output: str | None = None,
    resume: bool = True,
    force: bool = False,
    verbose: bool = False,
) -> Artifact:
    """Quantization-aware training of ``input`` (an HF folder, or an export artifact of one) into ``out``.

    - ``data``: training texts (.txt/.csv/.tsv/.jsonl); ``label_column`` adds the task loss
      (classifiers); without it the student learns from the teacher alone.
    - held-out split for early stopping: ``val_data`` (a file with the same columns) or a seeded
      ``val_fraction`` of ``data``; the best held-out state is kept (accuracy when labels are given,
      else the distillation loss), and training stops after ``patience`` evaluations without one.
      At equal held-out accuracy a state counts as better only when its held-out loss is lower by
      more than ``min_delta`` (a fraction of the best loss so far).
    - ``epochs`` (fractions allowed) or ``steps`` (wins when given); one step is one batch per process.
    - ``init_from``: a ``bertopt calibrate`` artifact whose quantizer scales (and float layers) QAT
      starts from. Without it, ``start="calibrate"`` (default) runs export + calibrate on ``data``
      first and starts from that (:mod:`bertopt.qat.start`); ``start="max"`` is modelopt's max
      calibration on ``calib_batches`` training batches.
    - ``exclude``: module names (or globs) kept in float, default: pooler and classifier head.
    - loss: ``output_weight`` x distillation of the output (logits at ``temperature`` / embedding
      cosine) + ``hidden_weight`` x hidden-state MSE + ``attention_weight`` x attention KL
      + ``task_weight`` x cross-entropy (with labels).
    - ``dropout``: keep the model's dropout in the student while it trains. Off by default: the
      teacher runs without dropout, and a student that must match it output for output learns best
      from the same deterministic function (measured on the S-Labs classifier: with dropout the
      held-out distillation loss rose 15x during QAT from a calibrated start).
    - a budget, as calibrate's (:mod:`bertopt.qat.budget`): ``min_cosine`` (min over held-out texts of the
      primary output's cosine vs the FP32 model) and/or ``max_accuracy_drop`` (points of accuracy below
      FP32, labels from ``label_column`` of ``eval``); held-out texts are ``eval`` or ``eval_samples``
      texts carved out of ``data`` (never trained, early-stopped or calibrated on). The more faithful of
      the QAT model and its start is written; if neither meets the budget, calibrate's search (at most
      ``max_float`` GEMMs back to float) is the third candidate; nothing meets it: exit 3, best written.
    - ``parity_min_mean_cosine``: the exported ONNX on ONNX Runtime (int8 kernels) must agree with the fake-quant
      torch model to at least this mean cosine over the held-out texts checked (logits rows or
      sentence embeddings). A mean, not a minimum: float noise that lands a value on a rounding
      boundary flips it by a whole quantization step, so single texts differ by more than float
      noise while an export bug (a lost or misplaced quantizer) moves every text.
    - checkpoints go to ``checkpoint_dir`` (default: a hidden ``.<out>.qat-checkpoint`` beside ``out``);
      a killed run resumes from the last one when started again (``resume=False`` starts over).
    """
    labels_column, limit, warmup = label_column, samples, warmup_ratio  # the options' older names, kept inside
    out = resolve_path(out)
    model_dir, src = _model_dir(input)
    cfg = read_config(model_dir)
    task = resolve_task(cfg, task, known=src)
    pooling, normalize = resolve_head(model_dir, task, pooling, normalize, known=src)
    # With --init-from, the calibrated model decides what stays float (its own default keeps the
    # pooler and head float); an explicit --exclude is applied on top.
    user_exclude = exclude
    exclude = list((DEFAULT_EXCLUDE if not init_from else ()) if exclude is None else exclude)
    _check_numbers(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, val_fraction=val_fraction, eval_every=eval_every,
                   patience=patience, min_delta=min_delta, max_length=max_length, calib_batches=calib_batches, temperature=temperature, limit=limit,
                   parity_min_mean_cosine=parity_min_mean_cosine, opset=opset, weights=(output_weight, hidden_weight, attention_weight, task_weight))
    from bertopt.qat.budget import check_budget

    budget = min_cosine is not None or max_accuracy_drop is not None
    if eval and not budget:
        raise BertoptError("qat: --eval is the held-out text of a budget, and no budget is given",
                           hint="add --min-cosine X and/or --max-accuracy-drop P (early stopping reads --val-data)")
    check_budget(min_cosine, max_accuracy_drop, eval, labels_column if (eval or max_accuracy_drop is not None) else None, where="qat")
    if labels_column and task != "sequence-classification":
        raise BertoptError(f"--label-column '{labels_column}' given, but {model_dir} is a {task} model",
                           hint="labels train classifiers; for an encoder, distil from the teacher on text alone (drop --label-column)")

    from bertopt.qat.start import STARTS, calibrated_start

    if start not in STARTS:
        raise BertoptError(f"unknown start '{start}'", hint="start: " + ", ".join(STARTS))
    data_path = resolve_path(data)
    inputs = {"model": describe_input(model_dir), "data": _describe_data(data_path)}
    auto_start = not init_from and start == "calibrate"
    if auto_start:  # as with --init-from: the calibrated model decides what stays float
        exclude = list(user_exclude or [])
    if val_data:
        inputs["val_data"] = _describe_data(resolve_path(val_data))
    init_path = None
    if init_from:
        from bertopt.qat.ranges import resolve_init_from

        init_path = resolve_init_from(init_from)
        inputs["init_from"] = describe_input(Path(resolve_path(init_from)))
    params = {
        "task": task, "pooling": pooling, "normalize": bool(normalize), "text_column": text_column, "label_column": labels_column,
        "val_fraction": None if val_data else val_fraction, "samples": limit, "epochs": None if steps else epochs, "steps": steps,
        "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup, "eval_every": eval_every, "patience": patience, "min_delta": min_delta, "max_length": max_length,
        "start": "calibrate" if auto_start else (None if init_from else start), "calib_batches": None if init_from else calib_batches, "exclude": exclude, "quantize_bmm": quantize_bmm,
        "temperature": temperature, "output_weight": output_weight, "hidden_weight": hidden_weight, "attention_weight": attention_weight,
        "task_weight": task_weight if labels_column else None, "dropout": dropout, "opset": opset, "seed": seed,
        "parity_min_mean_cosine": parity_min_mean_cosine,
    }
    if budget:
        params.update(min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop, eval=str(eval) if eval else None,
                      eval_samples=None if eval else eval_samples, max_float=max_float)
        if eval:
            inputs["eval"] = _describe_data(resolve_path(eval))
    if output:
        outs = output_names(task, pooling)
        if output not in outs:
            raise BertoptError(f"--output '{output}': the exported {task} model has no such output",
                               hint="its outputs are: " + ", ".join(outs))
        params["output"] = output
    if (done := up_to_date(out, "qat", inputs, params, force)) is not None:
        skipped("qat", out)
        _budget_gate(done)
        return done

    try:
        with _quiet():  # modelopt warns about untested transformers versions at import
            import modelopt.torch.quantization as mtq  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"bertopt qat needs nvidia-modelopt ({e})",
            hint="`pip install nvidia-modelopt` (works on the CPU; the ONNX export uses the legacy exporter)",
        ) from None

    import tempfile

    from bertopt.qat import dist
    from bertopt.qat.ranges import resolve_init_from

    from bertopt.qat.budget import carve

    tmp = None
    held_out = None
    train_path, train_limit = data_path, limit
    if auto_start or budget or init_path is not None:
        tmp = tempfile.TemporaryDirectory(prefix="bertopt-qat-start-")
    try:
        if budget:  # held-out texts first: the calibration and training below never see them
            held_out = carve(data_path, text_column=text_column, label_column=labels_column, eval=eval, eval_samples=eval_samples,
                             limit=limit, tmp=Path(tmp.name))
            if held_out.train_file is not None:
                train_path, train_limit = held_out.train_file, None
        fp32_dir = None
        if auto_start:  # every process calibrates the same way (DDP then broadcasts rank 0's state)
            cal = calibrated_start(model_dir, Path(tmp.name), data=str(train_path), text_column=text_column, task=task, pooling=pooling,
                                   normalize=bool(normalize), max_length=max_length, opset=opset)
            init_path = resolve_init_from(cal)
            fp32_dir = Path(tmp.name) / "export"
        ctx = None
        if tmp is not None:
            ctx = {"tmp": Path(tmp.name), "fp32_dir": fp32_dir, "start": init_path, "held": held_out, "train_path": train_path,
                   "model_dir": model_dir, "export_args": {"task": task, "pooling": pooling, "normalize": bool(normalize), "opset": opset}}
        env = dist.setup()
        try:
            art = _run(model_dir, out, cfg, env, task=task, pooling=pooling, normalize=bool(normalize), data_path=train_path,
                       text_column=text_column, labels_column=labels_column, val_data=val_data, val_fraction=val_fraction, limit=train_limit,
                       init_path=init_path, inputs=inputs, params=params, exclude=exclude, quantize_bmm=quantize_bmm,
                       calib_batches=calib_batches, checkpoint_dir=checkpoint_dir, resume=resume, verbose=verbose, ctx=ctx)
        finally:
            env.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    _budget_gate(art)
    return art


def _budget_gate(art: Artifact) -> None:
    from bertopt.errors import QualityGateError

    b = art.manifest.get("metrics", {}).get("budget")
    if b and not b.get("passed", True):
        c = b["candidates"][b["chosen"]]
        raise QualityGateError(
            f"qat: no candidate met the budget on {b['held_out']['n']} held-out texts; best found: '{b['chosen']}', "
            f"cosine min {c['cosine_min']:.5f}" + (f", accuracy drop {c['accuracy_drop_points']:.2f} points" if "accuracy_drop_points" in c else "")
            + f" (written to {art.path}, manifest budget.passed false)",
            hint="relax the budget, raise --max-float, or train/calibrate on more text",
        )


def _run(model_dir: Path, out: Path, cfg: dict, env, *, task, pooling, normalize, data_path, text_column, labels_column, val_data,
         val_fraction, limit, init_path, inputs, params, exclude, quantize_bmm, calib_batches, checkpoint_dir, resume, verbose, ctx=None) -> Artifact:
    import torch

    from bertopt.data import load_texts
    from bertopt.export import load_torch_model
    from bertopt.qat import batches, placement
    from bertopt.qat.losses import LossWeights
    from bertopt.qat.train import Checkpointer, TrainConfig, train

    say = note if env.main else (lambda *_: None)
    torch.manual_seed(params["seed"])
    input_names = SUPPORTED[cfg["model_type"]]

    # ---- data
    # without --val-data, 10 texts is the least that leaves some held out for early stopping
    train_td = load_texts(data_path, text_column=text_column, label_column=labels_column, limit=limit, min_texts=1 if val_data else 10)
    labels = _labels(train_td, cfg) if labels_column else None
    if val_data:
        val_td = load_texts(resolve_path(val_data), text_column=text_column, label_column=labels_column)
        val_labels = _labels(val_td, cfg) if labels_column else None
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    max_len = min(params["max_length"], cfg.get("max_position_embeddings") or params["max_length"])
    enc = batches.encode(tokenizer, train_td.texts, labels, max_len, "token_type_ids" in input_names)
    if val_data:
        train_enc, held = enc, batches.encode(tokenizer, val_td.texts, val_labels, max_len, "token_type_ids" in input_names)
        held_texts = val_td.texts
        held_labels = None if val_labels is None else [int(v) for v in val_labels]
    else:
        if len(enc) < 10:
            raise BertoptError(f"{data_path}: {len(enc)} texts are too few to hold some out for early stopping",
                               hint="use more texts, or pass --val-data with a held-out file")
        tr_rows, held_rows = batches.split_holdout(len(enc), val_fraction, params["seed"])
        train_enc, held = enc.subset(tr_rows), enc.subset(held_rows)
        held_texts = [train_td.texts[i] for i in held_rows]
        held_labels = None if labels is None else [int(labels[i]) for i in held_rows]

    # ---- teacher and student
    with console.status(f"qat: loading {model_dir}") if env.main else contextlib.nullcontext():
        teacher = load_torch_model(model_dir, task).to(env.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    if not params["dropout"]:
        for m in student.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0  # BERT's attention dropout also reads this module's p
    if task == "feature-extraction":  # the pooler is not part of the exported encoder: keep it out of training (and of DDP)
        for n, p in student.named_parameters():
            if ".pooler." in f".{n}":
                p.requires_grad_(False)
    placement.check_exclude(student, exclude)

    import modelopt.torch.quantization as mtq

    lengths = [len(x) for x in train_enc.ids]
    calib_rows = [r for e in range(4) for r in batches.epoch_batches(lengths, params["batch_size"], params["seed"], e)][:calib_batches]

    def calibrate_loop(model):
        with torch.no_grad():
            for rows in calib_rows:
                b = batches.collate(train_enc, rows, env.device)
                b.pop("labels", None)
                model(**b)

    qcfg = placement.quant_config(exclude, quantize_bmm)
    with console.status("qat: inserting quantizers and calibrating their ranges") if env.main else contextlib.nullcontext(), _quiet():
        student = mtq.quantize(student, qcfg, forward_loop=calibrate_loop)
    init = None
    if init_path is not None:
        from bertopt.qat.ranges import apply_ranges, check_equivalent, match_ranges

        init = apply_ranges(student, match_ranges(init_path, teacher))
        probe = batches.collate(train_enc, calib_rows[0], env.device)
        probe.pop("labels", None)
        init["float_cosine_vs_teacher"] = check_equivalent(student, teacher, probe, str(init_path))
        say(f"qat: starting from the calibrated model {init_path}: {init['linears_set']} GEMMs ({init['equalized']} equalized)"
            + (f", {len(init['left_float'])} left float as there: {', '.join(init['left_float'])}" if init["left_float"] else ""))
    qsum = placement.summary(student)
    if qsum["quantized_linears"] == 0:
        raise BertoptError("no GEMM is left to quantize", hint="check --exclude (and the --init-from artifact)")
    say(f"qat: {qsum['quantized_linears']} GEMMs fake-quantized (INT8), float: {', '.join(qsum['float_linears']) or 'none'}; "
        f"{len(train_enc)} training / {len(held)} held-out texts" + (f", {env.world} processes ({env.backend})" if env.enabled else ""))

    # ---- train
    weights = LossWeights(output=params["output_weight"], hidden=params["hidden_weight"], attention=params["attention_weight"],
                          task=params["task_weight"] or 0.0, temperature=params["temperature"])
    tcfg = TrainConfig(epochs=params["epochs"] or 1.0, steps=params["steps"], batch_size=params["batch_size"], lr=params["lr"],
                       warmup=params["warmup_ratio"], eval_every=params["eval_every"], patience=params["patience"], min_delta=params["min_delta"], seed=params["seed"])
    ckpt_dir = resolve_path(checkpoint_dir) if checkpoint_dir else out.parent / f".{out.name}.qat-checkpoint"
    ckpt = Checkpointer(ckpt_dir, fingerprint("qat-checkpoint", inputs, params | {"world_size": env.world}), owned=not checkpoint_dir)
    if not resume and env.main:
        ckpt.remove()
    env.barrier()
    history = train(student, teacher, train_enc, held, task=task, pooling=pooling, weights=weights, cfg=tcfg, env=env, ckpt=ckpt)
    b, i0 = history["best"], history["initial"]
    say(f"qat: best held-out step {b['step']}/{history['total_steps']}: " + _fmt_eval(b) + f" (before QAT: {_fmt_eval(i0)})"
        + (", stopped early" if history["stopped_early"] else ""))

    # ---- export (rank 0 writes; the others wait and read the result)
    error: BaseException | None = None
    if env.main:
        try:
            _write(out, student.to("cpu"), tokenizer, model_dir, cfg, task=task, pooling=pooling, normalize=normalize, inputs=inputs,
                   params=params, input_names=input_names, held_texts=held_texts, held_labels=held_labels, max_len=max_len, history=history, qsum=qsum,
                   ctx=ctx,
                   init=init, env=env, verbose=verbose)
            ckpt.remove()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    if env.any_failed(error is not None):
        if error is not None:
            raise error
        raise BertoptError("qat: rank 0 failed to write the artifact", hint="see rank 0's error above")
    art = load_artifact(out)
    if env.main:
        par = art.manifest["metrics"]["parity"]
        console.print(
            f"qat: {out / MODEL_FILE}  task={task}  written: {art.manifest['quantization'].get('written', 'qat')}; "
            f"{qsum['quantized_linears']} INT8 GEMMs trained, ORT int8 kernels "
            f"{art.manifest['metrics']['ort_int8_gemms']}; parity vs fake-quant torch: cosine mean {par['cosine_mean']:.5f} min {par['cosine_min']:.5f}"
            + (f", argmax agreement {par['argmax_agreement']:.4f}" if "argmax_agreement" in par else ""),
            markup=False,
        )
    return art


def _write(out, student, tokenizer, model_dir, cfg, *, task, pooling, normalize, inputs, params, input_names, held_texts, max_len,
           history, qsum, init, env, verbose, held_labels=None, ctx=None) -> None:
    import torch

    from bertopt.export import make_wrapper
    from bertopt.graph import int8_gemms, op_counts, ort_kernel_counts
    from bertopt.qat import onnx_qdq

    opset = params["opset"]
    wrapper = make_wrapper(student, task, input_names, pooling, normalize)
    outs = output_names(task, pooling)
    axes = dynamic_axes(input_names, outs)
    with write_artifact(out, "qat", inputs, params) as w:
        onnx_path = w.add_output("model", MODEL_FILE)
        sample = _feeds(tokenizer, held_texts[:2], input_names, pad_to=16)
        with console.status(f"qat: exporting Q/DQ ONNX (legacy exporter, opset {opset})"), w.timed("export"):
            try:
                onnx_qdq.export_qdq(wrapper, tuple(torch.from_numpy(sample[n]) for n in input_names), onnx_path, input_names, outs, axes, opset)
            except Exception as e:  # noqa: BLE001
                raise BertoptError(f"{model_dir}: Q/DQ export failed: {type(e).__name__}: {str(e)[:300]}",
                                   hint="report the model architecture; modelopt's Q/DQ export needs the legacy exporter") from None
            post = onnx_qdq.postprocess(onnx_path)
        with console.status("qat: parity check (ONNX Runtime int8 kernels vs the fake-quant torch model)"), w.timed("parity"):
            texts = held_texts[:PARITY_TEXTS]
            feeds = [_feeds(tokenizer, texts[i : i + 16], input_names, max_length=max_len) for i in range(0, len(texts), 16)]
            parity = onnx_qdq.parity(wrapper, onnx_path, feeds, outs, task, output=params.get("output"))
        note(f"qat: parity compared on output {parity['compared_output']}")
        if parity["cosine_mean"] < params["parity_min_mean_cosine"]:
            raise BertoptError(
                f"the exported Q/DQ model differs from the fake-quant torch model: mean cosine {parity['cosine_mean']:.4f} "
                f"< {params['parity_min_mean_cosine']} over {parity['texts']} held-out texts (min {parity['cosine_min']:.4f})",
                hint="lower --parity-min-mean-cosine if you accept it, or report it (the exporter or ORT's kernels disagree with modelopt)",
            )
        chosen = None
        if ctx is not None:
            with w.timed("choose"):
                chosen = _choose(ctx, onnx_path, params, cfg, held_texts, held_labels, max_len)
            w.metrics["budget" if "passed" in chosen else "start_check"] = {k: v for k, v in chosen.items() if k != "chosen_path"}
            if chosen["chosen"] != "qat":
                import shutil

                shutil.copyfile(chosen["chosen_path"], onnx_path)
                note(f"qat: writing '{chosen['chosen']}' ({chosen['chosen_path'].parent.name}): it is more faithful on held-out text than the QAT model")
        kernels = ort_kernel_counts(onnx_path)
        ops = op_counts(onnx_path)
        w.metrics.update({
            "parity": parity,
            "quantized_gemms": qsum["quantized_linears"],
            "ort_int8_gemms": int8_gemms(kernels),
            "ort_kernels": kernels,
            "qdq_ops": {k: ops.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm")},
            "postprocess": post,
            "initial": history["initial"],
            "best": history["best"],
        })
        if "accuracy" in history["best"]:
            w.metrics["accuracy"] = round(history["best"]["accuracy"], 6)
        w.extra["training"] = {k: v for k, v in history.items() if k not in ("initial", "best")}
        w.extra["quantization"] = {
            "scheme": "int8 symmetric, zero point 0; weights per output channel, activations per tensor at GEMM inputs",
            "library": "nvidia-modelopt",
            "float_linears": qsum["float_linears"],
            "bmm_quantizers": qsum["bmm_quantizers"],
            "init_from": init,
            "written": "qat" if chosen is None else chosen["chosen"],
        }
        if verbose:
            note("qat: ORT kernels: " + json.dumps(kernels, sort_keys=True))
        w.copy_tokenizer(model_dir)
        w.model = model_summary(cfg, task) | {"outputs": outs, "pooling": pooling, "normalize": normalize, "opset": opset,
                                              "exporter": "legacy", "precision": "int8", "quantization": "qdq"}
        w.add_output("history", "qat_history.json").write_text(json.dumps(history["history"], indent=1) + "\n")


def _choose(ctx: dict, qat_onnx: Path, params: dict, cfg: dict, held_texts, held_labels, max_len: int) -> dict:
    """Which model to write: the QAT export, its start, or (budget missed) calibrate's budget search."""
    from bertopt.artifacts import forget_outputs_under
    from bertopt.export import run_export
    from bertopt.qat.budget import CHECK_TEXTS, Chooser, fallback_calibrate, render

    fp32_dir = ctx["fp32_dir"]
    if fp32_dir is None:  # --init-from / --start max: an FP32 export as the reference
        fp32_dir = ctx["tmp"] / "reference"
        run_export(ctx["model_dir"], fp32_dir, **ctx["export_args"])
        forget_outputs_under(ctx["tmp"])
    fp32 = load_artifact(fp32_dir).model_path
    h = ctx["held"]
    budget = h is not None
    if budget:
        texts, labels, source = h.texts, h.labels, h.source
    else:
        texts = held_texts[:CHECK_TEXTS]
        labels = held_labels[:CHECK_TEXTS] if held_labels is not None else None
        source = f"{len(texts)} early-stopping texts"
    ch = Chooser(fp32, texts, labels, source, max_len, min_cosine=params.get("min_cosine"), max_accuracy_drop=params.get("max_accuracy_drop"),
                 id2label=cfg.get("id2label"), output=params.get("output"))
    cands = {"qat": qat_onnx}
    if ctx["start"] is not None:
        cands["start"] = Path(ctx["start"])

    def fallback():
        return fallback_calibrate(fp32_dir, ctx["tmp"] / "calibrate-budget", data=ctx["train_path"], text_column=params["text_column"],
                                  eval_file=h.eval_file, label_column=params["label_column"], min_cosine=params.get("min_cosine"),
                                  max_accuracy_drop=params.get("max_accuracy_drop"), max_float=params.get("max_float"), max_length=max_len)

    with console.status(f"qat: measuring the QAT model{' and its start' if 'start' in cands else ''} on {source}"):
        rec = ch.choose(cands, fallback if budget else None)
    goal = []
    if params.get("min_cosine") is not None:
        goal.append(f"min cosine >= {params['min_cosine']}")
    if params.get("max_accuracy_drop") is not None:
        goal.append(f"accuracy drop <= {params['max_accuracy_drop']} points")
    render(rec, f"qat: {'budget: ' + ', '.join(goal) if budget else 'QAT vs its start'} (vs FP32, {len(texts)} held-out texts)")
    if budget:
        fb = rec.get("fallback")
        console.print(f"qat: budget {'met' if rec['passed'] else 'NOT met'}: writing '{rec['chosen']}'"
                      + (f"; calibrate's search kept {len(fb['float_gemms'])} GEMMs in float ({', '.join(fb['float_gemms']) or 'none'}), "
                         f"est. +{fb['est_latency_ms']} ms per 128-token sequence" if fb and rec["chosen"] == "calibrate-budget" else ""),
                      markup=False)
    return rec


# --------------------------------------------------------------------------------------- helpers
def _model_dir(input) -> tuple[Path, dict]:
    """The HF folder to train, and what an export artifact says about it (task, pooling, normalize)."""
    p = resolve_path(input)
    if (p / MANIFEST).is_file():
        art = load_artifact(p, verify=False)
        if art.stage == "compress" and (p / "config.json").is_file():  # a compressed student: itself an HF folder
            return p, {"task": art.model_info.get("task"), "pooling": art.model_info.get("pooling")}
        src = art.manifest.get("inputs", {}).get("model", {}).get("path")
        if art.stage != "export" or not src or not (Path(src) / "config.json").is_file():
            raise BertoptError(
                f"{p}: qat trains the PyTorch model, and this '{art.stage}' artifact does not lead back to one",
                hint="pass the Hugging Face model folder (or the artifact `bertopt export` wrote from it)",
            )
        info = art.model_info
        return Path(src), {"task": info.get("task"), "pooling": info.get("pooling"), "normalize": info.get("normalize")}
    return p, {}


def _describe_data(path: Path) -> dict:
    if not path.is_file():
        raise BertoptError(f"{path}: no such data file", hint="pass a .txt (one text per line), .csv, .tsv or .jsonl file")
    return describe_input(path)


def _labels(td, cfg: dict):
    from bertopt.data import encode_labels

    id2label = cfg.get("id2label") or {}
    try:
        y = encode_labels(td.labels, id2label)
    except BertoptError as e:
        raise BertoptError(f"{td.path}: {e.message}", hint=e.hint) from None
    n = len(id2label) or int(y.max()) + 1
    bad = sorted({int(v) for v in y if not 0 <= v < n})
    if bad:
        raise BertoptError(f"{td.path}: labels {bad[:5]} are outside the model's {n} classes", hint="model labels: " + json.dumps(id2label))
    return y


def _feeds(tokenizer, texts, input_names, pad_to: int | None = None, max_length: int = 128):
    from bertopt.data import tokenize

    return tokenize(tokenizer, texts, input_names, max_length=pad_to or max_length, pad_to=pad_to)


def _fmt_eval(e: dict) -> str:
    bits = [f"loss {e['loss']:.4f}"]
    for k in ("accuracy", "teacher_agreement", "cosine"):
        if k in e:
            bits.append(f"{k} {e[k]:.4f}")
    return ", ".join(bits)


def _check_numbers(*, epochs, steps, batch_size, lr, warmup, val_fraction, eval_every, patience, min_delta, max_length, calib_batches, temperature,
                   limit, parity_min_mean_cosine, opset, weights) -> None:
    def bad(name, value, rule):
        raise BertoptError(f"{name}={value}: {rule}", hint=f"fix --{name.replace('_', '-')}")

    if steps is None and not epochs > 0:
        bad("epochs", epochs, "must be positive")
    for name, v in (("steps", steps), ("eval_every", eval_every), ("samples", limit)):
        if v is not None and v < 1:
            bad(name, v, "must be at least 1")
    for name, v in (("batch_size", batch_size), ("patience", patience), ("max_length", max_length), ("calib_batches", calib_batches)):
        if v < 1:
            bad(name, v, "must be at least 1")
    if not lr > 0:
        bad("lr", lr, "must be positive")
    if not 0 <= warmup < 1:
        bad("warmup_ratio", warmup, "must be in [0, 1)")
    if not 0 <= min_delta < 1:
        bad("min_delta", min_delta, "must be in [0, 1)")
    if not 0 < val_fraction < 1:
        bad("val_fraction", val_fraction, "must be in (0, 1)")
    if not temperature > 0:
        bad("temperature", temperature, "must be positive")
    if not -1 <= parity_min_mean_cosine <= 1:
        bad("parity_min_mean_cosine", parity_min_mean_cosine, "must be in [-1, 1]")
    if not 14 <= opset <= 21:
        bad("opset", opset, "use an opset from 14 to 21 (17 gives LayerNormalization)")
    if any(x < 0 for x in weights) or weights[0] + weights[1] + weights[2] == 0:
        raise BertoptError("loss weights must be >= 0 and at least one distillation weight positive",
                           hint="--output-weight, --hidden-weight, --attention-weight")


class _quiet:
    """Silence modelopt's prints ("Inserted N quantizers", plugin registrations) and warnings."""

    def __enter__(self):
        import contextlib
        import io
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._o = contextlib.redirect_stdout(io.StringIO())
        self._o.__enter__()
        return self

    def __exit__(self, *exc):
        self._o.__exit__(*exc)
        self._w.__exit__(*exc)
        return False
