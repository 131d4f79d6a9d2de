"""``bertopt bench``'s options (light: the CLI's ``--help`` imports this, not a runtime)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import model_validator

from bertopt.errors import BertoptError
from bertopt.options import StageOptions, opt
from bertopt.params import Cosine, MaxLength, NonNegativeFloat, NonNegativeInt, PositiveInt, Sizes

Lengths = Literal["fixed", "real"]


class BenchOptions(StageOptions):
    STAGE: ClassVar[str] = "bench"
    PANELS: ClassVar[tuple[str, ...]] = ("Shapes and timing", "Data", "Embedding quality", "Quality gates")

    batch: Sizes = opt([1, 8], "Batch sizes, comma-separated.", panel="Shapes and timing", split=True)
    seq: Sizes = opt([128], "Sequence lengths, comma-separated.", panel="Shapes and timing", split=True)
    lengths: Lengths = opt("fixed", "fixed: the batch x seq grid; real: also batches of real --data texts padded per batch "
                                    "(sequences/s, tokens/s).", panel="Shapes and timing")
    sort: bool = opt(False, "With --lengths real: sort texts by length before batching, as servers do.", panel="Shapes and timing",
                     flag="--sort")
    threads: PositiveInt | None = opt(None, "Intra-op threads (default: all cores).", panel="Shapes and timing", flag=["--threads", "-t"],
                                      fingerprint=False)  # in params as resolved
    concurrency: PositiveInt = opt(1, "With --lengths real: also serve the real-length batches from N callers at once (threads, each its own "
                                      "session of threads/N intra-op threads): sequences/s as served.", panel="Shapes and timing")
    warmup: NonNegativeInt = opt(5, "Untimed calls per artifact and shape.", panel="Shapes and timing")
    iters: PositiveInt = opt(30, "Timed calls per pass.", panel="Shapes and timing")
    repeats: PositiveInt = opt(3, "Interleaved passes per shape.", panel="Shapes and timing")
    data: str | None = opt(None, "Real text for inputs and fidelity: .txt, .csv, .tsv, .jsonl.", panel="Data")
    text_column: str | None = opt(None, "Text column of --data/--eval (csv/tsv/jsonl).", panel="Data")
    samples: PositiveInt = opt(200, "Texts of --data used for fidelity.", panel="Data")
    max_length: MaxLength = opt(128, "Truncation length for fidelity/accuracy texts.", panel="Data")
    eval: str | None = opt(None, "Labeled data for task accuracy (with --label-column).", panel="Data")
    label_column: str | None = opt(None, "Label column of --eval.", panel="Data")
    eval_samples: PositiveInt | None = opt(None, "Use only the first N rows of --eval.", panel="Data")
    pairs: str | None = opt(None, "Query/document pairs for retrieval recall@1/@10 and MRR (.csv/.tsv/.jsonl; default with "
                                  "--query-column: --data).", panel="Embedding quality")
    query_column: str | None = opt(None, "Query column of --pairs (default: query).", panel="Embedding quality")
    doc_column: str | None = opt(None, "Document column of --pairs (default: document).", panel="Embedding quality")
    pairs_samples: PositiveInt | None = opt(None, "Use only the first N pairs of --pairs.", panel="Embedding quality")
    k: PositiveInt | None = opt(None, "Neighbours for neighbour agreement and k-NN accuracy (default 10; with fewer texts "
                                      "neighbour agreement is skipped).", panel="Embedding quality", fingerprint="given")
    output: str | None = opt(None, "Model output fidelity compares (default: chosen by shape; see README).", panel="Quality gates",
                             fingerprint="given")  # only when given (and lengths, sort, k, pairs): older reports stay valid
    # the gates judge a report, they do not change it
    min_cosine: Cosine | None = opt(None, "Gate: fail (exit 3) if any artifact's min cosine is below this.", panel="Quality gates",
                                    fingerprint=False)
    max_accuracy_drop: NonNegativeFloat | None = opt(None, "Gate: fail (exit 3) if accuracy drops more points than this.",
                                                     panel="Quality gates", fingerprint=False)

    @model_validator(mode="after")
    def _real_lengths_need_texts(self):
        if self.lengths == "real" and not (self.data or self.eval):
            raise BertoptError("--lengths real needs texts: pass --data FILE (or --eval FILE)", hint="e.g. --data val.csv --text-column text")
        if self.concurrency > 1 and self.lengths != "real":
            raise BertoptError("--concurrency serves the real-length batches: it needs --lengths real", hint="add --lengths real --data FILE")
        return self

    @model_validator(mode="after")
    def _pairs_columns(self):
        if (self.pairs or self.query_column or self.doc_column) and not (self.pairs or self.data):
            raise BertoptError("--query-column/--doc-column name columns of --pairs (or --data), and neither is given",
                               hint="e.g. --pairs pairs.csv --query-column title --doc-column body")
        return self

    @property
    def retrieval_file(self) -> str | None:
        """The file retrieval reads: --pairs, else --data when a pair column is named."""
        return self.pairs or (self.data if (self.query_column or self.doc_column) else None)

    def params(self, *, threads: int) -> dict[str, Any]:  # noqa: D102 - threads as resolved
        return super().params(threads=threads)

    def _effective(self, p: dict[str, Any]) -> dict[str, Any]:
        """The pairs as resolved (their file and column defaults) and ``lengths``/``sort`` only when
        given, so older reports stay valid."""
        pairs = self.retrieval_file
        for k in ("pairs", "query_column", "doc_column", "pairs_samples"):
            del p[k]
        if pairs:
            p |= {"pairs": pairs, "query_column": self.query_column or "query", "doc_column": self.doc_column or "document",
                  "pairs_samples": self.pairs_samples}
        if self.lengths == "fixed":
            del p["lengths"], p["sort"]
        if self.concurrency == 1:
            del p["concurrency"]
        return p
