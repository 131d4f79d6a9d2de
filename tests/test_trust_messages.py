"""Issue 19 (trust, second round), the text and message cases: text read as written (CSV line breaks
in quoted cells, a BOM, long cells, .txt line separators, JSONL non-strings), manifests of the
wrong shape, model files that do not parse, a full disk, a YAML alias bomb, bench grid points that
cannot fit in memory, non-finite options, and the exit codes and hints of inspect/build/bench.
CLI cases run the real CLI (subprocess) and check the exit code, the `error:` line, no traceback,
and what is (not) on disk."""

from __future__ import annotations

import subprocess

import pytest

from bertopt.data import load_texts
from bertopt.errors import BertoptError
from conftest import run_cli


def _flat(text: str) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(text.split())


def _user_error(r: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """The `error:` message and its hint, after checking the exit code and that no traceback was printed."""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout
    flat = _flat(r.stderr)
    assert "error: " in flat and " hint: " in flat, r.stderr[-2000:]
    err = flat[flat.index("error: "):flat.index(" hint: ")]
    for n in needles:
        assert n in err, (n, err)
    return flat[flat.index("error: "):]


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
    _user_error(run_cli("calibrate", str(exported_minilm), "-o", str(out), "--data", str(f)), "d.jsonl:2:", "'text'", "number")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]
