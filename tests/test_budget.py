"""Accuracy budgets on ``calibrate`` and ``qat`` (``--min-cosine`` / ``--max-accuracy-drop``): the search that puts
GEMMs back in float on the real MiniLM and real S-Labs text, exit 3 when nothing meets the budget,
bad budgets refused before any work; qat writes the more faithful of its QAT model and its start."""

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
    from bertopt.budget import split_holdout
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
    (["--min-cosine", "1.5"], "calibrate --min-cosine: must be less than or equal to 1 (got 1.5)"),
    (["--max-accuracy-drop", "-0.5"], "calibrate --max-accuracy-drop: must be greater than or equal to 0 (got -0.5)"),
    (["--max-accuracy-drop", "0.2"], "needs labeled held-out text"),
    (["--max-accuracy-drop", "0.2", "--eval", "x.csv"], "needs labeled held-out text"),
    (["--min-cosine", "0.99", "--label-column", "label"], "--label-column needs --eval"),
    (["--min-cosine", "0.99", "--max-float", "0"], "calibrate --max-float: must be greater than or equal to 1 (got 0)"),
])
def test_bad_budgets_are_refused_before_any_work(train_csv, tmp_path, args, msg):
    out = tmp_path / "int8"
    r = run_cli("calibrate", str(tmp_path / "no-such-model"), "-o", str(out), "--data", str(train_csv), *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error:" in r.stderr and msg in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_budget_in_a_recipe_step(tmp_path):
    from bertopt.calibrators.stage import run_calibrate

    with pytest.raises(BertoptError, match=r"run_calibrate: min_cosine=2\.0: must be less than or equal to 1"):
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
    # and on ONNX Runtime: QAT's export and its start measured on the early-stopping texts, the better one written
    sc = m["metrics"]["start_check"]
    assert set(sc["candidates"]) == {"qat", "start"} and "passed" not in sc
    best = max(sc["candidates"], key=lambda n: (sc["candidates"][n]["cosine_min"], sc["candidates"][n]["cosine_mean"]))
    assert sc["chosen"] == best and m["quantization"]["written"] == best


def test_accuracy_budget_arithmetic():
    """Accuracy drop in points against the FP32 reference's accuracy on the same labeled held-out texts."""
    import numpy as np

    from bertopt.budget import HeldOut, meets
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


# ------------------------------------------------------------------------------------------- qat
QAT_SHORT = ["--limit", "240", "--steps", "1", "--batch-size", "16", "--max-length", "32"]


@pytest.mark.parametrize("args, msg", [
    (["--min-cosine", "1.5"], "qat --min-cosine: must be less than or equal to 1 (got 1.5)"),
    (["--max-accuracy-drop", "-0.5"], "qat --max-accuracy-drop: must be greater than or equal to 0 (got -0.5)"),
    (["--max-accuracy-drop", "0.2"], "needs labeled held-out text"),
    (["--eval", "x.csv"], "no budget is given"),
    (["--parity-min-mean-cosine", "2"], "qat --parity-min-mean-cosine: must be less than or equal to 1 (got 2.0)"),
])
def test_qat_bad_budgets_are_refused_before_any_work(minilm_dir, train_csv, tmp_path, args, msg):
    out = tmp_path / "qat"
    r = run_cli("qat", str(minilm_dir), "-o", str(out), "--data", str(train_csv), "--text-column", "text", *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error:" in r.stderr and msg in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_qat_budget_with_no_held_out_text_left_is_refused(minilm_dir, tmp_path):
    pytest.importorskip("modelopt.torch.quantization")
    data = tmp_path / "few.txt"
    data.write_text("".join(f"text number {i}\n" for i in range(40)))
    out = tmp_path / "qat"
    r = run_cli("qat", str(minilm_dir), "-o", str(out), "--data", str(data), "--min-cosine", "0.99", "--eval-samples", "64")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error:" in r.stderr and "held out for the budget" in r.stderr and "--eval" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_qat_held_out_texts_are_never_training_texts(tmp_path):
    """Without --eval the budget's texts are carved out of --data: after --limit when there are texts
    beyond it, and the training copy of --data leaves them out (so calibration and training never see them)."""
    from bertopt.data import load_texts
    from bertopt.qat.budget import carve

    data = tmp_path / "d.csv"
    data.write_text("body,y\n" + "".join(f"text {i},{i % 2}\n" for i in range(100)))
    h = carve(data, text_column="body", label_column="y", eval=None, eval_samples=10, limit=None, tmp=tmp_path)
    tr = load_texts(h.train_file, text_column="body", label_column="y")
    assert len(h.texts) == 10 and len(tr) == 90 and not set(h.texts) & set(tr.texts)
    assert [int(v) for v in h.labels] == [int(t.split()[1]) % 2 for t in h.texts]
    ev = load_texts(h.eval_file, text_column="body", label_column="y")  # calibrate's --eval reads it with the same columns
    assert ev.texts == h.texts
    h2 = carve(data, text_column="body", label_column=None, eval=None, eval_samples=10, limit=50, tmp=tmp_path)
    assert all(int(t.split()[1]) >= 50 for t in h2.texts)
    assert load_texts(h2.train_file, text_column="body").texts == [f"text {i}" for i in range(50)]


@pytest.mark.slow
def test_qat_budget_writes_the_more_faithful_candidate_and_it_measures_as_recorded(minilm_dir, train_csv, tmp_path):
    pytest.importorskip("modelopt.torch.quantization")
    import onnx

    from bertopt.artifacts import load_artifact
    from bertopt.calibrators import collect
    from bertopt.calibrators.sensitivity import Evaluator
    from bertopt.data import load_texts, load_tokenizer
    from bertopt.export.stage import run_export

    out = tmp_path / "qat"
    r = run_cli("qat", str(minilm_dir), "-o", str(out), "--data", str(train_csv), "--text-column", "text", *QAT_SHORT,
                "--min-cosine", "0.9", "--eval-samples", str(HELD))
    assert r.returncode == 0, r.stdout + r.stderr
    m = _manifest(out)
    b = m["metrics"]["budget"]
    assert b["passed"] and b["min_cosine"] == 0.9 and b["held_out"]["n"] == HELD and "never trained" in b["held_out"]["source"]
    assert set(b["candidates"]) == {"qat", "start"} and "fallback" not in b
    c = b["candidates"]
    best = max(c, key=lambda n: (c[n]["cosine_min"], c[n]["cosine_mean"]))
    assert b["chosen"] == best == m["quantization"]["written"]
    # the written model measures as recorded, on the same held-out texts (those after --limit, seed 0)
    from bertopt.budget import split_holdout

    td = load_texts(train_csv, text_column="text")
    idx, _ = split_holdout(td.texts, 240, HELD)
    ref_art = run_export(minilm_dir, tmp_path / "fp32", task="feature-extraction")
    ref = onnx.load(str(ref_art.model_path))
    batches = collect.make_batches(load_tokenizer(ref_art.path / "tokenizer"), [td.texts[i] for i in idx], collect.model_inputs(ref), 32, 16)
    got = Evaluator.for_model(ref, batches).error(onnx.load(str(load_artifact(out).model_path)))
    assert abs(got["cosine_min"] - c[best]["cosine_min"]) < 1e-4


@pytest.mark.slow
def test_qat_impossible_budget_falls_back_to_calibrates_search_then_exits_3(minilm_dir, train_csv, tmp_path):
    pytest.importorskip("modelopt.torch.quantization")
    out = tmp_path / "qat"
    r = run_cli("qat", str(minilm_dir), "-o", str(out), "--data", str(train_csv), "--text-column", "text", *QAT_SHORT,
                "--start", "max", "--calib-batches", "2", "--min-cosine", "1.0", "--max-float", "1", "--eval-samples", str(HELD),
                timeout=2400)  # QAT + calibrate's sensitivity ranking and search: > 15 min on a loaded 2-core machine
    assert r.returncode == 3, r.stdout + r.stderr
    err = r.stderr + r.stdout
    assert "error:" in err and "best found" in err and "Traceback" not in err
    b = _manifest(out)["metrics"]["budget"]
    assert b["passed"] is False and set(b["candidates"]) == {"qat", "calibrate-budget"}
    # --max-float 1: calibrate's search tried one GEMM back in float; when nothing meets the budget it keeps
    # the candidate closest to it, which may be the all-INT8 start
    assert len(b["fallback"]["steps"]) == 1 and len(b["fallback"]["float_gemms"]) <= 1
    assert all(not c["meets_budget"] for c in b["candidates"].values())


def test_one_gate_reads_both_budget_records(tmp_path):
    """calibrate's search record and qat's candidate record both end in exit 3 naming the best found."""
    from bertopt.artifacts import Artifact
    from bertopt.budget import gate
    from bertopt.errors import QualityGateError

    cal = {"passed": False, "held_out": {"n": 64}, "result": {"quantized_gemms": 30, "float_gemms": ["a", "b"], "cosine_min": 0.98,
                                                                "cosine_mean": 0.995}}
    qat = {"passed": False, "held_out": {"n": 32}, "chosen": "start", "candidates": {"qat": {"cosine_min": 0.9},
                                                                                       "start": {"cosine_min": 0.97, "accuracy_drop_points": 2.5}}}
    for stage, rec, says in (("calibrate", cal, "30 GEMMs INT8, 2 in float, cosine min 0.98000"), ("qat", qat, "'start', cosine min 0.97000, "
                                                                                                              "accuracy drop 2.50 points")):
        art = Artifact(tmp_path, {"stage": stage, "metrics": {"budget": rec}})
        with pytest.raises(QualityGateError, match=f"^{stage}: no candidate met the budget on {rec['held_out']['n']} held-out texts") as e:
            gate(art)
        assert says in e.value.message and "--max-float" in e.value.hint
        gate(Artifact(tmp_path, {"stage": stage, "metrics": {"budget": rec | {"passed": True}}}))  # met: no error
