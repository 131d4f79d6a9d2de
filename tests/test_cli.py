"""The CLI boundary: help without heavy imports, version, and user errors as error:/hint: + exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bertopt.cli.main import COMMANDS
from conftest import run_cli

BLOCK_HEAVY = """
import sys
for mod in ("torch", "tensorrt", "modelopt", "onnxruntime", "transformers"):
    sys.modules[mod] = None  # any import of them raises ImportError
sys.argv = ["bertopt", *{args!r}]
from bertopt.cli.main import main
try:
    main()
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
heavy = [m for m in ("torch", "tensorrt", "modelopt", "onnxruntime", "transformers") if sys.modules.get(m) is not None]
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def _registered() -> list[str]:
    from bertopt.cli.main import app

    return [c.name for c in app.registered_commands]


def test_registered_commands_are_known_and_in_order():
    names = _registered()
    assert {"export", "bench", "run"} <= set(names)
    assert names == [c for c in COMMANDS if c in names]


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_works_without_torch_or_onnxruntime(args):
    if len(args) == 2 and args[0] not in _registered():
        pytest.skip(f"{args[0]} not registered")
    p = subprocess.run([sys.executable, "-c", BLOCK_HEAVY.format(args=args)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Usage" in p.stdout
    assert "HEAVY=\n" in p.stdout or p.stdout.rstrip().endswith("HEAVY=")


def test_version():
    p = run_cli("--version")
    assert p.returncode == 0
    from bertopt import __version__

    assert p.stdout.strip() == f"bertopt {__version__}"


def _assert_user_error(p, *needles):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "error:" in p.stderr and "hint:" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def test_export_missing_folder(tmp_path):
    out = tmp_path / "out"
    p = run_cli("export", str(tmp_path / "nope"), "-o", str(out))
    _assert_user_error(p, "nope", "no such folder")
    assert not out.exists()


def test_export_not_hf_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    p = run_cli("export", str(tmp_path / "m"), "-o", str(tmp_path / "out"))
    _assert_user_error(p, "config.json")
    assert not (tmp_path / "out").exists()


def test_export_unsupported_architecture_names_supported(tmp_path):
    m = tmp_path / "gpt"
    m.mkdir()
    (m / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    p = run_cli("export", str(m), "-o", str(tmp_path / "out"))
    _assert_user_error(p, "gpt2", "bert", "roberta")
    assert list(tmp_path.iterdir()) == [m]


def test_bench_corrupt_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all" * 10)
    p = run_cli("bench", str(bad), "--iters", "1", "--repeats", "1")
    _assert_user_error(p, "bad.onnx", "not a readable ONNX model")


def test_bench_empty_data_file(exported_minilm, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    p = run_cli("bench", str(exported_minilm), "--data", str(empty), "--iters", "1", "--repeats", "1")
    _assert_user_error(p, "empty.txt", "no texts")


def test_bench_missing_text_column(exported_minilm, slabs_dir):
    p = run_cli("bench", str(exported_minilm), "--data", str(slabs_dir / "test.csv"), "--text-column", "sentence",
                "--iters", "1", "--repeats", "1")
    _assert_user_error(p, "test.csv", "sentence", "columns are: text, label")


def test_bench_missing_label_column(exported_minilm, slabs_dir):
    p = run_cli("bench", str(exported_minilm), "--eval", str(slabs_dir / "test.csv"), "--label-column", "y",
                "--iters", "1", "--repeats", "1")
    _assert_user_error(p, "test.csv", "label column 'y'")


def test_usage_error_is_exit_2():
    p = run_cli("bench", "x", "--batch", "a,b")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
