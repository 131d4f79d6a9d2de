"""Artifact folders: atomic writes, manifests, hash checks, up-to-date detection."""

from __future__ import annotations

import json

import pytest

from bertopt.artifacts import describe_input, is_up_to_date, load_artifact, up_to_date, write_artifact
from bertopt.errors import BertoptError


def _write(out, params, fail=False, content=b"model-bytes"):
    src = out.parent / "src.txt"
    src.write_text("input")
    inputs = {"model": describe_input(src)}
    with write_artifact(out, "demo", inputs, params) as w:
        w.add_output("model", "model.onnx").write_bytes(content)
        if fail:
            raise RuntimeError("interrupted")
    return inputs


def test_atomic_write_and_manifest(tmp_path):
    out = tmp_path / "a"
    inputs = _write(out, {"x": 1})
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "demo" and m["params"] == {"x": 1}
    assert m["outputs"]["model"]["sha256"] and m["inputs"]["model"]["sha256"]
    assert m["tools"]["onnx"] and m["timings"]["total"] >= 0
    assert is_up_to_date(out, "demo", inputs, {"x": 1})
    assert not is_up_to_date(out, "demo", inputs, {"x": 2})
    assert up_to_date(out, "demo", inputs, {"x": 1}, force=True) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_stage_leaves_nothing_and_keeps_old(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(RuntimeError):
        _write(out, {"x": 1}, fail=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.txt"]
    _write(out, {"x": 1}, content=b"old")
    with pytest.raises(RuntimeError):
        _write(out, {"x": 2}, fail=True, content=b"new")
    assert (out / "model.onnx").read_bytes() == b"old"
    assert json.loads((out / "manifest.json").read_text())["params"] == {"x": 1}


def test_modified_output_is_a_user_error(tmp_path):
    out = tmp_path / "a"
    inputs = _write(out, {"x": 1})
    (out / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BertoptError, match="sha256 does not match"):
        load_artifact(out)
    assert not is_up_to_date(out, "demo", inputs, {"x": 1})


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BertoptError, match="not a bertopt artifact"):
        _write(out, {})
    assert (out / "notes.txt").read_text() == "keep me"


def test_changed_input_invalidates(tmp_path):
    out = tmp_path / "a"
    inputs = _write(out, {"x": 1})
    (tmp_path / "src.txt").write_text("changed input")
    assert not is_up_to_date(out, "demo", {"model": describe_input(tmp_path / "src.txt")}, {"x": 1})
    assert is_up_to_date(out, "demo", inputs, {"x": 1})


def test_not_an_artifact(tmp_path):
    with pytest.raises(BertoptError, match="not a bertopt artifact"):
        load_artifact(tmp_path)


def test_other_code_invalidates(tmp_path, monkeypatch):
    """An artifact written by different bertopt source (same version) is not up to date."""
    import bertopt.artifacts as arts

    out = tmp_path / "a"
    inputs = _write(out, {"x": 1})
    assert is_up_to_date(out, "demo", inputs, {"x": 1})
    assert json.loads((out / "manifest.json").read_text())["bertopt_code"] == arts.code_digest()
    monkeypatch.setattr(arts, "code_digest", lambda: "0" * 16)
    assert not is_up_to_date(out, "demo", inputs, {"x": 1})
