"""A ``build`` folder the Hugging Face ecosystem loads as it is.

``SentenceTransformer(BUILD, backend="onnx")``, ``ORTModelForFeatureExtraction`` /
``ORTModelForSequenceClassification.from_pretrained(BUILD)`` and ``transformers.pipeline`` read:

- ``config.json`` (with ``model_type``; ``id2label`` for a classifier) and the tokenizer files at the
  top level of the folder (``AutoConfig`` / ``AutoTokenizer.from_pretrained(BUILD)``; Optimum infers
  the library from ``config.json``);
- the ONNX model as ``model.onnx`` at the top level (sentence-transformers tries ``model.onnx`` before
  ``onnx/model.onnx``; Optimum's default file name), which is where the build writes it already;
- for an embedding model, sentence-transformers' own modules: ``modules.json`` (Transformer ->
  Pooling [-> Normalize]), ``sentence_bert_config.json`` (``max_seq_length``) and
  ``1_Pooling/config.json``.

Pooling happens once either way: Optimum's ``ORTModelForFeatureExtraction`` hands sentence-transformers
only ``last_hidden_state``, so the Pooling/Normalize modules written here repeat exactly what the
export put in the graph's ``sentence_embedding`` (the manifest's ``pooling``/``normalize``; an export
without a pooled output: mean pooling, as ``bertopt.load(...).encode`` does), and nothing pools twice.

The top-level tokenizer and config files are hard links to the ones in ``tokenizer/`` (bertopt's own
layout stays as it was): no byte is stored twice. Every file written here is a manifest output, so
the integrity check on load covers them.
"""

from __future__ import annotations

import json

from bertopt.artifacts import TOKENIZER_DIR, TOKENIZER_FILES, ArtifactWriter, link_or_copy

CONFIG = "config.json"


def write_hf_folder(w: ArtifactWriter, model: dict) -> list[str]:
    """Make the artifact being written (``w.dir``, whose ``tokenizer/`` is copied already) loadable by
    sentence-transformers, Optimum and transformers pipelines; ``model`` is the manifest's model block.
    Returns the files added (relative paths), each recorded as output ``hf:<path>``; nothing when the
    source had no ``config.json`` (a bare ``.onnx``): those libraries cannot load the folder then."""
    tok = w.dir / TOKENIZER_DIR
    if not (tok / CONFIG).is_file():
        return []
    added = []
    for name in (CONFIG, *TOKENIZER_FILES):
        if (tok / name).is_file():
            link_or_copy(tok / name, w.dir / name)
            added.append(name)
    if model.get("task", "feature-extraction") == "feature-extraction":
        for rel, obj in sentence_transformers_files(model).items():
            p = w.dir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(obj, indent=2) + "\n")
            added.append(rel)
    for rel in added:
        w.add_output(f"hf:{rel}", rel)
    return added


def sentence_transformers_files(model: dict) -> dict[str, object]:
    """modules.json, sentence_bert_config.json and 1_Pooling/config.json for the export's head."""
    pooling = model.get("pooling") if model.get("pooling") in ("mean", "cls") else "mean"
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if model.get("normalize") and model.get("pooling") in ("mean", "cls"):
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    return {
        "modules.json": modules,
        # the length bertopt.load truncates at, so both encode the same tokens
        "sentence_bert_config.json": {"max_seq_length": int(model.get("max_length") or 512), "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": model.get("hidden_size"),
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    }

