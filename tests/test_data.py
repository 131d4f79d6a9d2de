"""Data files: formats, columns, labels, and the errors users see."""

from __future__ import annotations

import json

import pytest

from bertopt.data import encode_labels, load_texts
from bertopt.errors import BertoptError


def test_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello\t1\nworld\t0\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"sentence": "x", "y": "benign"}) + "\n" + json.dumps({"sentence": "z", "y": "injection"}) + "\n")
    assert load_texts(tmp_path / "a.txt").texts == ["one", "two"]
    d = load_texts(tmp_path / "a.tsv", label_column="label")
    assert d.texts == ["hello", "world"] and d.labels == ["1", "0"]
    j = load_texts(tmp_path / "a.jsonl", text_column="sentence", label_column="y", limit=1)
    assert j.texts == ["x"] and j.labels == ["benign"]
    assert list(encode_labels(["benign", "injection", "1"], {"0": "benign", "1": "injection"})) == [0, 1, 1]


def test_real_slabs(slabs_dir):
    d = load_texts(slabs_dir / "test.csv", text_column="text", label_column="label")
    assert len(d) > 2000 and set(d.labels) == {"0", "1"}


@pytest.mark.parametrize("content,kwargs,needle", [
    ("", {}, "no texts"),
    ("a,b\n1,2\n", {}, "which column"),
    ("text,label\nx,1\n", {"label_column": "y"}, "no label column 'y'"),
    ("text\nx\n", {"text_column": "body"}, "no text column 'body'"),
])
def test_errors_name_file_and_field(tmp_path, content, kwargs, needle):
    f = tmp_path / "d.csv"
    f.write_text(content)
    with pytest.raises(BertoptError) as e:
        load_texts(f, **kwargs)
    assert needle in e.value.message and "d.csv" in e.value.message


def test_bad_jsonl_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(BertoptError, match=r"d.jsonl:2: invalid JSON"):
        load_texts(f)


def test_unknown_label(tmp_path):
    with pytest.raises(BertoptError, match="'spam'"):
        encode_labels(["spam"], {"0": "benign"})
