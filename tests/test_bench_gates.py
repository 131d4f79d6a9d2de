"""bench: a failed gate leaves a verdict, never a done-looking output; --seq limits; --lengths real; metadata."""

from __future__ import annotations

import json

import pytest

from bertopt.bench.stage import run_bench
from bertopt.errors import BertoptError, QualityGateError
from conftest import run_cli

TINY = dict(batch=[1], seq=[8], warmup=0, iters=1, repeats=1)


def test_failed_gate_writes_the_verdict_and_fails_again(exported_minilm, minilm_chain, slabs_dir, tmp_path):
    out, js = tmp_path / "bench", tmp_path / "r.json"
    kw = dict(data=str(slabs_dir / "validation.csv"), text_column="text", samples=8, min_cosine=0.9999, json_path=js, **TINY)
    with pytest.raises(QualityGateError, match="cosine_min"):
        run_bench([str(exported_minilm), str(minilm_chain["build"])], out, **kw)
    rep = json.loads(js.read_text())
    g = rep["gates"]
    assert g["passed"] is False and g["min_cosine"] == 0.9999
    assert g["checks"][0]["metric"] == "cosine_min" and g["checks"][0]["passed"] is False and 0.9 < g["checks"][0]["value"] < 0.9999
    assert json.loads((out / "report.json").read_text())["gates"]["passed"] is False
    assert js.stat().st_mtime == 0  # older than any prerequisite: a Makefile target on it is not satisfied
    js.unlink()
    # the rerun finds the cached numbers and fails the same gate again; a looser gate then passes
    with pytest.raises(QualityGateError, match="numbers cached from .*cosine_min"):
        run_bench([str(exported_minilm), str(minilm_chain["build"])], out, **kw)
    assert json.loads(js.read_text())["cached"] is True and json.loads(js.read_text())["gates"]["passed"] is False
    ok = run_bench([str(exported_minilm), str(minilm_chain["build"])], out, **(kw | {"min_cosine": 0.9}))
    assert ok["cached"] and ok["gates"]["passed"] is True


def test_report_metadata(exported_minilm):
    rep = run_bench([str(exported_minilm)], None, **TINY)
    assert rep["schema"] == "bertopt.bench/1" and rep["gates"] is None
    assert {"bertopt", "onnxruntime", "torch", "tensorrt"} <= set(rep["versions"]) and rep["versions"]["onnxruntime"]
    assert rep["host"]["cpu"] and rep["host"]["hostname"] and rep["created"].endswith("+00:00")
    assert rep["units"]["throughput"].startswith("sequences/s")
    assert len(rep["runs"][0]["sha256"]) == 64
    manifest = json.loads((exported_minilm / "manifest.json").read_text())
    assert rep["runs"][0]["model_sha256"] == manifest["outputs"]["model"]["sha256"]


def test_recipe_rerun_does_not_skip_a_failed_bench(exported_minilm, minilm_chain, slabs_dir, tmp_path):
    from bertopt.recipe import run_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""model: {exported_minilm}
workdir: {tmp_path / 'runs'}
steps:
  - stage: bench
    inputs: [model, {minilm_chain["build"]}]
    batch: [1]
    seq: [8]
    warmup: 0
    iters: 1
    repeats: 1
    data: {slabs_dir / 'validation.csv'}
    text_column: text
    samples: 8
    min_cosine: 0.9999
""")
    for _ in range(2):
        with pytest.raises(QualityGateError):
            run_recipe(recipe)
    # the CLI prints the numbers before the gate error, exit 3 both times
    p = run_cli("run", str(recipe))
    assert p.returncode == 3 and "quality gate failed" in p.stderr and "cosine min" in p.stdout and "Traceback" not in p.stderr


def test_cli_prints_tables_before_the_gate_error(exported_minilm, minilm_chain, slabs_dir, tmp_path):
    p = run_cli("bench", str(exported_minilm), str(minilm_chain["build"]), "--batch", "1", "--seq", "8", "--iters", "1",
                "--repeats", "1", "--warmup", "0", "--data", str(slabs_dir / "validation.csv"), "--samples", "8", "--min-cosine", "0.9999",
                "--report", str(tmp_path / "rep"))
    assert p.returncode == 3
    assert "p50 ms" in p.stdout and "quality gates: FAILED" in p.stdout
    assert "FAILED" in (tmp_path / "rep" / "index.html").read_text()


@pytest.mark.parametrize("seq", ["513", "100000"])
def test_seq_beyond_position_embeddings(exported_minilm, tmp_path, seq):
    p = run_cli("bench", str(exported_minilm), "--seq", f"128,{seq}", "-o", str(tmp_path / "b"))
    assert p.returncode == 1
    assert f"error: --seq {seq} is beyond" in p.stderr and "512 positions" in p.stderr and "hint:" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "b").exists()


def test_real_lengths(exported_minilm, slabs_dir):
    kw = dict(data=str(slabs_dir / "validation.csv"), text_column="text", samples=32, lengths="real", batch=[1, 8], seq=[32],
              warmup=0, iters=1, repeats=1)
    unsorted = run_bench([str(exported_minilm)], None, **kw)["runs"][0]["real"]
    ordered = run_bench([str(exported_minilm)], None, sort=True, **kw)["runs"][0]["real"]
    for rows in (unsorted, ordered):
        assert [r["batch"] for r in rows] == [1, 8]
        for r in rows:
            assert r["texts"] == 32 and r["sequences_per_s"] > 0 and r["tokens_per_s"] > r["sequences_per_s"]
            assert r["tokens"] <= r["padded_tokens"]
        assert rows[0]["padding"] == 0.0  # batch 1: no padding at all
    assert ordered[1]["sorted"] and ordered[1]["padded_tokens"] < unsorted[1]["padded_tokens"]  # sorting pads less
    with pytest.raises(BertoptError, match="--lengths real needs texts"):
        run_bench([str(exported_minilm)], None, lengths="real", **TINY)


def test_makefile_target_reruns_after_a_failed_gate(exported_minilm, minilm_chain, slabs_dir, tmp_path):
    """issue 11: `make` must not treat the JSON a failed gate wrote as an up-to-date target."""
    import shutil
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("no make")
    (tmp_path / "Makefile").write_text(
        f"out.json: {exported_minilm / 'model.onnx'}\n\t{sys.executable} -m bertopt bench {exported_minilm} {minilm_chain['build']} "
        f"--batch 1 --seq 8 --iters 1 --repeats 1 --warmup 0 --data {slabs_dir / 'validation.csv'} --samples 8 --min-cosine 0.9999 --json out.json\n")
    for _ in range(2):
        p = subprocess.run(["make", "-C", str(tmp_path)], capture_output=True, text=True, timeout=600)
        assert p.returncode != 0 and "quality gate failed" in p.stderr
        assert json.loads((tmp_path / "out.json").read_text())["gates"]["passed"] is False
