"""A smaller model: keep N of the teacher's layers and its most important FFN neurons, then distil.

Takes a Hugging Face folder (the teacher) and writes a Hugging Face folder (the student) that export,
fuse, calibrate/qat, build and bench take unchanged. The student learns from the teacher on --data:
text alone (embeddings), or text + --label-column (classifiers, adds the task loss). Early stopping
on --val-data; a killed run resumes from its checkpoint. Data-parallel with no change:
`torchrun --nproc_per_node 2 -m bertopt compress ...` (rank 0 writes).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bertopt.cli.options import Force, Out, Quiet, Verbose

PANELS = {
    "Student": ["layers", "select", "ffn_size", "importance_batches"],
    "Data": ["data", "text_column", "label_column", "val_data", "val_fraction", "samples", "max_length", "task", "pooling"],
    "Training": ["epochs", "steps", "batch_size", "lr", "warmup_ratio", "eval_every", "patience", "min_delta", "temperature",
                 "output_weight", "hidden_weight", "task_weight", "seed", "checkpoint_dir", "resume"],
}


def command(
    model_dir: Annotated[str, typer.Argument(help="Hugging Face model folder (the teacher), or pkg:<package>.")],
    out: Out,
    data: Annotated[str, typer.Option(help="Training text: .txt (one per line), .csv, .tsv, .jsonl.")],
    layers: Annotated[Optional[int], typer.Option(help="Teacher layers the student keeps (default: all).")] = None,
    select: Annotated[str, typer.Option(help="Which layers: spaced (evenly spread, last kept), first, or 0-based numbers '1,3,5'.")] = "spaced",
    ffn_size: Annotated[Optional[int], typer.Option(help="FFN neurons kept per layer, the most important on --data (default: all).")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data (csv/tsv/jsonl).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column: adds the task loss (classifiers).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Held-out file for early stopping (default: --val-fraction of --data).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of --data held out for early stopping.")] = 0.1,
    samples: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N texts of --data (default: all).")] = None,
    importance_batches: Annotated[int, typer.Option(min=1, help="Training batches the FFN neuron importance is measured on.")] = 32,
    epochs: Annotated[float, typer.Option(help="Training epochs (fractions allowed).")] = 3.0,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Training steps (overrides --epochs); a step is one batch per process.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size per process.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (linear warmup, linear decay).")] = 1e-4,
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of the steps with a linear learning-rate warmup, in [0, 1).")] = 0.1,
    eval_every: Annotated[Optional[int], typer.Option(min=1, help="Steps between held-out evaluations/checkpoints (default: a tenth of the run).")] = None,
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many held-out evaluations without improvement.")] = 3,
    min_delta: Annotated[float, typer.Option(help="At equal held-out accuracy, the held-out loss must fall by more than this fraction to count as better.")] = 0.01,
    max_length: Annotated[int, typer.Option(min=8, help="Truncate texts to this many tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Distillation temperature for logits.")] = 2.0,
    output_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the output distillation loss (logits KL / embedding cosine).")] = 1.0,
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state distillation loss (0 turns it off).")] = 1.0,
    task_weight: Annotated[float, typer.Option(help="Weight of the task loss (with --label-column).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for the split, batch order and initialisation.")] = 0,
    task: Annotated[Optional[str], typer.Option(help="feature-extraction or sequence-classification (default: from config.json).")] = None,
    pooling: Annotated[str, typer.Option(help="Sentence embedding the output loss compares: auto, mean, cls, none.")] = "auto",
    checkpoint_dir: Annotated[Optional[str], typer.Option(help="Where checkpoints go (default: .<out>.compress-checkpoint beside --out).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume a killed run from its checkpoint.")] = True,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from bertopt.compress.stage import run_compress

    run_compress(
        model_dir, out, data=data, val_data=val_data, text_column=text_column, label_column=label_column, val_fraction=val_fraction,
        samples=samples, layers=layers, select=select, ffn_size=ffn_size, importance_batches=importance_batches, epochs=epochs, steps=steps,
        batch_size=batch_size, lr=lr, warmup_ratio=warmup_ratio, eval_every=eval_every, patience=patience, min_delta=min_delta,
        max_length=max_length, temperature=temperature, output_weight=output_weight, hidden_weight=hidden_weight, task_weight=task_weight,
        task=task, pooling=pooling, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume, force=force,
        verbose=verbose,
    )
