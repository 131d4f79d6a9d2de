"""Per-architecture facts as data: what bertopt supports and how its inputs look."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from bertopt.errors import BertoptError
from bertopt.options import POOLING

# model_type (config.json) -> the ONNX input names the encoder takes, in order.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "bert": ("input_ids", "attention_mask", "token_type_ids"),
    "roberta": ("input_ids", "attention_mask"),
    "xlm-roberta": ("input_ids", "attention_mask"),
    "distilbert": ("input_ids", "attention_mask"),
    "electra": ("input_ids", "attention_mask", "token_type_ids"),
}

TASKS = ("feature-extraction", "sequence-classification")

# Dynamic axes shared by every exported input and output.
DYNAMIC_AXES = {0: "batch", 1: "sequence"}


def read_config(model_dir: Path) -> dict:
    """config.json of a Hugging Face folder, with errors that say what is wrong."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise BertoptError(f"{model_dir}: no such folder", hint="pass a local Hugging Face model folder (config.json + weights + tokenizer)")
    if not model_dir.is_dir():
        raise BertoptError(f"{model_dir}: not a folder", hint="pass a local Hugging Face model folder (config.json + weights + tokenizer)")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise BertoptError(
            f"{model_dir}: no config.json: not a Hugging Face model folder",
            hint="save the model with `model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)`",
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise BertoptError(f"{cfg_path}: invalid JSON ({e})", hint="fix or re-save the config") from None
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        raise BertoptError(
            f"{cfg_path}: model_type '{mt}' is not supported",
            hint="supported architectures: " + ", ".join(sorted(SUPPORTED)),
        )
    if not any((model_dir / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise BertoptError(f"{model_dir}: no weights (model.safetensors or pytorch_model.bin)", hint="save the model with `save_pretrained`")
    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise BertoptError(f"{model_dir}: no tokenizer files", hint="save the tokenizer into the same folder with `tokenizer.save_pretrained`")
    return cfg


_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
             "vocab.txt", "modules.json", "sentence_bert_config.json")


def hf_files(folder: Path) -> list[str]:
    """The Hugging Face model files in ``folder`` (weights, tokenizer, sentence-transformers config), if any."""
    return [n for n in _HF_FILES if (folder / n).is_file()][:4] if folder.is_dir() else []


def is_hf_folder(path: Path) -> bool:
    """A Hugging Face model folder: config.json, and no manifest.json unless ``bertopt compress`` wrote
    it (a compress artifact is a Hugging Face folder with a manifest)."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    if not (p / "manifest.json").is_file():
        return True
    try:
        return json.loads((p / "manifest.json").read_text()).get("stage") == "compress"
    except (OSError, json.JSONDecodeError):
        return False


def sentence_transformers_pooling(model_dir: Path) -> str | None:
    """'mean' / 'cls' / 'max' when the folder is a sentence-transformers model, else None."""
    pcfg = Path(model_dir) / "1_Pooling" / "config.json"
    if not pcfg.is_file():
        return None
    cfg = json.loads(pcfg.read_text())
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_max_tokens"):
        return "max"
    return None


def sentence_transformers_normalize(model_dir: Path) -> bool:
    mods = Path(model_dir) / "modules.json"
    if not mods.is_file():
        return False
    return any("Normalize" in m.get("type", "") for m in json.loads(mods.read_text()))


POOLINGS = typing.get_args(POOLING)  # the options' Literal: one list of poolings


def resolve_task(cfg: dict, task: str | None = None, known: dict | None = None) -> str:
    """The task to export: what was asked, else what ``known`` (an artifact's model block) says, else
    what config.json's architectures imply."""
    task = task or (known or {}).get("task") or default_task(cfg)
    if task not in TASKS:
        raise BertoptError(f"unknown task '{task}'", hint="tasks: " + ", ".join(TASKS))
    return task


def resolve_head(model_dir: Path, task: str, pooling: str = "auto", normalize: bool | None = None,
                 known: dict | None = None) -> tuple[str, bool]:
    """(pooling, normalize) of the exported model: what was asked, else what ``known`` (an export
    artifact's model block) says, else the sentence-transformers config in ``model_dir``.

    A classifier has no pooled output (its logits come from the model's own head): pooling 'none'.
    """
    known = known or {}
    if pooling not in POOLINGS:
        raise BertoptError(f"unknown pooling '{pooling}'", hint="pooling: " + ", ".join(POOLINGS))
    if task == "sequence-classification":
        pooling = "none"
    elif pooling == "auto":
        pooling = known.get("pooling") or sentence_transformers_pooling(model_dir) or "none"
    if pooling not in POOLINGS[1:]:
        raise BertoptError(f"{model_dir}: the sentence-transformers pooling is '{pooling}', which bertopt does not export",
                           hint="pass --pooling mean, cls or none")
    if normalize is None:
        normalize = known.get("normalize")
        if normalize is None:
            normalize = task == "feature-extraction" and pooling != "none" and sentence_transformers_normalize(model_dir)
    return pooling, bool(normalize)


def output_names(task: str, pooling: str) -> list[str]:
    """The exported model's outputs: logits, or the token states (and the pooled sentence embedding)."""
    if task == "sequence-classification":
        return ["logits"]
    return ["last_hidden_state"] if pooling == "none" else ["last_hidden_state", "sentence_embedding"]


def dynamic_axes(input_names, outs) -> dict[str, dict[int, str]]:
    """The exporter's ``dynamic_axes``: batch x sequence, batch only for per-text outputs."""
    axes = {n: DYNAMIC_AXES for n in list(input_names) + list(outs)}
    for o in outs:
        if o in ("logits", "sentence_embedding"):
            axes[o] = {0: "batch"}
    return axes


def default_task(cfg: dict) -> str:
    archs = cfg.get("architectures") or []
    return "sequence-classification" if any(a.endswith("ForSequenceClassification") for a in archs) else "feature-extraction"


def model_summary(cfg: dict, task: str) -> dict:
    return {
        "architecture": cfg.get("model_type"),
        "task": task,
        "inputs": list(SUPPORTED[cfg["model_type"]]),
        "hidden_size": cfg.get("hidden_size") or cfg.get("dim"),
        "num_layers": cfg.get("num_hidden_layers") or cfg.get("n_layers"),
        "num_heads": cfg.get("num_attention_heads") or cfg.get("n_heads"),
        "max_length": cfg.get("max_position_embeddings"),
        "num_labels": len(cfg.get("id2label") or {}) if task == "sequence-classification" else None,
        "id2label": cfg.get("id2label") if task == "sequence-classification" else None,
    }


# Ops that mark one attention block of an encoder layer: the plain exported form (Softmax) and the
# fused forms bertopt's passes and ONNX Runtime's optimizer write.
ATTENTION_MARKERS = ("Softmax", "Attention", "MultiHeadAttention", "QAttention", "PackedAttention", "PackedMultiHeadAttention")


def encoder_layers(model) -> int:
    """How many attention blocks an ONNX model (``ModelProto``, or a path) holds: 0 means it is
    not a transformer encoder, and bertopt's passes have nothing to work on."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in ATTENTION_MARKERS)


def check_encoder(model, path, stage: str, strict: bool = False) -> int:
    """Warn (``strict``: fail) when the model holds no encoder layer; returns the layer count."""
    n = encoder_layers(model)
    if n == 0:
        msg = f"{path}: no BERT encoder layers found (no attention: no Softmax or fused attention op in the graph)"
        if strict:
            raise BertoptError(msg, hint=f"{stage} optimizes BERT-family encoders; pass the output of `bertopt export` "
                                         f"(or drop --strict to {stage} it anyway)")
        from bertopt.ui import console

        console.print(f"warning: {stage}: {msg}; bertopt's passes target BERT-family encoders, expect nothing to be optimized "
                      "(--strict makes this an error)", style="yellow", markup=False)
    return n
