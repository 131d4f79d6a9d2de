"""Which model output to compare, for every place that compares two models' outputs.

calibrate (fidelity, sensitivity), bench (fidelity, accuracy), qat (export parity) and fuse
(parity) all go through :func:`choose_output`, so a third-party export whose first output is not
the hidden state (a ``[batch, sequence]`` tensor first, pooled/hidden outputs later, any names) is
compared on the same, meaningful vector everywhere, and the choice is printed and recorded.

Comparable outputs, by shape and meaning:

- ``hidden``: a float ``[B, S, H]`` hidden state, compared as its mean over the attention mask;
- ``pooled``: a float ``[B, H]`` sentence vector (``sentence_embedding``, ``pooler_output``, ...);
- ``logits``: a float ``[B, C]`` classifier output (top-1 agreement is reported for it).

A ``[B, S]`` tensor (one value per token, e.g. a mask or token ids) and integer outputs are not
comparable. Order of preference: ``--output NAME``; then known names: ``sentence_embedding``,
``logits``, ``last_hidden_state``, ``pooler_output`` (mean-pooled hidden before BERT's pooler: the
pooler of sentence-transformers models is untrained and sees only the first token); then by shape:
logits for classifiers, else the first hidden state, else the first pooled vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bertopt.errors import BertoptError

KNOWN_NAMES = ("sentence_embedding", "logits", "last_hidden_state", "pooler_output")
SMALLEST_HIDDEN = 128  # BERT-tiny; a [B, C] output narrower than this with no hidden size known is logits
KIND_TEXT = {"hidden": "hidden state", "pooled": "pooled", "logits": "logits"}


@dataclass(frozen=True)
class OutputSpec:
    """One output as far as it is known without running it: name, dims (int, symbolic str or
    None each; None for the whole tuple when the rank is unknown), and whether it is float."""

    name: str
    dims: tuple | None
    is_float: bool = True

    def shape_text(self) -> str:
        if self.dims is None:
            return "[?]"
        return "[" + ",".join(str(d) if isinstance(d, int) else ("B" if i == 0 else "S" if i == 1 else "?")
                              for i, d in enumerate(self.dims)) + "]"


@dataclass(frozen=True)
class OutputChoice:
    name: str
    kind: str  # hidden | pooled | logits
    shape: str  # e.g. "[B,S,384]"

    def describe(self) -> str:
        how = ", mean-pooled" if self.kind == "hidden" else ""
        return f"'{self.name}' ({KIND_TEXT[self.kind]} {self.shape}{how})"

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": self.shape,
                "reduction": "mean over the attention mask" if self.kind == "hidden" else "none"}

    def vectors(self, y, mask=None) -> np.ndarray:
        """[rows, features] float64: a hidden state mean-pooled over ``mask`` (an array [B, S] or a
        list of per-row arrays), the others as they are."""
        if self.kind != "hidden":
            y = np.asarray(y, dtype=np.float64)
            return y.reshape(y.shape[0], -1)
        if isinstance(y, np.ndarray) and mask is not None and not isinstance(mask, list):
            m = np.asarray(mask, dtype=np.float64)[..., None]
            return (y.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)
        if mask is None:
            return np.stack([np.asarray(h, dtype=np.float64).mean(0) for h in y])
        return np.stack([np.asarray(h, dtype=np.float64)[np.asarray(m).astype(bool)].mean(0) for h, m in zip(y, mask)])


# ----------------------------------------------------------------------------------- specs
def specs_from_onnx(model) -> list[OutputSpec]:
    """Output specs of an ``onnx.ModelProto`` (or a path to one) from its declared output types."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    out = []
    for o in model.graph.output:
        tt = o.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(OutputSpec(o.name, dims, tt.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                              onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)))
    return out


def specs_from_arrays(outputs: dict, mask=None) -> list[OutputSpec]:
    """Specs of computed outputs. ``outputs[name]`` is an array, or a list of per-row arrays for
    per-token outputs (rows padded to different lengths); ``mask`` the attention mask(s)."""
    out = []
    for name, y in outputs.items():
        if name.startswith("__"):
            continue
        if isinstance(y, list):  # per-row arrays: one row is [S] or [S, H]
            row = np.asarray(y[0])
            dims = ("B", "S") + tuple(int(d) for d in row.shape[1:])
            out.append(OutputSpec(name, dims, np.issubdtype(row.dtype, np.floating)))
            continue
        y = np.asarray(y)
        dims = ["B"] + [int(d) for d in y.shape[1:]]
        m = None if mask is None or isinstance(mask, list) else np.asarray(mask)
        if m is not None and y.ndim >= 2 and y.shape[:2] == m.shape:
            dims[1] = "S"
        out.append(OutputSpec(name, tuple(dims), np.issubdtype(y.dtype, np.floating)))
    return out


def _hidden_size(specs: Sequence[OutputSpec], hidden_size: int | None) -> int | None:
    if hidden_size:
        return int(hidden_size)
    for s in specs:
        if s.is_float and s.dims is not None and len(s.dims) == 3 and isinstance(s.dims[2], int):
            return s.dims[2]
    return None


def classify(spec: OutputSpec, task: str | None = None, hidden_size: int | None = None) -> tuple[str | None, str]:
    """(kind or None, why it is not comparable)."""
    if not spec.is_float:
        return None, "not a float tensor"
    d = spec.dims
    if d is None:
        return None, "unknown shape"
    if len(d) == 3:
        return "hidden", ""
    if len(d) == 2:
        if not isinstance(d[1], int) or d[1] == 0:
            return None, "one value per token ([batch, sequence])"
        if spec.name == "logits":
            return "logits", ""
        if spec.name in ("sentence_embedding", "pooler_output"):
            return "pooled", ""
        if hidden_size:
            return ("pooled", "") if d[1] == hidden_size else ("logits", "")
        # no hidden state to measure H by: encoders' hidden sizes are >= 128, label sets far smaller
        return ("logits", "") if task == "sequence-classification" or d[1] < SMALLEST_HIDDEN else ("pooled", "")
    return None, f"rank {len(d)} (expected [B,S,H], [B,H] or [B,C])"


def choose_output(
    specs: Sequence[OutputSpec],
    *,
    requested: str | None = None,
    task: str | None = None,
    hidden_size: int | None = None,
    prefer: OutputChoice | None = None,
    where: str = "the model",
) -> OutputChoice:
    """The output to compare (see the module docstring). ``prefer`` (bench: the reference's
    choice) picks the same name, else the same kind, before the general order."""
    specs = list(specs)
    H = _hidden_size(specs, hidden_size)
    kinds = {s.name: classify(s, task, H) for s in specs}

    def pick(s: OutputSpec) -> OutputChoice:
        return OutputChoice(s.name, kinds[s.name][0], s.shape_text())

    listing = ", ".join(f"{s.name} {s.shape_text()}" for s in specs)
    if requested:
        s = next((s for s in specs if s.name == requested), None)
        if s is None:
            raise BertoptError(f"--output '{requested}': {where} has no such output",
                               hint=f"its outputs are: {listing}")
        if kinds[s.name][0] is None:
            raise BertoptError(f"--output '{requested}' of {where} cannot be compared: {kinds[s.name][1]} {s.shape_text()}",
                               hint="choose a hidden state [B,S,H], a pooled [B,H] or logits [B,C]; outputs: " + listing)
        return pick(s)
    ok = [s for s in specs if kinds[s.name][0] is not None]
    if not ok:
        raise BertoptError(f"{where}: no output to compare (outputs: {listing})",
                           hint="bertopt compares a float hidden state [B,S,H], a pooled vector [B,H] or logits [B,C]")
    if prefer is not None:
        for s in ok:
            if s.name == prefer.name:
                return pick(s)
        for s in ok:
            if kinds[s.name][0] == prefer.kind:
                return pick(s)
    for name in KNOWN_NAMES:
        for s in ok:
            if s.name == name:
                return pick(s)
    order = ("logits", "hidden", "pooled") if task == "sequence-classification" else ("hidden", "pooled", "logits")
    for kind in order:
        for s in ok:
            if kinds[s.name][0] == kind:
                return pick(s)
    raise AssertionError("unreachable")


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row (the last axis: a token's hidden state, a sentence's vector, logits) of two
    arrays of one shape; rows that are zero in both count as equal (1.0). Every comparison of two
    models' outputs (fuse and qat parity, calibrate's fidelity and sensitivity, bench) uses this one."""
    a, b = np.asarray(a), np.asarray(b)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30))


def choose_for_arrays(outputs: dict, task: str | None = None, requested: str | None = None, prefer: OutputChoice | None = None,
                      where: str = "the model") -> OutputChoice:
    """The output of a run (name -> array) that fidelity compares: ``requested`` when the run has it,
    else the reference's choice (``prefer``: same name, else same kind), else by name and shape."""
    specs = specs_from_arrays(outputs)
    has = requested is not None and any(sp.name == requested for sp in specs)
    return choose_output(specs, requested=requested if has else None, task=task, prefer=None if has else prefer, where=where)


def choose_for_onnx(model, *, requested: str | None = None, task: str | None = None, hidden_size: int | None = None,
                    where: str = "the model") -> OutputChoice:
    return choose_output(specs_from_onnx(model), requested=requested, task=task, hidden_size=hidden_size, where=where)
