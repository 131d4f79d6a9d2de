"""``run_qat``: HF model folder + text (+ labels) -> Q/DQ ONNX artifact trained with distillation.

Steps: the FP32 model is the teacher; its copy gets modelopt quantizers by ``calibrate``'s placement
(``placement``), ranges from a max calibration on training batches or from a ``calibrate`` artifact
(``--init-from``); the copy trains against the teacher on the training texts (``train``); the best
held-out state is exported through the legacy exporter as a Q/DQ ONNX (``onnx_qdq``), checked
against the fake-quant torch model on ONNX Runtime, and written like export's artifact: model.onnx +
tokenizer/ + manifest (model block, parity, training history, ORT's int8 kernel counts).

In code: ``run_qat`` = ``_plan`` (options resolved against the model, inputs, params) -> up to date?
-> ``_start`` (held-out texts carved out, the calibrated start) -> ``_run``: the texts
(``batches.load_training_data``) -> ``_student`` -> ``_train`` (``train.distil``) -> ``_export``
(``_write``: export, parity, ``_choose``, ``_record``).

Under ``torchrun`` the same call trains data-parallel (``dist``); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertopt.artifacts import (MODEL_FILE, Artifact, describe_data, describe_input, load_artifact, up_to_date,
                               write_artifact)
from bertopt.budget import gate
from bertopt.errors import BertoptError, MissingDependencyError
from bertopt.log import logger
from bertopt.models import SUPPORTED, dynamic_axes, model_summary, output_names, read_config, resolve_head, resolve_task
from bertopt.paths import resolve_path
from bertopt.qat import helpers
from bertopt.distill.batches import TrainingData
from bertopt.qat.options import QatOptions
from bertopt.qat.placement import DEFAULT_EXCLUDE_MODULES
from bertopt.ui import console, note, skipped

PARITY_SAMPLES = 64


def run_qat(input: str | Path, out: str | Path, options: QatOptions | None = None, *, force: bool = False,
            **kwargs: Any) -> Artifact:
    """Quantization-aware training of ``input`` (an HF folder, or an export artifact of one) into ``out``.

    The options are a :class:`~bertopt.qat.options.QatOptions` (``options=``) or its fields as keywords
    (``run_qat(m, out, data="train.csv", epochs=2)``):

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
    o = QatOptions.of(options, kwargs)
    job = _plan(input, out, o)
    if (done := up_to_date(job.out, "qat", job.inputs, job.params, force)) is not None:
        skipped("qat", job.out)
        gate(done)
        return done
    _require_modelopt()
    from bertopt.distill import dist
    from bertopt.outdir import scratch_folder

    # a working folder beside the output for the calibrated start, the budget's held-out texts and the
    # reference export: removed on every exit, and by the next write to `out` after a SIGKILL
    need = job.auto_start or o.budget or job.init_path is not None
    with scratch_folder(job.out, "qat-start") if need else contextlib.nullcontext() as tmp:
        if tmp is not None:
            _start(job, tmp)
        env = dist.setup()
        try:
            art = _run(job, env)
        finally:
            env.close()
    gate(art)
    return art


@dataclass
class _Job:
    """One qat run: the options, what they resolve to for this model, and where the training text is."""

    o: QatOptions
    out: Path
    model_dir: Path
    cfg: dict
    task: str
    pooling: str
    normalize: bool
    exclude: list[str]
    inputs: dict
    params: dict
    init_path: Path | None  # the calibrated model QAT starts from (--init-from, or the calibrated start)
    train_path: Path  # --data, or a copy without the budget's held-out texts
    train_limit: int | None
    tmp: Path | None = None  # set when QAT's export is measured against its start (and a budget)
    fp32_dir: Path | None = None  # the FP32 export made for the calibrated start
    held_out: Any = None  # the budget's held-out texts (bertopt.qat.budget.HeldText)

    @property
    def auto_start(self) -> bool:
        return not self.o.init_from and self.o.start == "calibrate"


def _plan(input, out, o: QatOptions) -> _Job:
    """Resolve the options against the model (task, head, what stays float) and check what can be
    checked before any work: the inputs and params that make the fingerprint."""
    out = resolve_path(out)
    model_dir, src = helpers.model_dir(input)
    cfg = read_config(model_dir)
    task = resolve_task(cfg, o.task, known=src)
    pooling, normalize = resolve_head(model_dir, task, o.pooling, o.normalize, known=src)
    if o.label_column and task != "sequence-classification":
        raise BertoptError(f"--label-column '{o.label_column}' given, but {model_dir} is a {task} model",
                           hint="labels train classifiers; for an encoder, distil from the teacher on text alone (drop --label-column)")
    # With --init-from (or the calibrated start), the calibrated model decides what stays float (its own
    # default keeps the pooler and head float); an explicit --exclude is applied on top.
    if o.init_from or o.start == "calibrate":
        exclude = list(o.exclude or [])
    else:
        exclude = list(DEFAULT_EXCLUDE_MODULES if o.exclude is None else o.exclude)
    data_path = resolve_path(o.data)
    inputs = {"model": describe_input(model_dir), "data": describe_data(data_path)}
    if o.val_data:
        inputs["val_data"] = describe_data(resolve_path(o.val_data))
    init_path = None
    if o.init_from:
        from bertopt.qat.ranges import resolve_init_from

        init_path = resolve_init_from(o.init_from)
        inputs["init_from"] = describe_input(Path(resolve_path(o.init_from)))
    if o.budget and o.eval:
        inputs["eval"] = describe_data(resolve_path(o.eval))
    if o.output and o.output not in (outs := output_names(task, pooling)):
        raise BertoptError(f"--output '{o.output}': the exported {task} model has no such output", hint="its outputs are: " + ", ".join(outs))
    return _Job(o=o, out=out, model_dir=model_dir, cfg=cfg, task=task, pooling=pooling, normalize=bool(normalize), exclude=exclude,
                inputs=inputs, params=o.params(task=task, pooling=pooling, normalize=normalize, exclude=exclude), init_path=init_path,
                train_path=data_path, train_limit=o.samples)


def _require_modelopt() -> None:
    try:
        with helpers.quiet():  # modelopt warns about untested transformers versions at import
            import modelopt.torch.quantization as mtq  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"bertopt qat needs nvidia-modelopt ({e})",
            hint="`pip install nvidia-modelopt` (works on the CPU; the ONNX export uses the legacy exporter)",
        ) from None


def _start(job: _Job, tmp: Path) -> None:
    """Into ``tmp``: the budget's held-out texts (carved out first, so that calibration and training
    never see them) and the calibrated start (export + calibrate on the training text)."""
    from bertopt.qat.budget import carve
    from bertopt.qat.ranges import resolve_init_from
    from bertopt.qat.start import calibrated_start

    o = job.o
    job.tmp = tmp
    if o.budget:
        job.held_out = carve(job.train_path, text_column=o.text_column, label_column=o.label_column, eval=o.eval, eval_samples=o.eval_samples,
                             limit=o.samples, tmp=tmp)
        if job.held_out.train_file is not None:
            job.train_path, job.train_limit = job.held_out.train_file, None
    if job.auto_start:  # every process calibrates the same way (DDP then broadcasts rank 0's state)
        cal = calibrated_start(job.model_dir, tmp, o, data=str(job.train_path), task=job.task, pooling=job.pooling, normalize=job.normalize)
        job.init_path = resolve_init_from(cal)
        job.fp32_dir = tmp / "export"


def _run(job: _Job, env) -> Artifact:
    import torch

    from bertopt.distill import batches

    torch.manual_seed(job.o.seed)
    # without --val-data, 10 texts is the least that leaves some held out for early stopping
    data = batches.load_training_data(job.model_dir, job.cfg, job.o, job.train_path, job.train_limit, min_texts=1 if job.o.val_data else 10)
    student, teacher, init, qsum = _student(job, env, data)
    say = note if env.main else (lambda *_: None)
    say(f"qat: {qsum['quantized_linears']} GEMMs fake-quantized (INT8), float: {', '.join(qsum['float_linears']) or 'none'}; "
        f"{len(data.train)} training / {len(data.held)} held-out texts" + (f", {env.world} processes ({env.backend})" if env.enabled else ""))
    history, ckpt = _train(job, env, data, student, teacher)
    return _export(job, env, data, student, history, qsum, init, ckpt)


def _student(job: _Job, env, data: TrainingData):
    """The teacher (frozen) and its fake-quantized copy, ranges from a max calibration or the calibrated start."""
    import modelopt.torch.quantization as mtq
    import torch

    from bertopt.export.torch_model import load_torch_model
    from bertopt.distill import batches
    from bertopt.qat import placement

    o = job.o
    with console.status(f"qat: loading {job.model_dir}") if env.main else contextlib.nullcontext():
        teacher = load_torch_model(job.model_dir, job.task).to(env.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    if not o.dropout:
        for m in student.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0  # BERT's attention dropout also reads this module's p
    if job.task == "feature-extraction":  # the pooler is not part of the exported encoder: keep it out of training (and of DDP)
        for n, p in student.named_parameters():
            if ".pooler." in f".{n}":
                p.requires_grad_(False)
    placement.check_exclude(student, job.exclude)
    lengths = [len(x) for x in data.train.ids]
    calib_rows = [r for e in range(4) for r in batches.epoch_batches(lengths, o.batch_size, o.seed, e)][:o.calib_batches]

    def calibrate_loop(model):
        with torch.no_grad():
            for rows in calib_rows:
                b = batches.collate(data.train, rows, env.device)
                b.pop("labels", None)
                model(**b)

    qcfg = placement.quant_config(job.exclude, o.quantize_bmm)
    with console.status("qat: inserting quantizers and calibrating their ranges") if env.main else contextlib.nullcontext(), helpers.quiet():
        student = mtq.quantize(student, qcfg, forward_loop=calibrate_loop)
    init = None
    if job.init_path is not None:
        init = _apply_start(job, env, data, student, teacher, calib_rows[0])
    qsum = placement.summary(student)
    if qsum["quantized_linears"] == 0:
        raise BertoptError("no GEMM is left to quantize", hint="check --exclude (and the --init-from artifact)")
    return student, teacher, init, qsum


def _apply_start(job: _Job, env, data: TrainingData, student, teacher, probe_rows) -> dict:
    """The calibrated model's ranges (equalization, float layers) onto the student; checked equivalent in float."""
    from bertopt.distill import batches
    from bertopt.qat.ranges import apply_ranges, check_equivalent, match_ranges

    init = apply_ranges(student, match_ranges(job.init_path, teacher))
    probe = batches.collate(data.train, probe_rows, env.device)
    probe.pop("labels", None)
    init["float_cosine_vs_teacher"] = check_equivalent(student, teacher, probe, str(job.init_path))
    if env.main:
        note(f"qat: starting from the calibrated model {job.init_path}: {init['linears_set']} GEMMs ({init['equalized']} equalized)"
             + (f", {len(init['left_float'])} left float as there: {', '.join(init['left_float'])}" if init["left_float"] else ""))
    return init


def _train(job: _Job, env, data: TrainingData, student, teacher):
    """Distillation (+ task loss) with early stopping and checkpoints; returns the history and the checkpointer."""
    from bertopt.distill.train import distil, fmt_eval

    history, ckpt = distil(student, teacher, data, job.o, job, env, stage="qat")
    b, i0 = history["best"], history["initial"]
    if env.main:
        note(f"qat: best held-out step {b['step']}/{history['total_steps']}: " + fmt_eval(b) + f" (before QAT: {fmt_eval(i0)})"
             + (", stopped early" if history["stopped_early"] else ""))
    return history, ckpt


def _export(job: _Job, env, data: TrainingData, student, history, qsum, init, ckpt) -> Artifact:
    """Rank 0 exports and writes the artifact; the others wait and read the result."""
    from bertopt.distill.dist import rank0_writes

    def write() -> None:
        _write(job, student.to("cpu"), data, history=history, qsum=qsum, init=init)
        ckpt.remove()

    rank0_writes(env, write, "qat")
    art = load_artifact(job.out)
    if env.main:
        par = art.manifest["metrics"]["parity"]
        console.print(
            f"qat: {job.out / MODEL_FILE}  task={job.task}  written: {art.manifest['quantization'].get('written', 'qat')}; "
            f"{qsum['quantized_linears']} INT8 GEMMs trained, ORT int8 kernels "
            f"{art.manifest['metrics']['ort_int8_gemms']}; parity vs fake-quant torch: cosine mean {par['cosine_mean']:.5f} min {par['cosine_min']:.5f}"
            + (f", argmax agreement {par['argmax_agreement']:.4f}" if "argmax_agreement" in par else ""),
            markup=False,
        )
    return art


def _write(job: _Job, student, data: TrainingData, *, history: dict, qsum: dict, init: dict | None) -> None:
    """Export the student as Q/DQ ONNX, check it against the fake-quant model, choose what to write, write the artifact."""
    import torch

    from bertopt.export.torch_model import make_wrapper
    from bertopt.qat import onnx_qdq

    o, task, model_dir = job.o, job.task, job.model_dir
    input_names = SUPPORTED[job.cfg["model_type"]]
    wrapper = make_wrapper(student, task, input_names, job.pooling, job.normalize)
    outs = output_names(task, job.pooling)
    axes = dynamic_axes(input_names, outs)
    with write_artifact(job.out, "qat", job.inputs, job.params) as w:
        onnx_path = w.add_output("model", MODEL_FILE)
        sample = helpers.feeds(data.tokenizer, data.held_texts[:2], input_names, pad_to=16)
        with console.status(f"qat: exporting Q/DQ ONNX (legacy exporter, opset {o.opset})"), w.timed("export"):
            try:
                onnx_qdq.export_qdq(wrapper, tuple(torch.from_numpy(sample[n]) for n in input_names), onnx_path, input_names, outs, axes, o.opset)
            except Exception as e:  # noqa: BLE001
                raise BertoptError(f"{model_dir}: Q/DQ export failed: {type(e).__name__}: {str(e)[:300]}",
                                   hint="report the model architecture; modelopt's Q/DQ export needs the legacy exporter") from None
            post = onnx_qdq.postprocess(onnx_path)
        with console.status("qat: parity check (ONNX Runtime int8 kernels vs the fake-quant torch model)"), w.timed("parity"):
            texts = data.held_texts[:PARITY_SAMPLES]
            feeds = [helpers.feeds(data.tokenizer, texts[i : i + 16], input_names, max_length=data.max_len) for i in range(0, len(texts), 16)]
            parity = onnx_qdq.torch_onnx_parity(wrapper, onnx_path, feeds, outs, task, output=o.output)
        note(f"qat: parity compared on output {parity['compared_output']}")
        if parity["cosine_mean"] < o.parity_min_mean_cosine:
            raise BertoptError(
                f"the exported Q/DQ model differs from the fake-quant torch model: mean cosine {parity['cosine_mean']:.4f} "
                f"< {o.parity_min_mean_cosine} over {parity['texts']} held-out texts (min {parity['cosine_min']:.4f})",
                hint="lower --parity-min-mean-cosine if you accept it, or report it (the exporter or ORT's kernels disagree with modelopt)",
            )
        chosen = None
        if job.tmp is not None:
            with w.timed("choose"):
                chosen = _choose(job, onnx_path, data)
            w.metrics["budget" if "passed" in chosen else "start_check"] = {k: v for k, v in chosen.items() if k != "chosen_path"}
            if chosen["chosen"] != "qat":
                import shutil

                shutil.copyfile(chosen["chosen_path"], onnx_path)
                note(f"qat: writing '{chosen['chosen']}' ({chosen['chosen_path'].parent.name}): it is more faithful on held-out text than the QAT model")
        _record(w, job, parity=parity, post=post, history=history, qsum=qsum, init=init, written="qat" if chosen is None else chosen["chosen"])
        w.model = model_summary(job.cfg, task) | {"outputs": outs, "pooling": job.pooling, "normalize": job.normalize, "opset": o.opset,
                                                  "exporter": "legacy", "precision": "int8", "quantization": "qdq"}


def _record(w, job: _Job, *, parity: dict, post: dict, history: dict, qsum: dict, init: dict | None, written: str) -> None:
    """The manifest's metrics, training and quantization blocks, the tokenizer and the history file (of the model written)."""
    from bertopt.graph import int8_gemms, op_counts, ort_kernel_counts

    onnx_path = w.dir / MODEL_FILE
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
        "written": written,
    }
    logger.debug("qat: ORT kernels: " + json.dumps(kernels, sort_keys=True))
    w.copy_tokenizer(job.model_dir)
    w.add_output("history", "qat_history.json").write_text(json.dumps(history["history"], indent=1) + "\n")


def _choose(job: _Job, qat_onnx: Path, data: TrainingData) -> dict:
    """Which model to write: the QAT export, its start, or (budget missed) calibrate's budget search."""
    from bertopt.outdir import forget_outputs_under
    from bertopt.export.stage import run_export
    from bertopt.qat.budget import CHECK_TEXTS, Chooser, fallback_calibrate, render

    o, tmp = job.o, job.tmp
    fp32_dir = job.fp32_dir
    if fp32_dir is None:  # --init-from / --start max: an FP32 export as the reference
        fp32_dir = tmp / "reference"
        run_export(job.model_dir, fp32_dir, task=job.task, pooling=job.pooling, normalize=job.normalize, opset=o.opset)
        forget_outputs_under(tmp)
    fp32 = load_artifact(fp32_dir).model_path
    h = job.held_out
    budget = h is not None
    if budget:
        texts, labels, source = h.texts, h.labels, h.source
    else:
        texts = data.held_texts[:CHECK_TEXTS]
        labels = data.held_labels[:CHECK_TEXTS] if data.held_labels is not None else None
        source = f"{len(texts)} early-stopping texts"
    ch = Chooser(fp32, texts, labels, source, data.max_len, min_cosine=o.min_cosine, max_accuracy_drop=o.max_accuracy_drop,
                 id2label=job.cfg.get("id2label"), output=o.output)
    cands = {"qat": qat_onnx}
    if job.init_path is not None:
        cands["start"] = Path(job.init_path)

    def fallback():
        return fallback_calibrate(fp32_dir, tmp / "calibrate-budget", o, data=job.train_path, eval_file=h.eval_file, max_length=data.max_len)

    with console.status(f"qat: measuring the QAT model{' and its start' if 'start' in cands else ''} on {source}"):
        rec = ch.choose(cands, fallback if budget else None)
    goal = []
    if o.min_cosine is not None:
        goal.append(f"min cosine >= {o.min_cosine}")
    if o.max_accuracy_drop is not None:
        goal.append(f"accuracy drop <= {o.max_accuracy_drop} points")
    render(rec, f"qat: {'budget: ' + ', '.join(goal) if budget else 'QAT vs its start'} (vs FP32, {len(texts)} held-out texts)")
    if budget:
        fb = rec.get("fallback")
        console.print(f"qat: budget {'met' if rec['passed'] else 'NOT met'}: writing '{rec['chosen']}'"
                      + (f"; calibrate's search kept {len(fb['float_gemms'])} GEMMs in float ({', '.join(fb['float_gemms']) or 'none'}), "
                         f"est. +{fb['est_latency_ms']} ms per 128-token sequence" if fb and rec["chosen"] == "calibrate-budget" else ""),
                      markup=False)
    return rec
