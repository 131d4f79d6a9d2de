"""qat's input and quiet helpers: the PyTorch model folder behind an input, feeds, modelopt's prints silenced."""

from __future__ import annotations

from pathlib import Path

from bertopt.artifacts import MANIFEST, input_path, load_artifact
from bertopt.errors import BertoptError
from bertopt.paths import resolve_path


def model_dir(input) -> tuple[Path, dict]:
    """The HF folder to train, and what an export artifact says about it (task, pooling, normalize)."""
    p = resolve_path(input)
    if (p / MANIFEST).is_file():
        art = load_artifact(p, verify=False)
        if art.stage == "compress" and (p / "config.json").is_file():  # a compressed student: itself an HF folder
            return p, {"task": art.model_info.get("task"), "pooling": art.model_info.get("pooling")}
        src = input_path(art, "model")  # recorded relative to the artifact (``../m``) inside a workdir
        if art.stage != "export" or src is None or not (src / "config.json").is_file():
            raise BertoptError(
                f"{p}: qat trains the PyTorch model, and this '{art.stage}' artifact does not lead back to one",
                hint="pass the Hugging Face model folder (or the artifact `bertopt export` wrote from it)",
            )
        info = art.model_info
        return src, {"task": info.get("task"), "pooling": info.get("pooling"), "normalize": info.get("normalize")}
    return p, {}


def feeds(tokenizer, texts, input_names, pad_to: int | None = None, max_length: int = 128):
    from bertopt.data import tokenize

    return tokenize(tokenizer, texts, input_names, max_length=pad_to or max_length, pad_to=pad_to)


class quiet:
    """Silence modelopt's prints ("Inserted N quantizers", plugin registrations) and warnings."""

    def __enter__(self):
        import contextlib
        import io
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._o = contextlib.redirect_stdout(io.StringIO())
        self._o.__enter__()
        return self

    def __exit__(self, *exc):
        self._o.__exit__(*exc)
        self._w.__exit__(*exc)
        return False
