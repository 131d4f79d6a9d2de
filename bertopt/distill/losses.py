"""The QAT loss: distillation from the FP32 teacher (+ the task loss when labels are given).

- output: classifiers - KL(teacher || student) of the temperature-softened logits, times T^2
  (Hinton et al.); encoders - 1 - cosine of the sentence embeddings (mean/cls pooled as the model
  pools; per token when it does not), the metric ``bench`` reports for embeddings, and/or (``embedding``
  ``mse``) the MSE of the pooled embeddings divided by the teacher's mean square (sentence-transformers'
  distillation loss, which also keeps the vector norms);
- similarity (encoders, optional): MSE between the student's and the teacher's in-batch cosine
  similarity matrices of the pooled embeddings (off the diagonal): what neighbour ranks are made of;
- hidden: MSE of every layer's hidden states over real (unpadded) tokens, divided by the teacher's
  mean square for that layer so that the weight means the same for every model (TinyBERT-style);
- attention: KL of every layer's attention probabilities over real query rows (optional);
- task: cross-entropy against the labels (classifiers, only when ``--label-column`` is given).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossWeights:
    output: float = 1.0
    hidden: float = 1.0
    attention: float = 0.0
    task: float = 1.0
    temperature: float = 2.0
    embedding: str = "cosine"  # encoders: cosine, mse, or cosine+mse on the pooled sentence embedding
    similarity: float = 0.0

    @property
    def needs_hidden(self) -> bool:
        return self.hidden > 0

    @property
    def needs_attention(self) -> bool:
        return self.attention > 0


def pool(hidden, mask, pooling: str):
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "none":
        return hidden
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # cosine ignores a final L2 normalization


def distill_loss(student_out, teacher_out, batch: dict, task: str, pooling: str, w: LossWeights, layer_map: list[int] | None = None) -> tuple:
    """(total loss tensor, {part: float}) for one batch.

    ``layer_map``: for a student with fewer layers (``bertopt compress``), the teacher layer (0-based)
    each student layer learns from, in order; hidden states and attentions are matched by it.
    Default: layer i learns from layer i (QAT: same shape)."""
    import torch
    import torch.nn.functional as F

    mask = batch["attention_mask"]
    valid = mask.to(torch.bool)
    parts: dict = {}
    total = 0.0
    if task == "sequence-classification":
        T = w.temperature
        s = F.log_softmax(student_out.logits / T, dim=-1)
        t = F.softmax(teacher_out.logits / T, dim=-1)
        kd = F.kl_div(s, t, reduction="batchmean") * (T * T)
        if "labels" in batch and w.task > 0:
            ce = F.cross_entropy(student_out.logits, batch["labels"])
            parts["task"] = ce
            total = total + w.task * ce
    else:
        if pooling == "none":
            cos = F.cosine_similarity(student_out.last_hidden_state[valid], teacher_out.last_hidden_state[valid], dim=-1)
            kd = (1 - cos).mean()
        else:
            kd, sim = _embedding_loss(pool(student_out.last_hidden_state, mask, pooling), pool(teacher_out.last_hidden_state, mask, pooling), w)
            if sim is not None:
                parts["similarity"] = sim
                total = total + w.similarity * sim
    parts["output"] = kd
    total = total + w.output * kd
    if w.needs_hidden:
        hs = []
        t_hidden = teacher_out.hidden_states[1:] if layer_map is None else [teacher_out.hidden_states[i + 1] for i in layer_map]
        for s_h, t_h in zip(student_out.hidden_states[1:], t_hidden):
            t_v = t_h[valid]
            hs.append(((s_h[valid] - t_v) ** 2).mean() / (t_v**2).mean().clamp(min=1e-12))
        hid = torch.stack(hs).mean()
        parts["hidden"] = hid
        total = total + w.hidden * hid
    if w.needs_attention:
        at = []
        t_att = teacher_out.attentions if layer_map is None else [teacher_out.attentions[i] for i in layer_map]
        for s_a, t_a in zip(student_out.attentions, t_att):
            rows = valid[:, None, :, None].expand_as(t_a)  # real query rows; padded keys carry ~0 probability
            kl = t_a * (t_a.clamp(min=1e-12).log() - s_a.clamp(min=1e-12).log())
            at.append(kl.masked_fill(~rows, 0).sum() / rows[..., 0].sum().clamp(min=1))
        att = torch.stack(at).mean()
        parts["attention"] = att
        total = total + w.attention * att
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _embedding_loss(s, t, w: LossWeights) -> tuple:
    """(output loss, similarity loss or None) of the pooled student ``s`` vs teacher ``t`` embeddings [batch, hidden]."""
    import torch
    import torch.nn.functional as F

    kd = 0.0
    if "cosine" in w.embedding:
        kd = kd + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if "mse" in w.embedding:
        kd = kd + ((s - t) ** 2).mean() / (t**2).mean().clamp(min=1e-12)
    if w.similarity <= 0 or len(s) < 2:
        return kd, None
    su, tu = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return kd, (((su @ su.T) - (tu @ tu.T)) ** 2)[off].mean()
