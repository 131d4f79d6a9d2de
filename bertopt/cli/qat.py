"""Quantization-aware training with distillation from the FP32 model, exported as Q/DQ ONNX (INT8).

The FP32 model teaches its fake-quantized copy (same Q/DQ placement as calibrate) on --data: text
alone, or text + --label-column for classifiers. Early stopping on a held-out split; a killed run
resumes from its checkpoint when started again. Data-parallel with no change:
`torchrun --nproc_per_node 2 -m bertopt qat ...` (gloo on the CPU, nccl on GPUs; rank 0 writes).
"""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from bertopt.cli.options import Force, Out, Quiet, Verbose, split_items

PANELS = {
    "Data": ["data", "text_column", "label_column", "val_data", "val_fraction", "samples", "max_length"],
    "Training": ["epochs", "steps", "batch_size", "lr", "warmup_ratio", "eval_every", "patience", "min_delta", "temperature",
                 "output_weight", "hidden_weight", "attention_weight", "task_weight", "dropout", "seed", "checkpoint_dir", "resume"],
    "Quantization": ["init_from", "start", "calib_batches", "exclude", "quantize_bmm"],
    "Checks and budget": ["eval", "eval_samples", "output", "min_cosine", "max_accuracy_drop", "max_float", "parity_min_mean_cosine"],
    "Export": ["task", "pooling", "normalize", "opset"],
}


def command(
    model_dir: Annotated[str, typer.Argument(help="Hugging Face model folder (the FP32 teacher), pkg:<package>, or its export artifact.")],
    out: Out,
    data: Annotated[str, typer.Option(help="Training text: .txt (one per line), .csv, .tsv, .jsonl.")],
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data (csv/tsv/jsonl).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column: adds the task loss (classifiers).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Held-out file for early stopping (default: --val-fraction of --data).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of --data held out for early stopping.")] = 0.1,
    samples: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N texts of --data (default: all).")] = None,
    epochs: Annotated[float, typer.Option(help="Training epochs (fractions allowed).")] = 1.0,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Training steps (overrides --epochs); a step is one batch per process.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size per process.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (linear warmup, linear decay).")] = 2e-5,
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of the steps with a linear learning-rate warmup, in [0, 1).")] = 0.1,
    eval_every: Annotated[Optional[int], typer.Option(min=1, help="Steps between held-out evaluations/checkpoints (default: a tenth of the run).")] = None,
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many held-out evaluations without improvement (accuracy with labels, else distillation loss).")] = 3,
    min_delta: Annotated[float, typer.Option(help="At equal held-out accuracy, the held-out loss must fall by more than this fraction to count as better.")] = 0.01,
    max_length: Annotated[int, typer.Option(min=8, help="Truncate texts to this many tokens.")] = 128,
    init_from: Annotated[Optional[str], typer.Option(help="A `bertopt calibrate` artifact: start from its quantizer ranges (and float layers).")] = None,
    start: Annotated[str, typer.Option(help="Without --init-from: 'calibrate' (export + bertopt calibrate on --data first, default) or 'max' (modelopt max calibration).")] = "calibrate",
    calib_batches: Annotated[int, typer.Option(min=1, help="Training batches for the initial max calibration (--start max).")] = 16,
    exclude: Annotated[Optional[List[str]], typer.Option(help="Modules (names or globs) kept in float; repeatable, commas too (default: pooler,classifier; '' for none).")] = None,
    quantize_bmm: Annotated[bool, typer.Option(help="Also quantize the attention batched MatMuls.")] = False,
    temperature: Annotated[float, typer.Option(help="Distillation temperature for logits.")] = 2.0,
    output_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the output distillation loss (logits KL / embedding cosine).")] = 1.0,
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state distillation loss (0 turns it off).")] = 1.0,
    attention_weight: Annotated[float, typer.Option(help="Weight of the attention-probability distillation loss.")] = 0.0,
    task_weight: Annotated[float, typer.Option(help="Weight of the task loss (with --label-column).")] = 1.0,
    dropout: Annotated[bool, typer.Option("--dropout/--no-dropout", help="Keep the model's dropout in the student while it trains (off: it matches the teacher's deterministic outputs).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the split, batch order and dropout.")] = 0,
    task: Annotated[Optional[str], typer.Option(help="feature-extraction or sequence-classification (default: from the model, as export).")] = None,
    pooling: Annotated[str, typer.Option(help="Sentence embedding output, as export: auto, mean, cls, none.")] = "auto",
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalize the pooled embedding (default: as export).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset of the exported Q/DQ model.")] = 17,
    parity_min_mean_cosine: Annotated[float, typer.Option(help="Export check: the ONNX model (ORT int8) vs the fake-quant torch model, minimum MEAN cosine over held-out texts (was --min-cosine).")] = 0.99,
    min_cosine: Annotated[Optional[float], typer.Option(help="Budget: min cosine of the output vs FP32 over held-out texts (as calibrate's); exit 3 with the best model if nothing meets it.")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Budget: classifier accuracy on --eval at most this many points below FP32 (labels: --label-column).")] = None,
    eval: Annotated[Optional[str], typer.Option("--eval", help="Held-out text for the budget (default: --eval-samples texts carved out of --data, never trained on).")] = None,
    eval_samples: Annotated[int, typer.Option(min=1, help="Without --eval: texts of --data held out for the budget.")] = 64,
    max_float: Annotated[Optional[int], typer.Option(min=1, help="Budget fallback (calibrate's search): at most this many GEMMs back in float (default: a quarter).")] = None,
    checkpoint_dir: Annotated[Optional[str], typer.Option(help="Where checkpoints go (default: .<out>.qat-checkpoint beside --out).")] = None,
    output: Annotated[Optional[str], typer.Option(help="Output the export parity check compares (default: chosen by shape; see README).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume a killed run from its checkpoint.")] = True,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.qat.stage import run_qat

    run_qat(
        model_dir, out, data=data, text_column=text_column, label_column=label_column, val_data=val_data, val_fraction=val_fraction,
        samples=samples, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, warmup_ratio=warmup_ratio, eval_every=eval_every, patience=patience, min_delta=min_delta,
        max_length=max_length, init_from=init_from, start=start, calib_batches=calib_batches, exclude=split_items(exclude), quantize_bmm=quantize_bmm,
        temperature=temperature, output_weight=output_weight, hidden_weight=hidden_weight, attention_weight=attention_weight, task_weight=task_weight, dropout=dropout, seed=seed,
        task=task, pooling=pooling, normalize=normalize, opset=opset,
        parity_min_mean_cosine=parity_min_mean_cosine, min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop, eval=eval,
        eval_samples=eval_samples, max_float=max_float, checkpoint_dir=checkpoint_dir, output=output, resume=resume, force=force, verbose=verbose,
    )
