"""Tokenized texts and the batch schedule: length-bucketed, seeded, resumable, sharded across ranks.

The schedule is a pure function of (seed, epoch, step, rank), so a resumed run sees exactly the
batches the killed run would have seen, and under torchrun each rank takes its own batches of the
same global order (rank r takes batch ``step * world + r``): one step = ``world`` batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass
class Encoded:
    """Token ids per text (unpadded), optional class labels."""

    ids: list[list[int]]
    labels: np.ndarray | None
    pad_id: int
    type_ids: bool  # the model takes token_type_ids

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int]) -> "Encoded":
        return Encoded([self.ids[i] for i in rows], None if self.labels is None else self.labels[rows], self.pad_id, self.type_ids)


def encode(tokenizer, texts: list[str], labels: np.ndarray | None, max_length: int, type_ids: bool) -> Encoded:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, labels, pad, type_ids)


def collate(data: Encoded, rows: list[int], device=None) -> dict:
    """Pad the chosen rows to their own longest length; int64 tensors (+ ``labels`` when known)."""
    import torch

    width = max(len(data.ids[i]) for i in rows)
    input_ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        input_ids[r, : len(data.ids[i])] = torch.tensor(data.ids[i])
        mask[r, : len(data.ids[i])] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if data.type_ids:
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    if data.labels is not None:
        batch["labels"] = torch.as_tensor(data.labels[rows], dtype=torch.long)
    if device is not None:
        batch = {k: v.to(device) for k, v in batch.items()}
    return batch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: int = 50) -> list[list[int]]:
    """One epoch's batches (see ``bucketed_batches``), seeded by ``seed`` and ``epoch``."""
    return bucketed_batches(lengths, batch_size, random.Random(seed * 100_003 + epoch), bucket)


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, bucket: int = 50) -> list[list[int]]:
    """Shuffle, sort by length within windows of ``bucket`` batches, cut into batches, shuffle the batches.

    Batches hold texts of similar length (little padding) while every epoch sees a new order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    win = batch_size * bucket
    for s in range(0, len(order), win):
        chunk = sorted(order[s : s + win], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class Schedule:
    """Which rows rank ``rank`` trains on at global step ``step``."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, world: int, rank: int):
        self.lengths, self.batch_size, self.seed, self.world, self.rank = lengths, batch_size, seed, world, rank
        n_batches = -(-len(lengths) // batch_size)
        self.steps_per_epoch = n_batches // world
        self._epoch, self._batches = -1, []

    def rows(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch)
        return self._batches[k * self.world + self.rank]


def eval_batches(data: Encoded, batch_size: int, world: int = 1, rank: int = 0) -> list[list[int]]:
    """Held-out batches sorted by length (little padding), this rank's share of them."""
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return batches[rank::world]


def split_rows(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): a seeded random ``fraction`` of the rows is held out."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    k = max(1, int(round(n * fraction)))
    held = sorted(order[:k])
    train = sorted(order[k:])
    return train, held


@dataclass
class TrainingData:
    """The tokenized training texts and the held-out ones early stopping reads (qat and compress)."""

    tokenizer: object
    max_len: int
    train: Encoded
    held: Encoded
    held_texts: list[str]
    held_labels: list[int] | None


def load_training_data(model_dir, cfg: dict, o, path, limit: int | None, min_texts: int = 1) -> TrainingData:
    """``path`` (a file or a list of files, read in order: ``o.text_column``/``o.label_column``, first
    ``limit`` texts of each) tokenized for ``model_dir``;
    the held-out split is ``o.val_data`` or a seeded ``o.val_fraction`` of the texts (``o``: TrainingOptions)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from bertopt.data import load_texts
    from bertopt.errors import BertoptError
    from bertopt.models import SUPPORTED
    from bertopt.paths import resolve_path

    type_ids = "token_type_ids" in SUPPORTED[cfg["model_type"]]
    train_td = _load_all(path, o, limit, min_texts)
    labels = class_labels(train_td, cfg) if o.label_column else None
    if o.val_data:
        val_td = load_texts(resolve_path(o.val_data), text_column=o.text_column, label_column=o.label_column)
        val_labels = class_labels(val_td, cfg) if o.label_column else None
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    max_len = min(o.max_length, cfg.get("max_position_embeddings") or o.max_length)
    enc = encode(tokenizer, train_td.texts, labels, max_len, type_ids)
    if o.val_data:
        held_labels = None if val_labels is None else [int(v) for v in val_labels]
        return TrainingData(tokenizer, max_len, enc, encode(tokenizer, val_td.texts, val_labels, max_len, type_ids), val_td.texts, held_labels)
    if len(enc) < 10:
        raise BertoptError(f"{path}: {len(enc)} texts are too few to hold some out for early stopping",
                           hint="use more texts, or pass --val-data with a held-out file")
    tr_rows, held_rows = split_rows(len(enc), o.val_fraction, o.seed)
    return TrainingData(tokenizer, max_len, enc.subset(tr_rows), enc.subset(held_rows), [train_td.texts[i] for i in held_rows],
                        None if labels is None else [int(labels[i]) for i in held_rows])


def _load_all(path, o, limit: int | None, min_texts: int):
    """One ``TextData`` of every file in ``path`` (one path or a list), in order."""
    from bertopt.data import TextData, load_texts

    parts = [load_texts(p, text_column=o.text_column, label_column=o.label_column, limit=limit, min_texts=min_texts)
             for p in (path if isinstance(path, list) else [path])]
    if len(parts) == 1:
        return parts[0]
    labels = [y for t in parts for y in t.labels] if o.label_column else None
    return TextData(parts[0].path, [x for t in parts for x in t.texts], labels)


def class_labels(td, cfg: dict) -> np.ndarray:
    """The labels of ``td`` (bertopt.data.TextData) as class indices of the model (``id2label`` of config.json)."""
    import json

    from bertopt.data import encode_labels
    from bertopt.errors import BertoptError

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
