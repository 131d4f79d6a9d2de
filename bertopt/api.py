"""Use what bertopt made from Python: ``bertopt.load(path)`` -> a :class:`Model`.

    import bertopt
    m = bertopt.load("runs/minilm-cpu/build")      # any artifact, a bare .onnx, or an HF folder
    vecs = m.encode(["a text", "another"])        # [N, H] float32, pooled as the artifact says
    m.predict(["a text"])                         # classifiers: [{"label", "score", "index"}]

A Model wraps the same :class:`bertopt.bench.runners.Runner` that ``bertopt bench`` times and
compares (ONNX Runtime with the session options a ``build`` saved, a TensorRT engine on GPU hosts,
PyTorch eager for an HF folder), and tokenizes and batches through the same code as bench's
fidelity/accuracy pass, so what you serve is what bench measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from bertopt.bench.runners import Runner, describe, open_runner
from bertopt.errors import BertoptError


class Model:
    """One loaded artifact. ``encode``/``predict`` take raw texts; ``model(feeds)`` runs token ids."""

    def __init__(self, runner: Runner):
        import threading

        self.runner = runner
        # HF fast tokenizers are not safe to call from several threads at once ("Already borrowed"): tokenizing is
        # serialized. ONNX Runtime sessions and OpenVINO runners (one infer request per thread) run calls from several
        # threads at once, so a service's threads overlap there; the other backends run one call at a time.
        self._lock = threading.Lock()
        self._concurrent = runner.backend in ("onnxruntime", "openvino")

    # ------------------------------------------------------------------ facts
    @property
    def info(self) -> dict:
        """name, path, backend (pytorch | onnxruntime | tensorrt), precision, stage, task."""
        return describe(self.runner) | {"outputs": list(self.runner.outputs), "max_length": self.runner.max_length}

    @property
    def task(self) -> str:
        return self.runner.task

    @property
    def labels(self) -> list[str] | None:
        """Class names in output order (classifiers), else None."""
        id2 = self.runner.id2label
        if not id2:
            return None
        return [str(id2.get(str(i), id2.get(i, i))) for i in range(len(id2))]

    @property
    def tokenizer(self):
        return self.runner.tokenizer

    def __repr__(self) -> str:
        r = self.runner
        return f"bertopt.Model({str(r.path)!r}, backend={r.backend}, precision={r.precision}, task={r.task})"

    # ------------------------------------------------------------------ running
    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw outputs for int64 feeds (input_ids, attention_mask[, token_type_ids])."""
        return self.runner(feeds)

    def _batches(self, texts: Sequence[str], batch_size: int, max_length: int | None):
        from bertopt.bench.measure import run_texts

        if batch_size < 1:
            raise BertoptError(f"batch_size must be at least 1, got {batch_size}")
        max_length = int(max_length or self.runner.max_length)
        # pool chunk by chunk: per-token hidden states of a large call never pile up in memory
        chunk = max(batch_size, 256 // batch_size * batch_size)
        served = self.runner.serving_outputs  # the embedding or logits: the hidden states are neither copied nor kept
        for i in range(0, len(texts), chunk):
            rows = list(texts[i:i + chunk])
            if self._concurrent:
                yield run_texts(self.runner, rows, max_length, batch_size=batch_size, outputs=served, tokenize_lock=self._lock)
                continue
            with self._lock:
                out = run_texts(self.runner, rows, max_length, batch_size=batch_size, outputs=served)
            yield out

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """Embeddings ``[N, H]`` (float32): the artifact's ``sentence_embedding`` output when it has one
        (pooled and normalized as exported), else the attention-masked mean of ``last_hidden_state``.
        Classifiers return their logits. Texts are truncated to ``max_length`` tokens (default: the
        model's limit) and padded per batch. A single string gives a 1-D vector."""
        from bertopt.bench.measure import pooled
        from bertopt.outputs import choose_for_arrays

        single = isinstance(texts, str)
        rows = [texts] if single else _check_texts(texts)
        parts, choice = [], None
        for out in self._batches(rows, batch_size, max_length):
            choice = choice or choose_for_arrays(out, self.runner.task, where=str(self.runner.path))  # the same output bench compares
            parts.append(pooled(out, choice)[1].astype(np.float32))
        vecs = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return vecs[0] if single else vecs

    def predict(self, texts: str | Sequence[str], batch_size: int = 32, max_length: int | None = None) -> list[dict] | dict:
        """Classifiers: one ``{"label", "score", "index"}`` per text (softmax score of the top class)."""
        if "logits" not in self.runner.outputs:
            raise BertoptError(f"{self.runner.path}: not a classifier (task {self.runner.task}, outputs {', '.join(self.runner.outputs)})",
                               hint="use encode() for embeddings; predict() needs a sequence-classification export")
        single = isinstance(texts, str)
        rows = [texts] if single else _check_texts(texts)
        labels = self.labels
        out = []
        for res in self._batches(rows, batch_size, max_length):
            logits = np.asarray(res["logits"], dtype=np.float64)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            for row in p:
                k = int(row.argmax())
                out.append({"label": labels[k] if labels and k < len(labels) else str(k), "score": float(row[k]), "index": k})
        return out[0] if single else out


def _check_texts(texts) -> list[str]:
    rows = list(texts)
    bad = [i for i, t in enumerate(rows) if not isinstance(t, str)]
    if bad:
        raise BertoptError(f"texts[{bad[0]}] is a {type(rows[bad[0]]).__name__}, not a str", hint="pass a list of strings")
    return rows


def load(path: str | Path, threads: int | None = None) -> Model:
    """Open an artifact folder (export, fuse, calibrate, qat, build), a bare ``.onnx`` with a
    ``tokenizer/`` beside it, a TensorRT engine artifact (GPU hosts) or a Hugging Face folder."""
    return Model(open_runner(path, threads))
