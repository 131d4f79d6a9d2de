"""Drop-in where users already are: a ``build`` folder loads unchanged in sentence-transformers, Optimum
and transformers pipelines (the real libraries, in the users' venv), and ``--triton`` writes a model
repository that Triton's own ``ModelConfig`` proto parses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
USERS_VENV = Path(os.environ.get("BERTOPT_USERS_VENV", ROOT / ".venv-users"))
USERS_PY = USERS_VENV / "bin" / "python"


@pytest.fixture(scope="module")
def classifier_build(exported_classifier, tmp_path_factory) -> Path:
    from bertopt.backends.stage import run_build

    out = tmp_path_factory.mktemp("dropin") / "classifier-build"
    run_build(exported_classifier, out)
    return out


@pytest.fixture(scope="module")
def users_run(minilm_chain, classifier_build, slabs_texts, tmp_path_factory) -> dict:
    """What sentence-transformers, Optimum and pipeline(...) compute from the two build folders, in .venv-users."""
    if not USERS_PY.is_file():
        pytest.skip(f"{USERS_VENV} is absent: `make users-venv` installs the users' stack (sentence-transformers, optimum-onnx)")
    d = tmp_path_factory.mktemp("users")
    spec = {"texts": slabs_texts, "out": str(d / "out.npz"), "embedding": str(minilm_chain["build"]),
            "classifier": str(classifier_build)}
    (d / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([str(USERS_PY), str(ROOT / "tests" / "dropin_users.py"), str(d / "spec.json")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(d / "out.npz") as z:
        return {k: z[k] for k in z.files} | {"stderr": r.stderr}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_sentence_transformers_encodes_like_bertopt(users_run, minilm_chain, slabs_texts):
    import bertopt

    ref = bertopt.load(minilm_chain["build"]).encode(slabs_texts)
    st = users_run["st"]
    assert st.shape == ref.shape == (len(slabs_texts), 384)
    cos = _cos(st, ref)
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f} at text {cos.argmin()}"
    # normalized once, and pooled the way the export pooled (not e.g. CLS pooling, which would still be unit-length)
    assert np.allclose(np.linalg.norm(st, axis=1), 1.0, atol=1e-4)
    assert "Exporting the model" not in users_run["stderr"]  # it loaded bertopt's model.onnx, it did not re-export


def test_optimum_feature_extraction_encodes_like_bertopt(users_run, minilm_chain, slabs_texts):
    import bertopt

    ref = bertopt.load(minilm_chain["build"]).encode(slabs_texts)
    cos = _cos(users_run["optimum"], ref)
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f} at text {cos.argmin()}"


def test_pipeline_labels_match_bertopt_predict(users_run, classifier_build, slabs_texts):
    import bertopt

    ours = bertopt.load(classifier_build).predict(slabs_texts)
    assert list(users_run["labels"]) == [p["label"] for p in ours]
    assert set(users_run["labels"]) == {"benign", "injection"}  # both classes occur: the comparison can fail
    assert np.allclose(users_run["scores"], [p["score"] for p in ours], atol=1e-4)


def test_hf_files_are_linked_and_checked(minilm_chain, tmp_path):
    """The top-level tokenizer/config are the tokenizer/ files (no bytes twice); the manifest covers them."""
    from bertopt.artifacts import load_artifact
    from bertopt.errors import BertoptError

    b = minilm_chain["build"]
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        assert (b / name).stat().st_ino == (b / "tokenizer" / name).stat().st_ino
    art = load_artifact(b)
    hf = {k: e["path"] for k, e in art.manifest["outputs"].items() if k.startswith("hf:")}
    assert {"config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"} <= set(hf.values())
    modules = json.loads((b / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert art.model_path == b / "model.onnx"  # one model file: the one bertopt, sentence-transformers and Optimum all read

    copy = tmp_path / "build"
    shutil.copytree(b, copy)
    pcfg = copy / "1_Pooling" / "config.json"
    pcfg.write_text(pcfg.read_text().replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true'))
    with pytest.raises(BertoptError, match="1_Pooling/config.json: sha256 does not match"):
        load_artifact(copy)


def test_classifier_folder_has_no_sentence_transformers_modules(classifier_build):
    assert (classifier_build / "config.json").is_file() and (classifier_build / "tokenizer.json").is_file()
    assert not (classifier_build / "modules.json").exists()
