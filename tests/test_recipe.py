"""Recipes: validation errors name the file and field; unchanged steps are skipped."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bertopt.errors import BertoptError
from bertopt.recipe import load_recipe, run_recipe
from conftest import ROOT, run_cli


def _recipe(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(body))
    return p


@pytest.mark.parametrize("body,needle", [
    ("model: x\nsteps: [{stage: export}]\ncolour: red\n", "colour: unknown key"),
    ("steps: [{stage: export}]\n", "model: missing"),
    ("model: x\nsteps: []\n", "steps: empty"),
    ("model: x\nsteps: [{stage: transmogrify}]\n", "unknown stage 'transmogrify'"),
    ("model: x\nsteps: [{stage: export, opsett: 17}]\n", "steps[0] (export).opsett: unknown option"),
    ("model: x\nsteps: [{stage: export, opset: seventeen}]\n", "steps[0] (export).opset"),
    ("model: x\nsteps: [{stage: export}, {stage: export}]\n", "duplicate step name 'export'"),
    ("model: x\nsteps: [{stage: bench, inputs: model}]\n", "inputs: expected a list"),
    ("model: [unclosed\n", "invalid YAML"),
])
def test_validation_names_the_field(tmp_path, body, needle):
    p = _recipe(tmp_path, body)
    with pytest.raises(BertoptError) as e:
        load_recipe(p)
    assert needle in e.value.message and str(p) in e.value.message


def test_file_options_resolve_against_the_recipe_folder(tmp_path):
    """Every option naming an input file (bench's --pairs too) is read relative to the recipe, and a missing
    one is an error naming the step and field before anything runs."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "pairs.csv").write_text("query,document\na,b\n")
    p = _recipe(tmp_path, "model: x\nsteps: [{stage: bench, inputs: [model], pairs: d/pairs.csv}]\n")
    assert load_recipe(p)["steps"][0]["options"]["pairs"] == str(tmp_path / "d" / "pairs.csv")
    p = _recipe(tmp_path, "model: x\nsteps: [{stage: bench, inputs: [model], pairs: d/missing.csv}]\n")
    with pytest.raises(BertoptError) as e:
        load_recipe(p)
    assert "steps[0] (bench).pairs" in e.value.message and "missing.csv" in e.value.message


def test_cli_reports_recipe_error(tmp_path):
    p = _recipe(tmp_path, "model: x\nsteps: [{stage: export, opsett: 17}]\n")
    r = run_cli("run", str(p))
    assert r.returncode == 1 and "opsett" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr


def test_shipped_recipes_validate(tmp_path):
    import subprocess
    import sys

    for p in sorted((ROOT / "recipes").glob("*.yaml")):
        if ".cache-bbc/data" in p.read_text():
            # its data is made by `make run-bbc` (examples/bbc_news_split.py, ~1 s): validate a copy against a fresh split
            copy = tmp_path / "recipes" / p.name
            copy.parent.mkdir(exist_ok=True)
            copy.write_text(p.read_text())
            subprocess.run([sys.executable, str(ROOT / "examples" / "bbc_news_split.py"), "--out", str(tmp_path / ".cache-bbc" / "data")],
                           check=True, capture_output=True)
            p = copy
        assert load_recipe(p)["steps"], p


def test_skip_unchanged_rebuild_changed(tmp_path, minilm_dir, slabs_dir):
    p = _recipe(tmp_path, f"""
        name: t
        model: {minilm_dir}
        workdir: work
        steps:
          - stage: export
            tolerance: 0.0001
          - stage: bench
            inputs: [export]
            batch: [1]
            seq: [8]
            warmup: 0
            iters: 1
            repeats: 1
            data: {slabs_dir / 'test.csv'}
            samples: 8
    """)
    first = run_recipe(p)
    assert [r["status"] for r in first] == ["built", "done"]
    assert (tmp_path / "work" / "export" / "manifest.json").is_file()
    bench_manifest = json.loads((tmp_path / "work" / "bench" / "manifest.json").read_text())
    second = run_recipe(p)
    assert [r["status"] for r in second] == ["skipped", "skipped"]
    # bench was up to date too: same report, not re-measured
    assert json.loads((tmp_path / "work" / "bench" / "manifest.json").read_text())["created"] == bench_manifest["created"]
    p.write_text(p.read_text().replace("tolerance: 0.0001", "tolerance: 0.0002"))
    third = run_recipe(p)
    assert third[0]["status"] == "built"
    forced = run_recipe(p, force=True, only=["export"])
    assert [r["status"] for r in forced] == ["built"]
