"""inspect (lineage, precision summary, last measurement), compare (a CI regression gate), the HTML report."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from typer.testing import CliRunner

from bertopt.cli.main import app


def _cli(*args):
    from bertopt.errors import BertoptError

    r = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(r.exception, BertoptError):  # what main() does at the boundary
        return r.exception.exit_code, r.stdout, r.exception.message
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, ""


def _inspect(path) -> dict:
    code, out, err = _cli("inspect", path, "--json", "-")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("stage,chain,int8", [("export", ["export"], 0), ("fuse", ["fuse", "export"], 0),
                                                ("calibrate", ["calibrate", "fuse", "export"], 36),
                                                ("build", ["build", "calibrate", "fuse", "export"], 36)])
def test_inspect_each_stage(minilm_chain, minilm_dir, stage, chain, int8):
    res = _inspect(minilm_chain[stage])
    assert res["stage"] == stage and res["integrity"] == "ok"
    assert [e["stage"] for e in res["lineage"]] == chain
    assert all(i["status"] == "ok" for e in res["lineage"] for i in e["inputs"].values())
    base = res["lineage"][-1]["base_model"]
    assert base["path"] == str(minilm_dir.resolve()) and base["status"] == "ok"
    g = res["graph"]
    assert g["gemms"]["total"] == 36 and g["gemms"]["int8"] == int8
    assert [i["name"] for i in g["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o["name"] for o in g["outputs"]] == ["last_hidden_state", "sentence_embedding"]
    assert len(g["outputs"][0]["shape"]) == 3 and g["outputs"][0]["shape"][2] == 384
    assert res["precision"] == ("int8" if int8 else "fp32")
    if stage == "calibrate":
        assert res["lineage"][0]["params"]["samples"] == 32
        assert res["lineage"][0]["metrics"]["fidelity"]["cosine_min"] > 0.9
    if stage == "build":
        assert res["session"]["intra_op_num_threads"] >= 1
        meas = res["measured"]  # the bench artifact beside it measured it
        assert meas["bench"].endswith("bench") and meas["fidelity"]["cosine_min"] > 0.9
        assert {(r["batch"], r["seq"]) for r in meas["latency"]} == {(1, 16), (2, 16)}


def test_inspect_bench_artifact_and_text_output(minilm_chain):
    res = _inspect(minilm_chain["bench"])
    assert res["stage"] == "bench" and len(res["bench"]["runs"]) == 2
    code, out, _ = _cli("inspect", minilm_chain["build"])
    assert code == 0
    for s in ("lineage", "calibrate", "base", "GEMMs: 36 of 36 INT8", "last measured:", "inputs: input_ids int64"):
        assert s in out


def test_copied_runs_folder_still_inspects(minilm_chain, tmp_path):
    """Inputs within the workdir are recorded relative to the artifact: a copy resolves to itself."""
    wd = minilm_chain["build"].parent
    m = json.loads((minilm_chain["calibrate"] / "manifest.json").read_text())
    assert m["inputs"]["model"]["path"] == "../fuse"
    assert m["inputs"]["data"]["path"].startswith("/")  # outside the workdir: absolute
    copy_ = tmp_path / "copied"
    shutil.copytree(wd, copy_)
    res = _inspect(copy_ / "build")
    assert [e["path"] for e in res["lineage"][:3]] == [str(copy_ / s) for s in ("build", "calibrate", "fuse")]
    assert all(i["status"] == "ok" for e in res["lineage"] for i in e["inputs"].values())
    assert res["measured"]["bench"] == str(copy_ / "bench")
    # an input changed after the fact is flagged
    (copy_ / "fuse" / "model.onnx").write_bytes(b"not a model")
    res = _inspect(copy_ / "calibrate")
    assert res["lineage"][0]["inputs"]["model"]["status"] == "changed"


# ----------------------------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def bench_json(minilm_chain, tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    rep = json.loads((minilm_chain["bench"] / "report.json").read_text())
    rep["runs"][1]["accuracy"] = {"value": 0.9, "n": 100}
    rep["runs"][0]["accuracy"] = {"value": 0.91, "n": 100}
    (d / "old.json").write_text(json.dumps(rep))
    return d, rep


def _variant(d, rep, name, slower=1.0, acc=None):
    new = copy.deepcopy(rep)
    for r in new["runs"][1]["results"]:
        r["latency_ms"]["p50"] *= slower
        r["throughput"] /= slower
    if acc is not None:
        new["runs"][1]["accuracy"]["value"] = acc
    (d / name).write_text(json.dumps(new))
    return d / name


def test_compare_gates_on_latency_and_accuracy(bench_json):
    d, rep = bench_json
    slow = _variant(d, rep, "slow.json", slower=1.25)
    code, out, err = _cli("compare", d / "old.json", slow, "--max-latency-regression", "10%")
    assert code == 3 and "regression" in err and "+25.0%" in err
    assert "REGRESSED" in out  # the table is printed before the gate error
    assert _cli("compare", d / "old.json", slow, "--max-latency-regression", "30%")[0] == 0
    same = _variant(d, rep, "same.json")
    assert _cli("compare", d / "old.json", same, "--max-latency-regression", "10%", "--max-accuracy-drop", "0.5")[0] == 0
    worse = _variant(d, rep, "worse.json", acc=0.88)
    code, _, err = _cli("compare", d / "old.json", worse, "--max-accuracy-drop", "0.5")
    assert code == 3 and "2.00 points" in err
    code, out, _ = _cli("compare", d / "old.json", slow, "--json", "-")
    res = json.loads(out)
    assert code == 0 and res["passed"] and res["artifacts"][1]["shapes"][0]["latency_change"] == pytest.approx(0.25, abs=1e-3)


def test_compare_bad_inputs_name_the_file(bench_json, tmp_path):
    d, rep = bench_json
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = _cli("compare", d / "old.json", bad)
    assert code == 1 and str(bad) in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/1"}))
    code, _, err = _cli("compare", other, d / "old.json")
    assert code == 1 and str(other) in err and "not a bertopt bench report" in err
    renamed = copy.deepcopy(rep)
    for r in renamed["runs"]:
        r["name"] += "-x"
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    code, _, err = _cli("compare", d / "old.json", tmp_path / "renamed.json")
    assert code == 1 and "no artifact in common" in err
    code, _, err = _cli("compare", d / "old.json", d / "old.json", "--max-latency-regression", "fast")
    assert code == 1 and "--max-latency-regression" in err


# ----------------------------------------------------------------------------------------- report
def test_report_has_one_plot_per_measure_with_every_artifact(minilm_chain, tmp_path):
    import re

    rep = json.loads((minilm_chain["bench"] / "report.json").read_text())
    html = (minilm_chain["bench"] / "report.html").read_text()  # the bench artifact carries the page
    code, out, err = _cli("report", minilm_chain["bench"] / "report.json", "-o", tmp_path / "rep")
    assert code == 0, err
    assert (tmp_path / "rep" / "index.html").read_text() == html
    plots = dict(re.findall(r'<figure class="plot" data-plot="(\w+)">(<svg.*?</svg>)', html, re.S))
    expected = {"latency", "throughput", "tradeoff"} | ({"real"} if any(r.get("real") for r in rep["runs"]) else set())
    assert set(plots) == expected and html.count("<svg") == len(expected)
    for measure in ("latency", "throughput"):  # the same measure of every artifact on one set of axes
        for run in rep["runs"]:
            assert f">{run['name']}</text>" in plots[measure], (measure, run["name"])
    # self-contained: nothing fetched at view time
    assert "<script" not in html and "src=\"http" not in html and "<link" not in html
    code, _, err = _cli("report", tmp_path / "missing.json", "-o", tmp_path / "x")
    assert code == 1 and "missing.json" in err


def test_report_renders_in_a_headless_browser(minilm_chain, tmp_path):
    """benchmarks/render_report.py: chromium draws the page with the network blocked, not blank."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no chromium (apt-get install chromium)")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "render_report.py"
    p = subprocess.run([sys.executable, str(script), str(minilm_chain["bench"] / "report.html"), "-o", str(tmp_path / "r.png"),
                        "--size", "1000,900"], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r.png").stat().st_size > 10_000
