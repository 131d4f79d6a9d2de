"""Make the student: keep some of the teacher's layers, prune FFN neurons by importance, count the work.

- **Depth** (``select_layers``): ``spaced`` (default) keeps N layers evenly spread over the teacher's
  depth, always including the last (6 -> 3 keeps layers 1, 3, 5, 0-based): every stage of the
  teacher's processing keeps a representative and the top layer, whose output the head and the
  pooling were trained on, is kept as it is. ``first`` keeps the bottom N (DistilBERT-style
  alternatives are covered by ``spaced``). Both were measured on the S-Labs classifier (README).
- **Width** (``ffn_importance``): FFN intermediate neurons ranked by how much they contribute on the
  given text, Minitron-style activation importance: mean |GELU(x W1 + b1)_j| over real tokens times
  the L2 norm of the neuron's output weights W2[:, j]. Gradient-free, so it needs no labels and one
  teacher forward per batch. The kept neurons stay in their order; the student's FFN is a plain
  ``intermediate_size`` in config.json, so every tool that reads a BERT config loads it.
- **Heads are not pruned**: transformers 5.x has no ``prune_heads`` / ``config.pruned_heads`` any more,
  and BERT derives the head size from ``hidden_size / num_attention_heads``, so a plain config cannot
  describe fewer heads of the same size. A student with fewer heads would not load in
  ``AutoModel.from_pretrained``, i.e. not be a Hugging Face folder the other stages take.
"""

from __future__ import annotations

import re

from bertopt.errors import BertoptError

SELECTIONS = ("spaced", "first")

_LAYER_KEY = re.compile(r"^(.*\bencoder\.layer\.)(\d+)\.(.*)$")


def select_layers(n_teacher: int, n_keep: int, rule: str = "spaced") -> list[int]:
    """0-based teacher layers the student keeps, in order."""
    if rule == "first":
        return list(range(n_keep))
    if rule == "spaced":
        return [int((i + 1) * n_teacher / n_keep + 0.5) - 1 for i in range(n_keep)]
    raise BertoptError(f"unknown layer selection '{rule}'", hint="--select: " + ", ".join(SELECTIONS))


def parse_layers(spec: str, n_teacher: int) -> list[int]:
    """'1,3,5' -> [1, 3, 5] (an explicit choice of 0-based teacher layers)."""
    try:
        keep = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        raise BertoptError(f"--select '{spec}': expected a rule ({', '.join(SELECTIONS)}) or comma-separated layer numbers",
                           hint="e.g. --select spaced, or --select 1,3,5 (0-based teacher layers)") from None
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n_teacher:
        raise BertoptError(f"--select '{spec}': layers must be increasing, distinct and within 0..{n_teacher - 1}",
                           hint=f"the teacher has {n_teacher} layers")
    return keep


def _encoder_layers(model):
    base = getattr(model, model.base_model_prefix, model)
    enc = getattr(base, "encoder", None)
    layers = getattr(enc, "layer", None)
    if layers is None or not all(hasattr(m, "intermediate") and hasattr(m, "output") for m in layers):
        raise BertoptError(f"compress: {type(model).__name__} has no BERT-style encoder.layer[i].intermediate/output",
                           hint="compress supports BERT-style encoders (bert, roberta, xlm-roberta, electra)")
    return layers


def ffn_importance(teacher, batches: list[dict], layers: list[int]) -> dict[int, "object"]:
    """{teacher layer: importance per FFN neuron (a float tensor)} over ``batches`` (dicts of inputs)."""
    import torch

    mods = _encoder_layers(teacher)
    sums = {i: None for i in layers}
    state = {"mask": None, "n": 0}
    hooks = []

    def hook(i):
        def fn(_m, _inp, out):
            a = out.detach().abs().float()
            m = state["mask"].unsqueeze(-1).to(a.dtype)
            s = (a * m).sum(dim=(0, 1))
            sums[i] = s if sums[i] is None else sums[i] + s
        return fn

    for i in layers:
        hooks.append(mods[i].intermediate.register_forward_hook(hook(i)))
    try:
        with torch.inference_mode():
            for b in batches:
                state["mask"] = b["attention_mask"]
                state["n"] += int(b["attention_mask"].sum())
                teacher(**{k: v for k, v in b.items() if k != "labels"})
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i in layers:
        w2 = mods[i].output.dense.weight.detach().float()  # [hidden, ffn]
        out[i] = sums[i] / max(state["n"], 1) * w2.norm(dim=0)
    return out


def build_student(teacher, keep: list[int], ffn_size: int, importance: dict | None):
    """A new model of the teacher's class with ``keep`` layers and FFN ``ffn_size``, weights from the teacher.

    Returns (student, {teacher layer: kept FFN neuron indices})."""
    import copy

    import torch

    cfg = copy.deepcopy(teacher.config)
    full_ffn = cfg.intermediate_size
    cfg.num_hidden_layers = len(keep)
    cfg.intermediate_size = ffn_size
    neurons = {}
    for i in keep:
        if ffn_size == full_ffn:
            neurons[i] = torch.arange(full_ffn)
        else:
            neurons[i] = torch.sort(torch.topk(importance[i], ffn_size).indices).values
    state = {}
    for k, v in teacher.state_dict().items():
        m = _LAYER_KEY.match(k)
        if not m:
            state[k] = v.clone()
            continue
        i = int(m.group(2))
        if i not in keep:
            continue
        rest = m.group(3)
        if rest in ("intermediate.dense.weight", "intermediate.dense.bias"):
            v = v[neurons[i]]
        elif rest == "output.dense.weight":
            v = v[:, neurons[i]]
        state[f"{m.group(1)}{keep.index(i)}.{rest}"] = v.clone()
    student = type(teacher)(cfg)
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise BertoptError(f"compress: the student's weights do not line up with the teacher's (missing {missing[:3]}, unexpected {unexpected[:3]})",
                           hint="report the model architecture")
    return student.eval(), {i: v.tolist() for i, v in neurons.items()}


def shape(cfg) -> dict:
    heads = cfg.num_attention_heads
    return {"layers": cfg.num_hidden_layers, "heads_per_layer": [heads] * cfg.num_hidden_layers, "ffn_size": cfg.intermediate_size,
            "hidden_size": cfg.hidden_size}


def flops_per_token(cfg, seq: int = 128) -> int:
    """Encoder FLOPs per token at sequence length ``seq`` (2 per multiply-add): Q/K/V/output
    projections, the two FFN GEMMs and the attention scores/context. Embedding lookups, LayerNorms,
    softmax and the head are left out (a few percent)."""
    h, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    a = h  # all heads kept: all_head_size == hidden_size
    per_layer = 2 * (4 * h * a) + 2 * (2 * h * f) + 2 * (2 * seq * a)
    return int(L * per_layer)


def n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))
