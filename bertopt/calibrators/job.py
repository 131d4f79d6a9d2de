"""One calibrate run between its steps (the order: :mod:`bertopt.calibrators.stage`): the ranges from
text or from a ranges file, the GEMMs to quantize, the Q/DQ model and its checks, the artifact's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bertopt.artifacts import MODEL_FILE, Artifact, sha256_file, sha256_path
from bertopt.calibrators.options import CalibrateOptions
from bertopt.errors import BertoptError
from bertopt.graph import int8_gemms, ort_kernel_counts
from bertopt.ui import console, note

REPORT_FILE = "report.json"
# Equivalence gate for the equalized FP32 model vs the input (relative to the output's scale).
EQUALIZATION_TOLERANCE = 1e-3


@dataclass
class Job:
    """The state of one calibrate run between its steps (see the module docstring): ``calibrate`` (from
    text) or ``from_ranges`` (from a ranges file) sets the ranges and the GEMMs to quantize, ``write``
    writes the artifact."""

    art: Artifact
    model: Any  # onnx.ModelProto, FP32
    o: CalibrateOptions  # from_ranges replaces it with the placement and equalization the file records
    exclude: list[str]
    choice: Any = None  # the output compared (bertopt.outputs)
    user_exclude: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why it stays float
    report_rows: list[dict] | None = None
    trt_amax: dict[str, float] | None = None
    evaluator: Any = None
    data_hash: str | None = None
    calibration: dict = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # node -> the --exclude pattern that keeps it float
    exclude_matches: dict[str, int] = field(default_factory=dict)
    budget: dict | None = None
    all_gemms: int | None = None
    eq: dict = field(default_factory=dict)  # GEMM input -> Equalization
    eq_model: Any = None  # the equalized FP32 model
    targets_eq: list = field(default_factory=list)
    eq_tensors: dict = field(default_factory=dict)
    amax: dict[str, float] = field(default_factory=dict)
    means: dict = field(default_factory=dict)  # equalized GEMM input -> per-channel mean (bias correction)
    quant: list = field(default_factory=list)  # the GEMMs that get Q/DQ

    # ------------------------------------------------------------------ shared pieces
    def targets(self):
        from bertopt.calibrators.qdq import quantizable_gemms

        ts = quantizable_gemms(self.model, include_bmm=self.o.quantize_bmm, exclude=self.exclude)
        self._count_excluded(ts)
        if not ts:
            raise BertoptError(
                f"{self.art.model_path}: no GEMM to quantize (no MatMul/Gemm with a constant float32 2-D weight"
                + (f" outside --exclude {self.exclude}" if self.exclude else "") + ")",
                hint="calibrate an FP32 export or fuse artifact; a graph whose GEMMs sit inside fused ops (e.g. "
                     "com.microsoft Attention with packed QKV) has nothing left for Q/DQ",
            )
        return ts

    def _count_excluded(self, kept) -> None:
        """Which GEMMs each --exclude pattern kept in float; warn on a user pattern matching none."""
        from bertopt.calibrators.qdq import matches, quantizable_gemms

        every = quantizable_gemms(self.model, include_bmm=self.o.quantize_bmm)
        self.all_gemms = len(every)
        kept_nodes = {t.node for t in kept}
        self.excluded = {}
        self.exclude_matches = {}
        for pat in self.exclude:
            hit = [t.node for t in every if matches(t.node, [pat]) or (t.module and matches(t.module, [pat]))]
            self.exclude_matches[pat] = len(hit)
            for node in hit:
                if node not in kept_nodes:
                    self.excluded.setdefault(node, pat)
        for pat in self.user_exclude:
            if not self.exclude_matches.get(pat):
                names = [t.module or t.node for t in every]
                console.print(f"warning: calibrate: --exclude '{pat}' matches no GEMM of {self.art.model_path}"
                              + (f" (GEMMs are named like {names[0]}, {names[-1]})" if names else ""), style="yellow", markup=False)

    def build(self, subset):
        """The Q/DQ model quantizing exactly ``subset`` of the (equalized) GEMMs."""
        from bertopt.calibrators.qdq import insert_qdq
        from bertopt.calibrators.smooth import bias_correction

        base = self.eq_model
        if self.o.bias_correction and self.means:
            base = bias_correction(base, subset, self.means)
        return insert_qdq(base, self.amax, subset)

    # ------------------------------------------------------------------ calibrate from data
    def calibrate(self, data: str, text_column: str | None) -> None:
        budget = self.o.budget
        td, tok, names, texts, batches, eval_batches = self._read_texts(data, text_column, budget)
        targets = self.targets()
        stats = self._collect_ranges(targets, texts, batches, eval_batches)
        self._set_means(targets, stats)
        self.quant = self._skip_sensitive(self._drop_zero_ranges(self.targets_eq))
        if budget:
            from bertopt.calibrators.budget import apply_budget

            apply_budget(self, td, tok, names)

    def _read_texts(self, data: str, text_column: str | None, budget: bool):
        """Load the calibration and held-out texts and batch them: (texts file, tokenizer, input names,
        calibration texts, their batches, held-out batches)."""
        from bertopt.calibrators import collect
        from bertopt.data import load_texts, load_tokenizer

        o = self.o
        want = o.samples + o.eval_samples
        td = load_texts(data, text_column=text_column, limit=None if budget and not o.eval else want)
        texts = td.texts[: o.samples]
        held_out = td.texts[o.samples:want]
        if len(texts) < o.samples:
            note(f"calibrate: {td.path} has {len(texts)} texts, fewer than --samples {o.samples}: calibrating on all of them")
        if len(held_out) < o.eval_samples:
            held_out = texts[: o.eval_samples]
            note(f"calibrate: no held-out texts after the first {o.samples} in {td.path}: the fidelity check and the "
                 "sensitivity report use calibration texts")
        self.data_hash = sha256_file(td.path)
        self.calibration = {"data": str(td.path), "text_column": text_column, "samples": len(texts),
                            "method": o.method, "percentile": o.percentile, "max_length": o.max_length}
        tok = load_tokenizer(self.art.tokenizer_dir, where=str(self.art.model_path))
        lengths = [len(x) for x in tok(list(texts), truncation=False)["input_ids"]]
        truncated = sum(1 for n in lengths if n > o.max_length)
        if truncated:
            note(f"calibrate: {truncated} of {len(texts)} calibration texts are longer than {o.max_length} tokens and were truncated")
        names = collect.model_inputs(self.model)
        batches = collect.make_batches(tok, texts, names, o.max_length, o.batch_size)
        eval_batches = collect.make_batches(tok, held_out, names, o.max_length, o.batch_size)
        self.metrics.update({"samples": len(texts), "samples_requested": o.samples, "truncated_texts": truncated,
                             "tokens": int(sum(min(n, o.max_length) for n in lengths))})
        return td, tok, names, texts, batches, eval_batches

    def _collect_ranges(self, targets, texts, batches, eval_batches) -> dict:
        """Pass 1 (FP32 statistics), equalization, pass 2 (GEMM input histograms) and the ranges;
        returns pass 1's per-channel statistics."""
        from bertopt.calibrators import collect
        from bertopt.calibrators.methods import compute_amax
        from bertopt.calibrators.sensitivity import Evaluator
        from bertopt.calibrators.smooth import apply_equalization, equalization_params, smoothable
        from bertopt.ui import progress

        o = self.o
        gemm_inputs = smoothable(targets)
        equalize = o.smooth > 0 or o.shift
        need_channels = gemm_inputs if (equalize or o.bias_correction) else []
        cache_tensors = collect.float_activations(self.model) if o.trt_cache else []
        n = len(texts)
        with progress() as prog:
            t1 = prog.add_task("calibrate: pass 1 (FP32 statistics)", total=n, status="")
            hists1, stats = collect.collect(self.model, batches, histograms=cache_tensors, channels=need_channels, texts=texts,
                                            threads=self.o.threads, advance=lambda k: prog.advance(t1, k),
                                            lenient=set(cache_tensors) - set(need_channels))
            dropped = [x for x in cache_tensors if x not in hists1]
            if dropped:
                note(f"calibrate: {len(dropped)} tensor(s) held NaN/inf on calibration text (e.g. '{dropped[0]}', a -inf mask?): "
                     "left out of the TensorRT cache")
            eq = equalization_params(self.model, targets, stats, o.smooth, o.shift) if equalize else {}
            self.eq_model, self.targets_eq = apply_equalization(self.model, targets, eq) if eq else (self.model, list(targets))
            self.eq = eq
            note(f"calibrate: comparing output {self.choice.describe()}")
            self.evaluator = Evaluator.for_model(self.model, eval_batches, self.o.threads, choice=self.choice)
            if eq:
                chk = self.evaluator.error(self.eq_model)
                if chk["rel_error_max"] > EQUALIZATION_TOLERANCE:
                    raise RuntimeError(f"internal error: the equalized FP32 model differs from the input (max rel error {chk['rel_error_max']:.2e})")
                self.metrics["equalization_rel_error_max"] = chk["rel_error_max"]
            quant_tensors = list(dict.fromkeys(x for t in self.targets_eq for x in t.activation_tensors))
            t2 = prog.add_task("calibrate: pass 2 (histograms of GEMM inputs)", total=n, status="")
            hists2, _ = collect.collect(self.eq_model, batches, histograms=quant_tensors, texts=texts, threads=self.o.threads,
                                        advance=lambda k: prog.advance(t2, k))
            t3 = prog.add_task(f"calibrate: {o.method} ranges", total=len(hists2) + len(hists1), status="")
            self.amax = {}
            for x, h in hists2.items():
                self.amax[x] = compute_amax(h, o.method, o.percentile)
                prog.advance(t3)
            if cache_tensors:
                self.trt_amax = {}
                for x, h in hists1.items():
                    self.trt_amax[x] = compute_amax(h, o.method, o.percentile)
                    prog.advance(t3)
        return stats

    def _set_means(self, targets, stats: dict) -> None:
        """The equalized GEMM inputs' channel means (for bias correction) and the equalization record."""
        from bertopt.calibrators.smooth import equalized_mean

        eq = self.eq
        orig_of = {te.node: t for t, te in zip(targets, self.targets_eq)}
        self.means = {}
        for te in self.targets_eq:
            if te.kind == "gemm":
                x0 = orig_of[te.node].activations[0][1]
                if x0 in stats:
                    self.means[te.activations[0][1]] = equalized_mean(stats[x0].mean, eq.get(x0)).tolist()
        self.eq_tensors = {x0: {"scale": e.scale.tolist(), "shift": e.shift.tolist(),
                                "mean": stats[x0].mean.tolist()} for x0, e in eq.items()}
        if not eq and self.o.bias_correction:
            self.eq_tensors = {x0: {"mean": stats[x0].mean.tolist()} for x0 in stats}

    def _skip_sensitive(self, quant: list) -> list:
        """``--sensitivity-report``: rank the GEMMs by sensitivity; ``--skip-sensitive N``: leave the N worst in float."""
        from bertopt.calibrators.sensitivity import layer_sensitivity
        from bertopt.ui import progress

        o = self.o
        if o.sensitivity_report or o.skip_sensitive:
            with progress() as prog:
                t = prog.add_task("calibrate: per-GEMM sensitivity", total=len(quant), status="")
                self.report_rows = layer_sensitivity(quant, self.build, self.evaluator, advance=lambda k: prog.advance(t, k))
            if o.skip_sensitive:
                worst = [r["node"] for r in self.report_rows[: o.skip_sensitive]]
                for node in worst:
                    self.skipped[node] = "sensitive"
                quant = [t for t in quant if t.node not in worst]
                if not quant:
                    raise BertoptError(f"--skip-sensitive {o.skip_sensitive} leaves no GEMM to quantize ({len(worst)} candidates)",
                                       hint="skip fewer GEMMs")
        return quant

    def _drop_zero_ranges(self, targets):
        out = []
        for t in targets:
            bad = [x for x in t.activation_tensors if not (self.amax.get(x, 0.0) > 0 and np.isfinite(self.amax[x]))]
            if bad:
                self.skipped[t.node] = f"zero range on {bad[0]}"
                note(f"calibrate: {t.node} stays in float: its input '{bad[0]}' was 0 on every calibration token, "
                     "so it has no INT8 scale")
                continue
            out.append(t)
        return out

    # ------------------------------------------------------------------ regenerate from a ranges file
    def from_ranges(self, ranges: str) -> None:
        from bertopt.calibrators.rangefile import read_ranges
        from bertopt.calibrators.smooth import Equalization, apply_equalization, equalized_mean

        doc = read_ranges(ranges)
        src = doc["_path"]
        want = doc["hashes"].get("model")
        have = sha256_file(self.art.model_path)
        if want != have:
            raise BertoptError(
                f"{src}: written for a different model (model sha256 {str(want)[:12]}..., {self.art.model_path} has {have[:12]}...)",
                hint="pass the same input the ranges were calibrated on, or calibrate this model with --data",
            )
        pl, eqd = doc["placement"], doc["equalization"]
        self.o = self.o.model_copy(update=dict(quantize_bmm=bool(pl.get("include_bmm", False)), smooth=eqd.get("alpha", 0.0),
                                               shift=bool(eqd.get("shift", False)), bias_correction=bool(eqd.get("bias_correction", False))))
        self.exclude = list(pl.get("exclude", []))
        self.user_exclude = []  # the ranges file decides the placement
        self.calibration = dict(doc["calibration"])
        self.data_hash = doc["hashes"].get("data")
        targets = self.targets()
        tensors = eqd.get("tensors", {})
        eq = {x: Equalization.from_dict(v) for x, v in tensors.items() if "scale" in v}
        self.eq = eq
        self.eq_model, self.targets_eq = apply_equalization(self.model, targets, eq) if eq else (self.model, list(targets))
        self.eq_tensors = tensors
        self.amax = {k: float(v) for k, v in doc["activations"].items()}
        orig_of = {te.node: t for t, te in zip(targets, self.targets_eq)}
        self.means = {}
        for te in self.targets_eq:
            x0 = orig_of[te.node].activations[0][1]
            if te.kind == "gemm" and "mean" in tensors.get(x0, {}):
                self.means[te.activations[0][1]] = equalized_mean(tensors[x0]["mean"], eq.get(x0)).tolist()
        self.skipped = dict(pl.get("skipped", {}))
        missing = [t.node for t in self.targets_eq if t.node not in self.skipped and any(x not in self.amax for x in t.activation_tensors)]
        if missing:
            raise BertoptError(f"{src}: no range for the input(s) of {len(missing)} GEMM(s), e.g. {missing[0]}",
                               hint="the ranges file and the model do not match; re-run calibrate with --data")
        self.quant = [t for t in self.targets_eq if t.node not in self.skipped]
        self.trt_amax = (doc.get("trt_cache") or None) if self.o.trt_cache else None
        self.metrics["regenerated_from"] = src

    # ------------------------------------------------------------------ outputs and checks
    def write(self, w) -> None:
        import json

        from bertopt.calibrators.rangefile import CACHE_FILE, RANGES_FILE, trt_cache_text, write_ranges

        final, path = self._write_model(w)
        self._check(final, path)
        write_ranges(w.add_output("ranges", RANGES_FILE), self._ranges_doc())
        if self.trt_amax:
            w.add_output("trt_cache", CACHE_FILE).write_text(trt_cache_text(self.trt_amax, self.calibration.get("method", "entropy")))
        if self.budget is not None:
            self.metrics["budget"] = self.budget
        if self.report_rows is not None:
            rep = {"schema": "bertopt.calibrate-report/1", "metric": "output error with only that GEMM quantized",
                   "fidelity": self.metrics.get("fidelity"), "layers": self.report_rows}
            w.add_output("report", REPORT_FILE).write_text(json.dumps(rep, indent=1) + "\n")
            _render_report(self.report_rows)
        w.copy_tokenizer(self.art.tokenizer_dir)
        w.model = dict(self.art.model_info) | {"precision": "int8", "quantization": "qdq"}
        w.metrics = self.metrics

    def _write_model(self, w):
        """The Q/DQ model (checked by the ONNX checker), saved as the artifact's model: (model, path)."""
        import onnx

        from bertopt.passes.qkv_bias import merge_qkv_bias

        with console.status("calibrate: inserting Q/DQ"), w.timed("qdq"):
            final = self.build(self.quant)
            final, _ = merge_qkv_bias(final)
            try:
                onnx.checker.check_model(final)
            except Exception as e:  # noqa: BLE001 - a checker failure here is our bug, with context
                raise RuntimeError(f"internal error: the Q/DQ model fails the ONNX checker: {e}") from e
        path = w.add_output("model", MODEL_FILE)
        onnx.save(final, str(path))
        return final, path

    def _check(self, final, path: Path) -> None:
        """Metrics of the written model: Q/DQ counts, ORT's INT8 kernels, fidelity vs FP32 on held-out text."""
        from bertopt.calibrators.qdq import qdq_summary

        summary = qdq_summary(final)
        ort_ops = ort_kernel_counts(path)
        self.metrics.update({
            "quantized_gemms": len(self.quant),
            "candidate_gemms": self.all_gemms if self.all_gemms is not None else len(self.targets_eq),
            "float_gemms": self.skipped,
            "excluded_gemms": self.excluded,
            "exclude_matches": self.exclude_matches,
            "qdq": summary,
            "ort_kernels": ort_ops,
        })
        int8_kernels = int8_gemms(ort_ops)
        if int8_kernels < len(self.quant):
            note(f"calibrate: ONNX Runtime runs only {int8_kernels} of the {len(self.quant)} quantized GEMMs as INT8 kernels "
                 f"(optimized graph: {ort_ops})")
        if self.evaluator is not None:
            with console.status("calibrate: fidelity vs FP32 on held-out text"):
                fid = self.evaluator.error(final)
            self.metrics["fidelity"] = fid
            self.metrics["compared_output"] = self.choice.as_dict()
            self.metrics["cosine_min"] = fid["cosine_min"]
            if "top1_agreement" in fid:
                self.metrics["top1_agreement"] = fid["top1_agreement"]
            low = fid.get("top1_agreement", 1.0) < 0.99 if fid.get("kind") == "logits" else fid["cosine_min"] < 0.99
            if low:
                note(f"calibrate: low INT8 fidelity on held-out text ({fid}); try --method max or percentile (entropy and mse "
                     "can clip the rare, large activations BERT's special tokens carry), more --samples, or --skip-sensitive N "
                     "(see --sensitivity-report)")

    def _ranges_doc(self) -> dict:
        """ranges.json: what a later ``--ranges`` run needs to write the same model without data."""
        doc = {
            "hashes": {"model": sha256_file(self.art.model_path),
                       "tokenizer": sha256_path(self.art.tokenizer_dir) if self.art.tokenizer_dir else None,
                       "data": self.data_hash},
            "calibration": self.calibration,
            "placement": {"include_bmm": self.o.quantize_bmm, "exclude": self.exclude, "exclude_matches": self.exclude_matches,
                          "skipped": self.skipped,
                          "quantized": [t.node for t in self.quant]},
            "equalization": {"alpha": self.o.smooth, "shift": self.o.shift, "bias_correction": self.o.bias_correction,
                             "tensors": self.eq_tensors},
            "activations": {x: self.amax[x] for t in self.quant for x in t.activation_tensors},
        }
        if self.trt_amax:
            doc["trt_cache"] = self.trt_amax
        return doc


def _render_report(rows: Sequence[dict]) -> None:
    from rich.table import Table

    from bertopt.log import verbose

    every = verbose()  # --verbose: all rows, else the ten most sensitive
    table = Table(title="calibrate: per-GEMM sensitivity (output error with only that GEMM quantized)", title_justify="left")
    for col in ("rank", "GEMM", "rel. error (mean)", "cosine min"):
        table.add_column(col, justify="right" if col != "GEMM" else "left")
    for r in rows if every else rows[:10]:
        table.add_row(str(r["rank"]), r["node"], f"{r['rel_error_mean']:.2e}", f"{r['cosine_min']:.5f}")
    console.print(table)
    if not every and len(rows) > 10:
        note(f"calibrate: {len(rows) - 10} more rows in report.json (--verbose prints all)")
