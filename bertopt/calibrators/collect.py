"""Activation statistics: run the FP32 model on ONNX Runtime over the calibration text, streaming.

The model is run with the tensors to observe added as graph outputs (ONNX Runtime keeps a graph
output intact through its optimizations), batch by batch, and each batch updates one streaming
histogram per tensor (:mod:`bertopt.calibrators.histogram`), so memory stays bounded however much
text there is.

Texts are batched in order of length (less padding, less compute). Padding positions are left out
of the statistics of every tensor laid out as [batch, sequence, ...]: their values never reach a
real token's output (attention masks padded keys, pooling masks padded rows), so letting them widen
a range would only cost resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bertopt.calibrators.histogram import Histogram, NonFiniteError
from bertopt.calibrators.smooth import ChannelStats
from bertopt.errors import BertoptError
from bertopt.graph import ort_session

DEFAULT_BINS = 2048


def model_inputs(model) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def float_activations(model) -> list[str]:
    """Every float32 tensor a node computes (not constants, not shape arithmetic), in graph order.

    Types come from ONNX shape inference; outputs of ops it does not know (com.microsoft fused ops)
    take the type of their first input, which holds for every op bertopt's passes produce.
    """
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort; fall back to the given value_info
        inferred = model
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)}
    for init in g.initializer:
        types[init.name] = init.data_type
    const_out: set[str] = {i.name for i in g.initializer}
    out: list[str] = []
    for n in g.node:
        if n.op_type == "Constant" or (n.input and all(x in const_out or x == "" for x in n.input)):
            const_out.update(n.output)
            continue
        for o in n.output:
            if not o:
                continue
            if o not in types and n.domain not in ("", "ai.onnx") and n.input:
                types[o] = types.get(n.input[0], 0)
            if types.get(o) == onnx.TensorProto.FLOAT:
                out.append(o)
    return out


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]
    indices: list[int]  # positions of its texts in the calibration list


def make_batches(tokenizer, texts: Sequence[str], input_names: Sequence[str], max_length: int, batch_size: int) -> list[Batch]:
    """Texts tokenized (truncated to ``max_length``) and batched by length."""
    from bertopt.data import tokenize

    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = []
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        feeds = tokenize(tokenizer, [texts[i] for i in idx], input_names, max_length=max_length)
        batches.append(Batch(feeds=feeds, indices=idx))
    return batches


def observing_session(model, tensors: Sequence[str], threads: int | None = None):
    """An ORT session on ``model`` that also returns ``tensors``."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return ort_session(m, "ORT_ENABLE_BASIC", threads)


def _select_tokens(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if x.ndim >= 2 and x.shape[:2] == mask.shape:
        return x[mask]
    return x


def collect(
    model,
    batches: Sequence[Batch],
    histograms: Sequence[str] = (),
    channels: Sequence[str] = (),
    texts: Sequence[str] | None = None,
    threads: int | None = None,
    advance: Callable[[int], None] = lambda n: None,
    lenient: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, Histogram], dict[str, ChannelStats]]:
    """One pass over ``batches``: a streaming |x| histogram for each tensor in ``histograms`` and
    per-channel (last axis) min/max/sum for each tensor in ``channels``, over the real tokens (padding
    masked out), in :data:`DEFAULT_BINS` bins.

    NaN or inf in an observed tensor is a user error naming the tensor and the texts that caused it,
    except for tensors in ``lenient`` (observed only for TensorRT's cache, e.g. a -inf attention
    mask): those are dropped from the result.
    """
    names = list(dict.fromkeys(list(histograms) + list(channels)))
    hists = {t: Histogram(DEFAULT_BINS) for t in histograms}
    stats: dict[str, ChannelStats] = {}
    if not names:
        return hists, stats
    sess = observing_session(model, names, threads)
    want_ch = set(channels)
    dropped: set[str] = set()
    for b in batches:
        outs = sess.run(names, b.feeds)
        mask = b.feeds["attention_mask"].astype(bool) if "attention_mask" in b.feeds else None
        for name, x in zip(names, outs):
            if mask is not None:
                x = _select_tokens(x, mask)
            if x.size == 0 or name in dropped:
                continue
            try:
                if name in hists:
                    hists[name].update(x)
                if name in want_ch:
                    if not np.isfinite(x).all():
                        bad = ~np.isfinite(x)
                        raise NonFiniteError(int(np.isnan(x[bad]).sum()), int(np.isinf(x[bad]).sum()))
                    if name in stats:
                        stats[name].update(x)
                    else:
                        stats[name] = ChannelStats.of(x)
            except NonFiniteError as e:
                if name not in lenient:
                    raise _nonfinite(e, name, b, texts) from None
                hists.pop(name, None)
                dropped.add(name)
        advance(len(b.indices))
    return hists, stats


def _nonfinite(e: NonFiniteError, name: str, b: Batch, texts: Sequence[str] | None) -> BertoptError:
    first = sorted(b.indices)[0]
    sample = f"; e.g. text #{first}: {texts[first][:80]!r}" if texts is not None else ""
    return BertoptError(
        f"the FP32 model produced {e.nan} NaN and {e.inf} inf values in tensor '{name}' on calibration texts "
        f"#{', #'.join(str(i) for i in sorted(b.indices)[:8])}{'...' if len(b.indices) > 8 else ''}{sample}",
        hint="no INT8 range can be computed from non-finite activations: check the input model "
        "(`bertopt bench` it against the export), or remove those texts from the calibration data",
    )
