"""Text data for calibration, fidelity and accuracy: .txt, .csv, .tsv, .jsonl; and tokenization."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bertopt.errors import BertoptError
from bertopt.paths import resolve_path

FORMATS = (".txt", ".csv", ".tsv", ".jsonl")
# Cells that hold no text: what pandas/Excel/JSON write for a missing value (compared lower-cased).
EMPTY_MARKERS = ("", "nan", "none", "null")


def is_empty_text(t) -> bool:
    return t is None or str(t).strip().lower() in EMPTY_MARKERS


@dataclass
class TextData:
    path: Path
    texts: list[str]
    labels: list | None = None

    def __len__(self) -> int:
        return len(self.texts)


def load_texts(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    min_texts: int = 1,
) -> TextData:
    """Read texts (and labels) from a data file; every problem names the file and the field.

    Empty cells (blank, whitespace, "nan", "None", "null": what a dataframe writes for a missing
    value) are dropped with their labels, and the count is printed; fewer than ``min_texts`` real
    texts left is an error naming the file and column.
    """
    p, raw = _read_data_file(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        if label_column:
            raise BertoptError(f"{p}: a .txt file has no columns, so no label column '{label_column}'", hint="use a .csv/.tsv/.jsonl file for labels")
        texts, labels, tcol = _lines(raw), None, None
    elif suffix in (".csv", ".tsv"):
        texts, labels, tcol = _read_table(p, raw, "\t" if suffix == ".tsv" else ",", text_column, label_column)
    else:
        texts, labels, tcol = _read_jsonl(p, raw, text_column, label_column)
    texts, labels = _drop_empty(p, texts, labels, tcol, min_texts)
    if offset:
        texts = texts[offset:]
        labels = labels[offset:] if labels is not None else None
    if limit is not None:
        texts = texts[:limit]
        labels = labels[:limit] if labels is not None else None
    if not texts:
        raise BertoptError(f"{p}: no texts" + (f" after skipping {offset}" if offset else ""), hint="the data file is empty")
    return TextData(path=p, texts=texts, labels=labels)


def _read_data_file(path: str | Path) -> tuple[Path, str]:
    """The resolved path and the text of a data file in one of :data:`FORMATS`; not empty."""
    p = resolve_path(path)
    if not p.is_file():
        raise BertoptError(f"{p}: no such data file", hint="pass a .txt (one text per line), .csv, .tsv or .jsonl file")
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise BertoptError(f"{p}: unsupported data format '{suffix}'", hint="use .txt (one text per line), .csv, .tsv or .jsonl")
    try:
        # utf-8-sig: a BOM (Excel's "CSV UTF-8") is not part of the first column's name;
        # newline="": line ends stay as written, so quoted CSV cells keep theirs
        with open(p, encoding="utf-8-sig", newline="") as f:
            raw = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BertoptError(f"{p}: unreadable ({e})", hint="data files must be UTF-8 text") from None
    if not raw.strip():
        raise BertoptError(f"{p}: no texts (the file is empty)", hint="pass a data file with at least one text")
    return p, raw


def _lines(raw: str) -> list[str]:
    """Lines split at \\n and \\r\\n only: U+2028, U+0085, form feeds etc. are text inside a line."""
    return [line[:-1] if line.endswith("\r") else line for line in raw.split("\n")]


def _read_table(p: Path, raw: str, delimiter: str, text_column: str | None, label_column: str | None) -> tuple[list, list | None, str]:
    """Texts, labels and the text column's name from a .csv/.tsv file's text."""
    # a long document in one cell is a text, not an error: lift csv's 128 KB field limit
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter)
    try:
        cols = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as e:
        raise BertoptError(f"{p}:{reader.line_num}: not a readable {p.suffix.lower()[1:].upper()} file ({e})",
                           hint="quote cells that hold the delimiter, a quote or a line break") from None
    tcol = _pick_column(p, cols, text_column, "text")
    if label_column and label_column not in cols:
        raise BertoptError(f"{p}: no label column '{label_column}'", hint="columns are: " + ", ".join(cols))
    texts = [r[tcol] if r[tcol] is not None else "" for r in rows]
    labels = [r[label_column] for r in rows] if label_column else None
    return texts, labels, tcol


def _read_jsonl(p: Path, raw: str, text_column: str | None, label_column: str | None) -> tuple[list, list | None, str]:
    """Texts, labels and the text field's name from a .jsonl file's text (blank lines skipped)."""
    rows, line_of = [], []
    for i, line in enumerate(_lines(raw), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BertoptError(f"{p}:{i}: invalid JSON ({e.msg})", hint="one JSON object per line") from None
        if not isinstance(obj, dict):
            raise BertoptError(f"{p}:{i}: expected a JSON object", hint="one JSON object per line, e.g. {\"text\": ...}")
        rows.append(obj)
        line_of.append(i)
    cols = list(rows[0]) if rows else []
    tcol = _pick_column(p, cols, text_column, "text")
    for i, r in zip(line_of, rows):
        if tcol not in r or (label_column and label_column not in r):
            missing = tcol if tcol not in r else label_column
            raise BertoptError(f"{p}:{i}: record has no field '{missing}'", hint="every record needs the same fields")
        if r[tcol] is not None and not isinstance(r[tcol], str):
            # 5, true or ["a"] as text would be embedded as "5", "True", "['a']": refuse rather than guess
            raise BertoptError(f"{p}:{i}: field '{tcol}' holds a JSON {_json_kind(r[tcol])}, not a string ({json.dumps(r[tcol])[:60]})",
                               hint=f"write the text as a JSON string (\"{tcol}\": \"...\"), or null for a missing one")
    texts = [r[tcol] if r[tcol] is not None else "" for r in rows]
    labels = [r[label_column] for r in rows] if label_column else None
    return texts, labels, tcol


def _json_kind(v) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _drop_empty(p: Path, texts: list, labels: list | None, tcol: str | None, min_texts: int) -> tuple[list, list | None]:
    """Texts (and their labels) without the empty/'nan' cells, with a note; too few left is an error."""
    suffix = p.suffix.lower()
    keep = [i for i, t in enumerate(texts) if not is_empty_text(t)]
    dropped = len(texts) - len(keep)
    if dropped:
        # blank lines of a .txt are layout, not missing values: only 'nan'-like lines are worth a note there
        markers = sum(1 for t in texts if is_empty_text(t) and str(t).strip())
        if suffix != ".txt" or markers:
            from bertopt.ui import note

            where = f" (column '{tcol}')" if tcol else ""
            note(f"dropped {dropped if suffix != '.txt' else markers} empty/'nan' texts from {p}{where}; {len(keep)} texts left")
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
    if len(texts) < max(1, min_texts):
        col = f" in column '{tcol}'" if tcol else ""
        raise BertoptError(
            f"{p}: {len(texts)} non-empty texts{col}" + (f" ({dropped} empty, whitespace or 'nan' cells dropped)" if dropped else "")
            + (f", fewer than the {min_texts} needed" if min_texts > 1 else ""),
            hint="check that --text-column names the column that holds the text" if dropped or not texts
            else "pass a data file with more texts",
        )
    return texts, labels


def _pick_column(p: Path, cols: Sequence[str], wanted: str | None, default: str) -> str:
    if not cols:
        raise BertoptError(f"{p}: no header row / fields", hint="the first row must name the columns")
    if wanted:
        if wanted not in cols:
            raise BertoptError(f"{p}: no text column '{wanted}'", hint="columns are: " + ", ".join(cols))
        return wanted
    if default in cols:
        return default
    if len(cols) == 1:
        return cols[0]
    raise BertoptError(f"{p}: which column holds the text?", hint="pass --text-column; columns are: " + ", ".join(cols))


def encode_labels(labels: list, id2label: dict | None) -> np.ndarray:
    """Labels as class indices: ints as they are, strings through the model's id2label."""
    out = []
    label2id = {str(v): int(k) for k, v in (id2label or {}).items()}
    for lab in labels:
        s = str(lab).strip()
        if s.lstrip("-").isdigit():
            out.append(int(s))
        elif s in label2id:
            out.append(label2id[s])
        else:
            raise BertoptError(f"label '{s}' is neither an integer nor one of the model's labels", hint="model labels: " + ", ".join(label2id))
    return np.asarray(out, dtype=np.int64)


# ------------------------------------------------------------------------------- tokenization
def load_tokenizer(tokenizer_dir: Path | None, where: str = ""):
    if tokenizer_dir is None or not Path(tokenizer_dir).is_dir():
        raise BertoptError(
            f"{where or tokenizer_dir}: no tokenizer next to the model",
            hint="artifacts written by `bertopt export` carry one in tokenizer/; for a bare .onnx put a tokenizer/ folder beside it",
        )
    from transformers import AutoTokenizer

    d = Path(tokenizer_dir)
    try:
        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - a tokenizer folder transformers cannot read is the user's folder
        first = e
    if (d / "vocab.txt").is_file():
        # a WordPiece vocab alone (no tokenizer.json/config): AutoTokenizer cannot tell the class, BERT's reads it
        try:
            from transformers import BertTokenizerFast

            return BertTokenizerFast.from_pretrained(str(d))
        except Exception:  # noqa: BLE001
            pass
    raise BertoptError(f"{d}: the tokenizer cannot be loaded ({type(first).__name__}: {' '.join(str(first).split())[:200]})",
                       hint="save it with `tokenizer.save_pretrained(DIR)` (tokenizer.json + tokenizer_config.json)")


def tokenize(tokenizer, texts: Sequence[str], input_names: Sequence[str], max_length: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize to int64 numpy feeds holding exactly ``input_names``.

    ``pad_to`` pads every row to that length (latency sweeps at a fixed shape); otherwise rows are
    padded to the longest text in the batch.
    """
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to else "longest",
        truncation=True,
        max_length=pad_to or max_length,
        return_tensors="np",
    )
    feeds = {}
    for name in input_names:
        if name in enc:
            feeds[name] = enc[name].astype(np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
        else:
            raise BertoptError(f"the tokenizer produces no '{name}'", hint="the model and tokenizer do not match")
    return feeds


@dataclass
class Pairs:
    path: Path
    queries: list[str]
    docs: list[str]

    def __len__(self) -> int:
        return len(self.queries)


def load_pairs(path: str | Path, query_column: str, doc_column: str, limit: int | None = None) -> Pairs:
    """Query/document pairs from a .csv/.tsv/.jsonl file (row i: query i and its relevant document);
    rows with an empty query or document are dropped with a note."""
    p, raw = _read_data_file(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        raise BertoptError(f"{p}: a .txt file has no columns, so no query/document pairs", hint="use a .csv/.tsv/.jsonl file with two text columns")
    if suffix == ".jsonl":
        queries, docs, _ = _read_jsonl(p, raw, query_column, doc_column)
    else:
        reader = csv.DictReader(raw.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        cols, rows = reader.fieldnames or [], list(reader)
        for flag, col in (("--query-column", query_column), ("--doc-column", doc_column)):
            if col not in cols:
                raise BertoptError(f"{p}: no column '{col}' ({flag})", hint="columns are: " + ", ".join(cols))
        queries, docs = [r[query_column] or "" for r in rows], [r[doc_column] or "" for r in rows]
    keep = [i for i, (q, d) in enumerate(zip(queries, docs)) if not (is_empty_text(q) or is_empty_text(d))]
    if len(keep) < len(queries):
        from bertopt.ui import note

        note(f"dropped {len(queries) - len(keep)} pairs with an empty query or document from {p}; {len(keep)} left")
    keep = keep[:limit] if limit is not None else keep
    if not keep:
        raise BertoptError(f"{p}: no query/document pairs in columns '{query_column}', '{doc_column}'", hint="check --query-column and --doc-column")
    return Pairs(p, [str(queries[i]) for i in keep], [str(docs[i]) for i in keep])
