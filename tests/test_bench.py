"""bench: the JSON schema, fidelity against PyTorch, accuracy, and quality gates."""

from __future__ import annotations

import json

import pytest

from bertopt.bench.stage import SCHEMA, run_bench
from bertopt.errors import QualityGateError
from conftest import run_cli

FAST = dict(batch=[1, 2], seq=[16], warmup=1, iters=2, repeats=2)


@pytest.fixture(scope="module")
def report(minilm_dir, exported_minilm, slabs_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "r.json"
    run_bench([str(minilm_dir), str(exported_minilm)], None, data=str(slabs_dir / "validation.csv"), text_column="text",
              samples=40, json_path=path, **FAST)
    return json.loads(path.read_text())


def test_schema(report):
    assert report["schema"] == SCHEMA
    assert report["grid"] == {"batch": [1, 2], "seq": [16]}
    assert len(report["runs"]) == 2
    ref, ort = report["runs"]
    assert ref["backend"] == "pytorch" and ort["backend"] == "onnxruntime" and ort["precision"] == "fp32"
    for run in report["runs"]:
        assert [(r["batch"], r["seq"]) for r in run["results"]] == [(1, 16), (2, 16)]
        for r in run["results"]:
            lat = r["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
            assert r["throughput"] == pytest.approx(r["batch"] * 1000 / lat["p50"], rel=1e-2)
            assert r["calls"] == 4 and len(r["pass_medians_ms"]) == 2
        assert set(run["fidelity"]) >= {"cosine_min", "cosine_mean", "max_abs_diff", "top1_agreement"}
        assert run["accuracy"] is None
    assert all(r["speedup"] == 1.0 for r in ref["results"])


def test_onnx_matches_pytorch_on_real_text(report):
    fid = report["runs"][1]["fidelity"]
    assert fid["compared"] == "sentence_embedding" and fid["n"] == 40
    assert fid["cosine_min"] > 0.99999
    assert fid["max_abs_diff"] < 1e-4


def test_accuracy_and_top1_on_classifier(classifier_dir, exported_classifier, slabs_dir):
    rep = run_bench([str(classifier_dir), str(exported_classifier)], None, eval=str(slabs_dir / "test.csv"), text_column="text",
                    label_column="label", eval_samples=64, samples=64, **FAST)
    ref, ort = rep["runs"]
    assert ref["accuracy"]["n"] == 64 and ref["accuracy"]["value"] > 0.8
    assert ort["accuracy"]["value"] == ref["accuracy"]["value"]
    assert ort["fidelity"]["top1_agreement"] == 1.0


def test_gate_exit_code_3(exported_minilm, minilm_chain, slabs_dir, tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", str(exported_minilm), str(minilm_chain["build"]), "--batch", "1", "--seq", "8", "--iters", "1", "--repeats", "1",
            "--warmup", "0", "--data", str(slabs_dir / "test.csv"), "--samples", "8", "--json", str(out)]
    # a cosine above 1 is no gate (a user error, as in a recipe), not a gate nothing passes
    p = run_cli(*args, "--min-cosine", "1.5")
    assert p.returncode == 1 and "bench --min-cosine: must be less than or equal to 1 (got 1.5)" in p.stderr and not out.exists()
    p = run_cli(*args, "--min-cosine", "1.0")  # the INT8 build is close to FP32, never equal on every text
    assert p.returncode == 3, p.stderr
    assert "quality gate failed" in p.stderr
    assert 0.9 < json.loads(out.read_text())["runs"][1]["fidelity"]["cosine_min"] < 1.0


def test_gate_without_measurement_fails(exported_minilm):
    with pytest.raises(QualityGateError, match="no fidelity"):
        run_bench([str(exported_minilm), str(exported_minilm)], None, min_cosine=0.9, batch=[1], seq=[8], warmup=0, iters=1, repeats=1)


def test_engine_profiles_limit_the_grid_and_the_fidelity_batches(exported_minilm, slabs_texts):
    """A TensorRT engine runs only the shapes its profiles cover: bench skips the rest (and says why),
    compares speed only where both ran, and feeds fidelity texts in batches the engine takes. Checked
    with the real ONNX Runtime MiniLM standing in for the engine (TensorRT is not installed here)."""
    from dataclasses import replace

    from bertopt.bench.measure import latency_sweep, run_texts
    from bertopt.bench.runners import open_runner, profile_limits

    refuses, max_batch, max_seq = profile_limits([{"batch": [1, 2, 4], "seq": [1, 64, 128]}, {"batch": [1, 1, 2], "seq": [129, 256, 384]}])
    assert refuses(4, 128) is None and refuses(2, 384) is None and (max_batch, max_seq) == (2, 384)
    assert "outside the engine's profiles (batch=1:2:4,seq=1:64:128; batch=1:1:2,seq=129:256:384)" == refuses(8, 128)
    assert refuses(4, 200) is not None

    ort = open_runner(exported_minilm, threads=1)
    seen = []

    def spy(feeds):
        seen.append(feeds["input_ids"].shape)
        return ort.run(feeds)

    engine = replace(ort, name="engine", run=spy, refuses=refuses, max_batch=max_batch)
    out = latency_sweep([ort, engine], [(1, 32), (8, 32)], slabs_texts, warmup=0, iters=1, repeats=1)
    assert [("skipped" in r, "speedup" in r) for r in out["engine"]] == [(False, True), (True, False)]
    assert all(s[0] <= 4 for s in seen) and "latency_ms" in out[ort.name][1]
    seen.clear()
    run_texts(engine, slabs_texts[:7], max_length=64)
    assert [s[0] for s in seen] == [2, 2, 2, 1]
