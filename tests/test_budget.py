"""Accuracy budgets on ``calibrate`` (``--min-cosine`` / ``--max-accuracy-drop``): the search that puts
GEMMs back in float on the real MiniLM and real S-Labs text, exit 3 when nothing meets the budget,
bad budgets refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertopt.errors import BertoptError
from conftest import run_cli

SAMPLES = 32
HELD = 32


@pytest.fixture(scope="module")
def train_csv(slabs_dir) -> Path:
    return slabs_dir / "train.csv"


def _manifest(p: Path) -> dict:
    return json.loads((p / "manifest.json").read_text())


@pytest.mark.slow
def test_budget_search_puts_gemms_back_in_float_until_the_held_out_min_cosine_holds(exported_minilm, train_csv, tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    common = dict(data=str(train_csv), text_column="text", samples=SAMPLES, eval_samples=HELD, trt_cache=False)
    # a budget every model meets: the manifest records the calibrated model's held-out numbers
    first = run_calibrate(exported_minilm, tmp_path / "a", min_cosine=-1.0, **common)
    b0 = first.manifest["metrics"]["budget"]
    assert b0["passed"] and b0["steps"] == [] and b0["held_out"]["n"] == HELD
    assert "held out" in b0["held_out"]["source"] and "disjoint" in b0["held_out"]["source"]
    start = b0["start"]["cosine_min"]
    assert start < 0.9999
    # halfway between the start and 1: at least one GEMM has to go back to float
    goal = round(start + (1 - start) / 2, 6)
    art = run_calibrate(exported_minilm, tmp_path / "b", min_cosine=goal, max_float=36, **common)
    b = art.manifest["metrics"]["budget"]
    assert b["passed"] and b["start"]["cosine_min"] == start
    assert b["result"]["cosine_min"] >= goal
    assert b["steps"] and all("est_latency_ms" in s and s["est_latency_ms"] > 0 for s in b["steps"])
    floated = b["result"]["float_gemms"]
    assert floated and b["result"]["quantized_gemms"] == 36 - len(floated)
    assert b["latency_ms"]["result"] > 0 and b["latency_ms"]["start"] > 0
    skipped = art.manifest["metrics"]["float_gemms"]
    assert {n for n, why in skipped.items() if why == "budget"} == set(floated)
    assert art.manifest["metrics"]["quantized_gemms"] == 36 - len(floated)
    # the written model is the measured one: re-measure it on the same held-out texts
    from bertopt.artifacts import load_artifact
    from bertopt.calibrators import collect
    from bertopt.calibrators.heldout import split_holdout
    from bertopt.calibrators.sensitivity import Evaluator
    from bertopt.data import load_texts, load_tokenizer
    import onnx

    td = load_texts(train_csv, text_column="text")
    idx, _ = split_holdout(td.texts, SAMPLES, HELD)
    ref = onnx.load(str(load_artifact(exported_minilm).model_path))
    names = collect.model_inputs(ref)
    batches = collect.make_batches(load_tokenizer(exported_minilm / "tokenizer"), [td.texts[i] for i in idx], names, 128, 16)
    got = Evaluator.for_model(ref, batches).error(onnx.load(str(art.path / "model.onnx")))
    assert got["cosine_min"] >= goal - 1e-4


@pytest.mark.slow
def test_impossible_budget_exits_3_with_the_best_numbers(exported_minilm, train_csv, tmp_path):
    out = tmp_path / "int8"
    r = run_cli("calibrate", str(exported_minilm), "-o", str(out), "--data", str(train_csv), "--text-column", "text",
                "--samples", str(SAMPLES), "--eval-samples", str(HELD), "--no-trt-cache", "--min-cosine", "1.0", "--max-float", "1")
    assert r.returncode == 3, r.stdout + r.stderr
    err = r.stderr + r.stdout
    assert "error:" in err and "best found" in err and "cosine min" in err and "Traceback" not in err
    b = _manifest(out)["metrics"]["budget"]
    assert b["passed"] is False and len(b["steps"]) == 1 and b["result"]["cosine_min"] < 1.0
    # a re-run finds the artifact up to date and fails the gate again (it never passes silently)
    r2 = run_cli("calibrate", str(exported_minilm), "-o", str(out), "--data", str(train_csv), "--text-column", "text",
                 "--samples", str(SAMPLES), "--eval-samples", str(HELD), "--no-trt-cache", "--min-cosine", "1.0", "--max-float", "1")
    assert r2.returncode == 3


@pytest.mark.parametrize("args, msg", [
    (["--min-cosine", "1.5"], "--min-cosine 1.5 is out of range"),
    (["--max-accuracy-drop", "-0.5"], "must be in [0, 100]"),
    (["--max-accuracy-drop", "0.2"], "needs labeled held-out text"),
    (["--max-accuracy-drop", "0.2", "--eval", "x.csv"], "needs labeled held-out text"),
    (["--min-cosine", "0.99", "--label-column", "label"], "--label-column needs --eval"),
    (["--min-cosine", "0.99", "--max-float", "0"], "--max-float must be at least 1"),
])
def test_bad_budgets_are_refused_before_any_work(train_csv, tmp_path, args, msg):
    out = tmp_path / "int8"
    r = run_cli("calibrate", str(tmp_path / "no-such-model"), "-o", str(out), "--data", str(train_csv), *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error:" in r.stderr and msg in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_budget_in_a_recipe_step(tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    with pytest.raises(BertoptError, match="out of range"):
        run_calibrate(tmp_path / "missing", tmp_path / "out", data="x.csv", min_cosine=2.0)


@pytest.mark.slow
def test_qat_without_init_from_starts_from_bertopts_calibration(minilm_dir, slabs_dir, tmp_path):
    """The default route (no --init-from) calibrates first and starts there: step 0 is calibrate's model,
    closer to the teacher on held-out text than modelopt's max calibration (--start max)."""
    pytest.importorskip("modelopt.torch.quantization")
    from bertopt.qat.stage import run_qat

    short = dict(data=str(slabs_dir / "train.csv"), text_column="text", samples=120, steps=1, lr=1e-12, batch_size=16, max_length=32)
    art = run_qat(str(minilm_dir), tmp_path / "qat", **short)
    m = art.manifest
    init = m["quantization"]["init_from"]
    assert m["params"]["start"] == "calibrate"
    assert init and init["linears_set"] == 36 and init["equalized"] > 0 and init["float_cosine_vs_teacher"] > 0.999
    assert [p.name for p in tmp_path.iterdir()] == ["qat"]  # the calibration lived in a temporary folder
    mx = run_qat(str(minilm_dir), tmp_path / "qat-max", start="max", calib_batches=4, **short).manifest
    assert mx["params"]["start"] == "max" and mx["quantization"]["init_from"] is None
    assert m["metrics"]["initial"]["loss"] < mx["metrics"]["initial"]["loss"]
    assert m["metrics"]["best"]["loss"] <= m["metrics"]["initial"]["loss"]  # never worse than its start on held-out text


def test_accuracy_budget_arithmetic():
    """Accuracy drop in points against the FP32 reference's accuracy on the same labeled held-out texts."""
    import numpy as np

    from bertopt.calibrators.heldout import HeldOut, meets
    from bertopt.calibrators.sensitivity import Evaluator
    from bertopt.outputs import OutputChoice

    ev = Evaluator(batches=[], choice=OutputChoice("logits", "logits", "[B,2]"), ref=np.array([[2.0, 0], [0, 2], [2, 0], [0, 1]]))
    ev.vectors = lambda model: model  # the "model" is its output here
    h = HeldOut(ev, np.array([0, 1, 1, 1]), "x")
    h.ref_accuracy = 0.75
    r = h.measure(np.array([[2.0, 0], [2, 0], [2, 0], [0, 1]]))
    assert r["accuracy"] == 0.5 and r["accuracy_drop_points"] == 25.0
    assert not meets(r, None, 20.0) and meets(r, None, 25.0)
    assert not meets(r | {"_cosine_min": 0.9}, 0.95, 30.0)
