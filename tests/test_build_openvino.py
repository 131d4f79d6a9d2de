"""build --backend openvino on the real MiniLM: IR + compiled-blob cache + INT8 check, matching the ONNX Runtime
build of the same input on real S-Labs text; static shape buckets; bench/inspect/report/compare/recipes take it."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bertopt
from bertopt.artifacts import load_artifact
from bertopt.backends.openvino import compile as oc
from bertopt.backends.openvino.shapes import Bucket, pads_too_much, parse_shapes, plan_buckets, select_bucket
from bertopt.backends.stage import run_build
from bertopt.errors import BertoptError
from conftest import run_cli, run_users_script

pytest.importorskip("openvino")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny_text(slabs_texts, tmp_path_factory):
    """48 real S-Labs validation texts, one per line (bucket planning, bench)."""
    p = tmp_path_factory.mktemp("ovdata") / "texts.txt"
    p.write_text("\n".join(t.replace("\n", " ") for t in slabs_texts[:48]) + "\n")
    return p


@pytest.fixture(scope="module")
def ov_recipe(exported_minilm, tiny_text, tmp_path_factory):
    """One recipe: the export built for ONNX Runtime, for OpenVINO (dynamic) and for OpenVINO with buckets
    planned from real text plus 2x32, then benched side by side."""
    from bertopt.recipe import run_recipe

    d = tmp_path_factory.mktemp("ovrecipe")
    p = d / "r.yaml"
    p.write_text(textwrap.dedent(f"""
        name: ov
        model: {exported_minilm}
        workdir: work
        steps:
          - {{name: build-ort, stage: build, input: {exported_minilm}, backend: onnxruntime}}
          - {{name: build-ov, stage: build, input: {exported_minilm}, backend: openvino}}
          - {{name: build-ovb, stage: build, input: {exported_minilm}, backend: openvino, shapes: "auto,2x32", data: {tiny_text}}}
          - stage: bench
            inputs: [build-ort, build-ov, build-ovb]
            batch: [1]
            seq: [16]
            warmup: 0
            iters: 2
            repeats: 1
            data: {tiny_text}
            samples: 16
            lengths: real
            concurrency: 2
            threads: 2
    """))
    steps = run_recipe(p)
    assert [s["status"] for s in steps] == ["built"] * 3 + ["done"]
    return {k: d / "work" / k for k in ("build-ort", "build-ov", "build-ovb", "bench")}


@pytest.fixture(scope="module")
def ov_calibrate(minilm_chain, tmp_path_factory):
    return run_build(minilm_chain["calibrate"], tmp_path_factory.mktemp("ovcal") / "build", backend="openvino").path


# ------------------------------------------------------------------------------------- real model
def test_fp32_export_matches_the_onnxruntime_build(ov_recipe, slabs_texts):
    ov, ort = bertopt.load(ov_recipe["build-ov"]), bertopt.load(ov_recipe["build-ort"])
    assert ov.info["backend"] == "openvino" and ov.info["precision"] == "fp32"
    texts = slabs_texts[:64]
    assert _cos(ov.encode(texts, batch_size=8), ort.encode(texts, batch_size=8)).min() >= 0.999
    b = load_artifact(ov_recipe["build-ov"]).manifest["build"]
    assert b["openvino"].startswith("20") and b["device_properties"]["PERFORMANCE_HINT"] == "LATENCY"
    assert b["device_properties"]["INFERENCE_PRECISION_HINT"] == "f32" and b["inference_precision"] == "f32"
    assert b["int8_gemms"] == 0 and b["int8_check"] is None and b["shapes"] == "dynamic"
    assert set(b["layer_precisions"]["FullyConnected"]) == {"f32"}


def test_calibrate_artifact_matches_the_onnxruntime_build_and_runs_int8(ov_calibrate, minilm_chain, slabs_texts):
    from bertopt.graph import int8_gemms, ort_kernel_counts

    ov, ort = bertopt.load(ov_calibrate), bertopt.load(minilm_chain["build"])
    assert ov.info["precision"] == "int8"
    texts = slabs_texts[:64]
    assert _cos(ov.encode(texts, batch_size=1), ort.encode(texts, batch_size=1)).min() >= 0.999
    m = load_artifact(ov_calibrate).manifest
    chk = m["build"]["int8_check"]
    # every GEMM the Q/DQ graph quantizes runs as an INT8 layer, as many as ORT's integer kernels
    assert chk["ok"] and chk["fell_back"] == {} and chk["int8"] == chk["expected"] > 0
    assert m["build"]["int8_gemms"] == int8_gemms(ort_kernel_counts(load_artifact(minilm_chain["calibrate"]).model_path))
    assert m["metrics"]["parity"]["cosine_min"] >= 0.999


def test_buckets_match_dynamic_and_fall_back_beyond_them(ov_recipe, slabs_texts):
    art = load_artifact(ov_recipe["build-ovb"])
    b = art.manifest["build"]
    planned = b["buckets_planned_from"]
    assert b["shapes"] == "static" and "2x32" in b["buckets"] and planned["texts"] == 48
    assert set(planned["planned"]) <= set(b["buckets"]) and b["beyond_buckets"] == "dynamic"
    cached = list((art.path / "cache").iterdir())
    assert len(cached) >= len(b["buckets"]) + 1  # every bucket and the dynamic model compiled into the artifact
    st, dyn = bertopt.load(art.path), bertopt.load(ov_recipe["build-ov"])
    texts = slabs_texts[:24]
    for bs in (1, 2):
        assert _cos(st.encode(texts, batch_size=bs), dyn.encode(texts, batch_size=bs)).min() >= 0.9999
    assert st.runner.run.fallbacks == 0
    long = " ".join(slabs_texts[:12])  # longer than every bucket: runs on the dynamic model
    assert _cos(st.encode([long]), dyn.encode([long])).min() >= 0.9999
    assert st.runner.run.fallbacks == 1


def test_serving_calls_return_only_the_embedding(ov_recipe, slabs_texts):
    """bench's real-length traffic asks for what a service returns: the same sentence embedding, no hidden states."""
    from bertopt.bench.runners import open_runner
    from bertopt.data import tokenize

    for name in ("build-ort", "build-ovb"):
        r = open_runner(ov_recipe[name], 1, spinning=False)
        feeds = tokenize(r.tokenizer, slabs_texts[:3], r.input_names, max_length=128)
        full, served = r(feeds), r(feeds, r.serving_outputs)
        assert r.serving_outputs == ["sentence_embedding"] and list(served) == ["sentence_embedding"]
        assert "last_hidden_state" in full and np.array_equal(served["sentence_embedding"], full["sentence_embedding"])


def test_a_call_its_bucket_would_overpad_runs_on_the_dynamic_model(ov_recipe, slabs_texts):
    """2 texts padded to 8 tokens would be padded to the 2x32 bucket (48 extra tokens): the dynamic model runs them;
    padded to 24 they run on 2x32. Both give the dynamic artifact's outputs."""
    from bertopt.data import tokenize

    st, dyn = bertopt.load(ov_recipe["build-ovb"]).runner, bertopt.load(ov_recipe["build-ov"]).runner
    ovr = st.run
    for seq, overpadded in ((8, 1), (24, 0)):
        feeds = tokenize(st.tokenizer, slabs_texts[:2], st.input_names, max_length=128, pad_to=seq)
        before = ovr.padding_fallbacks
        got, ref = st(feeds), dyn(feeds)
        assert ovr.padding_fallbacks - before == overpadded
        assert got["sentence_embedding"].shape == (2, 384) and got["last_hidden_state"].shape == (2, seq, 384)
        assert _cos(got["sentence_embedding"], ref["sentence_embedding"]).min() >= 0.9999
    assert Bucket(2, 32) in ovr._local.requests and ovr.fallbacks == 0


def test_bench_inspect_report_compare_take_it(ov_recipe, tmp_path):
    rep = json.loads((ov_recipe["bench"] / "report.json").read_text())
    runs = {r["name"]: r for r in rep["runs"]}
    assert runs["build-ov"]["backend"] == "openvino" and runs["build-ovb"]["backend"] == "openvino"
    assert runs["build-ov"]["fidelity"]["cosine_min"] >= 0.999
    for name in ("build-ort", "build-ovb"):  # --concurrency 2: two callers of one thread each, next to the one-caller pass
        (c,) = runs[name]["concurrent"]
        assert (c["callers"], c["threads_per_caller"], c["texts"]) == (2, 1, 16) and c["sequences_per_s"] > 0
        assert c["single_caller_sequences_per_s"] == runs[name]["real"][0]["sequences_per_s"]
    r = run_cli("inspect", str(ov_recipe["build-ovb"]))
    assert r.returncode == 0, r.stderr
    assert "OpenVINO IR" in r.stdout and "2x32" in r.stdout
    r = run_cli("report", str(ov_recipe["bench"]), "-o", str(tmp_path / "rep"))
    assert r.returncode == 0 and "build-ov" in (tmp_path / "rep" / "index.html").read_text()
    r = run_cli("compare", str(ov_recipe["bench"]), str(ov_recipe["bench"]))
    assert r.returncode == 0, r.stderr


def test_bench_takes_a_bare_ir_beside_the_artifact(ov_recipe, tiny_text, tmp_path):
    """Another tool's IR (no manifest; tokenizer/ beside it) passes bench's memory check and runs next to bertopt's."""
    built, bare = ov_recipe["build-ov"], tmp_path / "bare"
    (bare / "tokenizer").mkdir(parents=True)
    for f in ("openvino_model.xml", "openvino_model.bin"):
        shutil.copy(built / f, bare / f)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (built / f).is_file():
            shutil.copy(built / f, bare / "tokenizer" / f)
    out = tmp_path / "r.json"
    r = run_cli("bench", str(built), str(bare / "openvino_model.xml"), "--batch", "1", "--seq", "16", "--warmup", "0",
                "--iters", "2", "--repeats", "1", "--threads", "2", "--data", str(tiny_text), "--samples", "8", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    runs = {x["name"]: x for x in json.loads(out.read_text())["runs"]}
    assert runs["bare"]["backend"] == "openvino" and runs["bare"]["fidelity"]["cosine_min"] >= 0.99


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,words", [
    (["--shapes", "0x0"], "must have batch >= 1"),
    (["--shapes", "8by128"], "is not BATCHxSEQ"),
    (["--shapes", "auto"], "no --data was given"),
    (["--shapes", "1x1024"], "longer than the model's 512"),
    (["--profile", "batch=1:8:32,seq=1:128:256"], "--profile applies to --backend tensorrt"),
    (["--precision", "int8"], "the graph is fp32"),
])
def test_bad_build_input_is_an_error_with_a_hint(exported_minilm, tmp_path, args, words):
    out = tmp_path / "b"
    r = run_cli("build", str(exported_minilm), "-o", str(out), "--backend", "openvino", *args)
    assert r.returncode == 1 and "error:" in r.stderr and "hint:" in r.stderr and words in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_unreadable_ir_is_an_error_with_a_hint(ov_recipe, tmp_path):
    from bertopt.backends.openvino.runner import OpenVINORunner

    bad = tmp_path / "art"
    shutil.copytree(ov_recipe["build-ov"], bad)
    (bad / "openvino_model.xml").write_text("<net>not an IR")
    with pytest.raises(BertoptError, match="sha256 does not match"):  # the manifest catches the edit first
        bertopt.load(bad)
    with pytest.raises(BertoptError, match="OpenVINO cannot read this IR") as e:
        OpenVINORunner(bad / "openvino_model.xml")
    assert "rebuild" in e.value.hint


@pytest.mark.parametrize("edit, words", [
    (lambda b: b["compile_properties"].update(CACHE_DIR="/tmp/bertopt-forged-cache-dir"), "compile property 'CACHE_DIR' is not one bertopt writes"),
    (lambda b: b["compile_properties"].update(INFERENCE_NUM_THREADS="all"), "are not values bertopt writes"),
    (lambda b: b["compile_properties"].update(PERFORMANCE_HINT="THROUGHPUT"), "are not values bertopt writes"),
    (lambda b: b.update(buckets=["1x100000"]), "build.buckets: --shapes"),
    (lambda b: b.update(buckets="1x16"), "build.buckets must be a list"),
])
def test_a_forged_manifest_makes_openvino_compile_only_what_bertopt_writes(ov_recipe, tmp_path, edit, words):
    """The manifest's compile properties and buckets are input: only bertopt's own keys and values reach OpenVINO."""
    art = tmp_path / "forged"
    shutil.copytree(ov_recipe["build-ovb"], art)
    m = json.loads((art / "manifest.json").read_text())
    edit(m["build"])
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BertoptError, match=words) as e:
        bertopt.load(art)
    assert "rebuild the artifact" in e.value.hint and not Path("/tmp/bertopt-forged-cache-dir").exists()


def test_recorded_threads_are_capped_at_the_host(ov_recipe):
    import os

    b = load_artifact(ov_recipe["build-ovb"]).manifest["build"]
    props = oc.checked_properties(b["compile_properties"] | {"INFERENCE_NUM_THREADS": 3000}, None, "m")
    assert props["INFERENCE_NUM_THREADS"] == os.cpu_count() and props["INFERENCE_PRECISION_HINT"] == "f32"
    assert oc.checked_properties(b["compile_properties"], 1, "m")["INFERENCE_NUM_THREADS"] == 1


# ------------------------------------------------------------------------------------- drop-in
def test_sentence_transformers_and_optimum_intel_load_the_folder(ov_calibrate, slabs_texts, tmp_path):
    """The OpenVINO build folder as it is: sentence-transformers' backend="openvino" and optimum-intel, in the users' venv."""
    texts = slabs_texts[:120]
    got = run_users_script({"texts": texts, "openvino": str(ov_calibrate)}, tmp_path)
    ref = bertopt.load(ov_calibrate).encode(texts)
    assert (ov_calibrate / "openvino_model.xml").is_file() and (ov_calibrate / "modules.json").is_file()
    assert "Exporting the model" not in got["stderr"]  # it loaded bertopt's IR, it did not re-export
    for key in ("st_ov_f32", "optimum_ov"):  # the hint the build measured with: bertopt.load's numbers (batches pad differently)
        assert got[key].shape == ref.shape and _cos(got[key], ref).min() >= 0.9995, (key, _cos(got[key], ref).min())
    # as typed first: OpenVINO's own default hint (bf16 for float ops on CPUs that have it) stays close
    assert _cos(got["st_ov"], ref).min() >= 0.99, _cos(got["st_ov"], ref).min()


def test_triton_openvino_config_names_the_ir(ov_calibrate, minilm_chain, tmp_path):
    import openvino as ov
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    repo = tmp_path / "repo"
    assert run_build(minilm_chain["calibrate"], ov_calibrate, backend="openvino", triton=str(repo), triton_name="minilm").skipped
    c = text_format.Parse((repo / "minilm" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert c.backend == "openvino" and c.default_model_filename == "openvino_model.xml" and c.max_batch_size == 32
    for f in ("openvino_model.xml", "openvino_model.bin"):
        assert (repo / "minilm" / "1" / f).stat().st_ino == (ov_calibrate / f).stat().st_ino
    ir = ov.Core().read_model(str(repo / "minilm" / "1" / "openvino_model.xml"))
    want = {p.get_any_name(): [-1 if d.is_dynamic else d.get_length() for d in p.get_partial_shape()][1:] for p in ir.inputs + ir.outputs}
    assert {t.name: list(t.dims) for t in list(c.input) + list(c.output)} == want
    assert {mc.DataType.Name(t.data_type) for t in c.input} == {"TYPE_INT64"}
    props = load_artifact(ov_calibrate).manifest["build"]["compile_properties"]
    assert c.parameters["INFERENCE_NUM_THREADS"].string_value == str(props["INFERENCE_NUM_THREADS"])
    assert c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


# ------------------------------------------------------------------------------------- pure parts
def test_parse_and_select_buckets():
    buckets, auto = parse_shapes("8x128, 1x16,auto:64,1x32")
    assert buckets == [Bucket(1, 16), Bucket(1, 32), Bucket(8, 128)] and auto == 64
    assert parse_shapes(None) == ([], None) and parse_shapes("dynamic") == ([], None)
    assert select_bucket(buckets, 1, 10) == Bucket(1, 16)
    assert select_bucket(buckets, 1, 17) == Bucket(1, 32)
    assert select_bucket(buckets, 2, 10) == Bucket(8, 128)
    assert select_bucket(buckets, 9, 10) is None and select_bucket(buckets, 1, 129) is None
    # the measured cases: a few padded tokens per row keep the bucket, 48 at b1 or 28 per row at b8 do not
    assert not pads_too_much(Bucket(1, 16), 1, 10) and not pads_too_much(Bucket(1, 16), 1, 4)
    assert pads_too_much(Bucket(1, 112), 1, 64) and not pads_too_much(Bucket(1, 112), 1, 100)
    assert pads_too_much(Bucket(8, 128), 8, 16) and pads_too_much(Bucket(8, 128), 8, 100)
    assert not pads_too_much(Bucket(8, 128), 8, 128) and not pads_too_much(Bucket(8, 128), 8, 110)
    with pytest.raises(BertoptError, match="given twice"):
        parse_shapes("1x16,1x16")


def test_plan_buckets_from_lengths():
    lengths = [9] * 90 + [30] * 9 + [100]
    assert plan_buckets(lengths, 512) == [Bucket(1, 16), Bucket(1, 32), Bucket(1, 104)]
    assert plan_buckets([9] * 10, 512, cover=128) == [Bucket(1, 16), Bucket(1, 128)]


def test_int8_check_fails_on_a_float_fallback():
    layers = [oc.Layer("fc0", "FullyConnected", "i8", ("/l0/query/MatMul/DequantizationMultiply",)),
              oc.Layer("fc1", "FullyConnected", "f32", ("/l0/key/MatMul", "/l0/key/Add")),
              oc.Layer("sdpa", "Subgraph", "f32", ("/l0/attn",))]
    ok = oc.check_int8(layers, ["/l0/query/MatMul"])
    assert ok.ok and ok.int8 == ["/l0/query/MatMul"]
    bad = oc.check_int8(layers, ["/l0/query/MatMul", "/l0/key/MatMul", "/l0/value/MatMul"])
    assert not bad.ok and bad.fell_back == {"/l0/key/MatMul": "f32"} and bad.unverified == ["/l0/value/MatMul"]
    assert not oc.check_int8(layers, ["/l9/MatMul"]).ok  # none found: unverifiable is not a pass
    assert oc.int8_gemms(layers) == 1 and oc.layer_precisions(layers) == {"FullyConnected": {"f32": 1, "i8": 1}, "Subgraph": {"f32": 1}}


# ------------------------------------------------------------------------------------- --backend auto
def test_auto_times_both_and_keeps_the_faster(exported_minilm, tiny_text, tmp_path, slabs_texts):
    out = tmp_path / "auto"
    r = run_cli("build", str(exported_minilm), "-o", str(out), "--backend", "auto", "--data", str(tiny_text), "--batch", "1,2")
    assert r.returncode == 0, r.stderr
    assert "sequences/s" in r.stdout + r.stderr and "(chosen)" in r.stdout + r.stderr
    b = load_artifact(out).manifest["build"]
    auto = b["auto"]
    assert auto["candidates"] == ["onnxruntime", "openvino"] and set(auto["timings"]) == {"onnxruntime", "openvino"}
    seqs = {k: [auto["timings"][k][x]["sequences_per_s"] for x in ("1", "2")] for k in auto["timings"]}
    other = ({"onnxruntime", "openvino"} - {auto["chosen"]}).pop()
    assert b["backend"] == auto["chosen"] and np.prod(seqs[auto["chosen"]]) >= np.prod(seqs[other])
    m, ref = bertopt.load(out), bertopt.load(exported_minilm)
    assert m.info["backend"] == auto["chosen"]
    assert _cos(m.encode(slabs_texts[:16]), ref.encode(slabs_texts[:16])).min() >= 0.999
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the candidates' folders are gone


def test_auto_falls_back_to_onnxruntime_when_openvino_cannot_convert(tiny_text, tmp_path):
    """A graph ONNX Runtime runs and OpenVINO's ONNX frontend cannot convert (an ai.onnx.ml op)."""
    import onnx
    import onnx.helper as h

    ids = h.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"])
    out = h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 1])
    nodes = [h.make_node("Cast", ["input_ids"], ["f"], to=onnx.TensorProto.FLOAT),
             h.make_node("LinearRegressor", ["f"], ["logits"], domain="ai.onnx.ml", coefficients=[0.1] * 4, intercepts=[0.0])]
    m = h.make_model(h.make_graph(nodes, "g", [ids], [out]), opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "ml.onnx")
    art = run_build(tmp_path / "ml.onnx", tmp_path / "auto", backend="auto", data=str(tiny_text), batch=[1])
    b = art.manifest["build"]
    assert b["backend"] == "onnxruntime" and b["auto"]["chosen"] == "onnxruntime" and b["auto"]["timings"] == {}
    assert "openvino did not build" in b["auto"]["notes"][0] and "cannot convert" in b["auto"]["notes"][0]
    with pytest.raises(BertoptError, match="cannot convert") as e:
        run_build(tmp_path / "ml.onnx", tmp_path / "ov", backend="openvino")
    assert e.value.hint and not (tmp_path / "ov").exists()


def test_concurrency_needs_real_lengths(exported_minilm):
    from bertopt.bench.stage import run_bench

    with pytest.raises(BertoptError, match="--concurrency serves the real-length batches"):
        run_bench([str(exported_minilm)], concurrency=2)


def test_auto_needs_data(exported_minilm, tmp_path):
    with pytest.raises(BertoptError, match="no --data was given"):
        run_build(exported_minilm, tmp_path / "a", backend="auto")
    with pytest.raises(BertoptError, match="--batch applies to --backend auto only"):
        run_build(exported_minilm, tmp_path / "a", backend="openvino", batch=[4])
