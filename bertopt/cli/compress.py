"""A smaller model: keep N of the teacher's layers and its most important FFN neurons, then distil.

Takes a Hugging Face folder (the teacher) and writes a Hugging Face folder (the student) that export,
fuse, calibrate/qat, build and bench take unchanged. The student learns from the teacher on --data:
text alone (embeddings), or text + --label-column (classifiers, adds the task loss). Early stopping
on --val-data; a killed run resumes from its checkpoint. Data-parallel with no change:
`torchrun --nproc_per_node 2 -m bertopt compress ...` (rank 0 writes).
"""

from __future__ import annotations

from bertopt.cli.options import command_from

command = command_from(
    "compress",
    arguments={"model_dir": "Hugging Face model folder (the teacher), or pkg:<package>."},
)
