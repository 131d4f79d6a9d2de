"""Where the quantizers go: the modelopt quant config for ``calibrate``'s Q/DQ rules.

The rules (those of ``bertopt.calibrators.qdq``, so PTQ and QAT artifacts take the same path through
fuse/build/bench): symmetric INT8 with zero point 0; weights per channel on the output-channel axis
(axis 0 of ``nn.Linear.weight``), narrow range [-127, 127]; activations per tensor at the inputs of
the GEMMs, i.e. every
``nn.Linear`` (Q/K/V, attention output, FFN in/out); optionally the two batched attention MatMuls;
LayerNorm, Softmax, GELU, residual Adds and embeddings stay float; named layers can stay float.

In modelopt terms this is ``mtq.INT8_DEFAULT_CFG`` cut down to ``nn.Linear`` (its LLM-specific
exclusions do not apply to encoders), plus ``enable: False`` entries for the excluded modules.
"""

from __future__ import annotations

import fnmatch

from bertopt.errors import BertoptError

# Modules left in float unless the user says otherwise: the pooler and the classification head are
# tiny GEMMs at the very end whose error goes straight into the output, for no measurable speed.
DEFAULT_EXCLUDE_MODULES: tuple[str, ...] = ("pooler", "classifier")

# per output channel of nn.Linear.weight [out, in], narrow range [-127, 127] like calibrate's int8
# weights (TensorRT's rule); the export folds them into int8 initializers with that range.
INT8_WEIGHT = {"num_bits": 8, "axis": 0, "narrow_range": True}
INT8_ACT = {"num_bits": 8, "axis": None}  # per tensor


def quant_config(exclude: list[str] | tuple[str, ...] = DEFAULT_EXCLUDE_MODULES, quantize_bmm: bool = False, algorithm: str = "max") -> dict:
    """The ``mtq.quantize`` config: Linear inputs per-tensor, Linear weights per-channel, the rest off."""
    cfg: list[dict] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "parent_class": "nn.Linear", "cfg": dict(INT8_WEIGHT)},
        {"quantizer_name": "*input_quantizer", "parent_class": "nn.Linear", "cfg": dict(INT8_ACT)},
    ]
    if quantize_bmm:
        # modelopt's attention wrapper (registered for BertSelfAttention) quantizes Q, K (before Q.K^T),
        # the softmax output P and V (before P.V).
        cfg += [{"quantizer_name": f"*{x}_bmm_quantizer", "cfg": dict(INT8_ACT)} for x in "qkvp"]
    for pat in exclude:
        for q in module_patterns(pat):
            cfg.append({"quantizer_name": q + ".*", "enable": False})
    return {"quant_cfg": cfg, "algorithm": algorithm}


def module_patterns(pat: str) -> list[str]:
    """A user's module name or glob ('classifier', 'encoder.layer.5.*', 'bert.pooler') as glob patterns
    over full module names: it matches the module itself or any module whose path ends with it."""
    pat = pat.strip().strip(".")
    if not pat:
        raise BertoptError("an empty name in --exclude", hint="name modules like 'classifier' or 'encoder.layer.5.output.dense'")
    return [pat, "*." + pat]


def is_excluded(module_name: str, exclude: list[str] | tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(module_name, p) or fnmatch.fnmatchcase(module_name, p + ".*")
               for pat in exclude for p in module_patterns(pat))


def check_exclude(model, exclude: list[str] | tuple[str, ...], defaults: tuple[str, ...] = DEFAULT_EXCLUDE_MODULES) -> None:
    """A user's exclude name that matches no module is a typo: say so (the defaults may not exist)."""
    names = [n for n, _ in model.named_modules() if n]
    for pat in exclude:
        if pat in defaults:
            continue
        if not any(is_excluded(n, [pat]) for n in names):
            linears = [n for n, m in model.named_modules() if type(m).__name__ == "Linear"]
            raise BertoptError(
                f"--exclude '{pat}' matches no module of the model",
                hint="Linear modules are named like: " + ", ".join(linears[:4] + linears[-2:]),
            )


def quantized_linears(model) -> dict[str, object]:
    """name -> module for every Linear whose input and weight quantizers are both enabled."""
    out = {}
    for name, mod in model.named_modules():
        iq, wq = getattr(mod, "input_quantizer", None), getattr(mod, "weight_quantizer", None)
        if iq is not None and wq is not None and iq.is_enabled and wq.is_enabled:
            out[name] = mod
    return out


def summary(model) -> dict:
    """Counts for the manifest: which GEMMs got quantizers, which Linears stayed float."""
    q = quantized_linears(model)
    import torch

    floats = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in q]
    bmm = sum(1 for n, m in model.named_modules() if n.endswith("_bmm_quantizer") and m.is_enabled)
    return {"quantized_linears": len(q), "float_linears": floats, "bmm_quantizers": bmm}
