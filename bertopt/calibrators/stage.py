"""``bertopt calibrate``: FP32 ONNX + text -> INT8 Q/DQ ONNX, a ranges file, a TensorRT cache.

What happens, in order:

1. pick the GEMMs to quantize (:func:`bertopt.calibrators.qdq.quantizable_gemms`; the pooler and
   classifier head stay float by default, as in ``qat``);
2. pass 1 over the calibration text on the FP32 model: per-channel min/max/mean of every GEMM
   input (for equalization and bias correction) and, for the TensorRT cache, a histogram of every
   float tensor;
3. equalize the GEMM inputs (:mod:`bertopt.calibrators.smooth`: smoothing + shifting, exact in
   float; checked against the input model on held-out text);
4. pass 2 on the equalized model: a histogram of every quantized GEMM input, reduced to one amax
   by the chosen calibrator (max, percentile, entropy, mse);
5. optionally, per-GEMM sensitivity (``--sensitivity-report``) and leaving the N worst GEMMs in float
   (``--skip-sensitive N``);
6. bias correction, Q/DQ insertion, and checks: the ONNX checker, ONNX Runtime's optimized graph
   must run every quantized GEMM as an INT8 kernel, and fidelity vs FP32 on held-out text.

Bad input is handled so that nothing silently breaks: an empty data file or a missing column is a
user error (``bertopt.data``); fewer texts than ``--samples`` uses what there is and says so;
texts longer than ``--max-length`` are truncated (counted in the manifest); a ``--max-length``
above the model's maximum is an error; NaN/inf activations are an error naming the tensor and the
texts; a GEMM input whose observed range is zero cannot have an INT8 scale, so that GEMM stays in
float and is listed (``skipped``) in the manifest and the ranges file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from bertopt.calibrators.options import CalibrateOptions
from bertopt.artifacts import MODEL_FILE, Artifact, describe_input, load_artifact, up_to_date, write_artifact
from bertopt.budget import gate
from bertopt.errors import BertoptError
from bertopt.graph import int8_gemms
from bertopt.calibrators.job import Job
from bertopt.ui import console, skipped

STAGE = "calibrate"


def run_calibrate(input: str | Path, out: str | Path, options: CalibrateOptions | None = None, *, force: bool = False,
                  **kwargs: Any) -> Artifact:
    """Calibrate ``input`` (an export/fuse artifact or a bare .onnx with tokenizer/ beside it) on
    the texts of ``data``; write the Q/DQ model, ranges.json and calibration.cache to ``out``.

    The options are a :class:`~bertopt.calibrators.options.CalibrateOptions` (``options=``) or its
    fields as keywords (``run_calibrate(m, out, data="train.csv", samples=512)``).

    With ``ranges`` (a ranges.json from an earlier run on the same input model) no data is read:
    the Q/DQ model is regenerated from the file.

    ``output`` names the model output the fidelity check and ``--sensitivity-report`` compare (default: chosen
    by shape and name, :mod:`bertopt.outputs`).

    A budget (``min_cosine`` and/or ``max_accuracy_drop`` with ``eval``/``label_column``) is checked
    on held-out text; when missed, GEMMs go back to float until it holds
    (:mod:`bertopt.calibrators.budget`); if nothing meets it the best candidate is written with
    ``budget.passed`` false in the manifest and :class:`QualityGateError` (exit 3) is raised.
    """
    from bertopt.paths import resolve_path

    o = CalibrateOptions.of(options, kwargs)
    in_path = resolve_path(input)
    out = Path(out)
    inputs = _inputs(in_path, o)
    params = o.params()
    if (done := up_to_date(out, STAGE, inputs, params, force)) is not None:
        skipped(STAGE, out)
        gate(done)
        return done

    art = load_artifact(in_path)
    model = _load_model(art)
    model_max = int(art.model_info.get("max_length") or 512)
    if o.max_length > model_max:
        raise BertoptError(f"--max-length {o.max_length} is longer than the model's maximum ({model_max} positions)",
                           hint=f"use --max-length {model_max} or less; longer texts are truncated to --max-length")

    from bertopt.outputs import choose_for_onnx

    choice = choose_for_onnx(model, requested=o.output, task=art.task, hidden_size=art.model_info.get("hidden_size"),
                             where=str(art.model_path))
    job = Job(art=art, model=model, o=o, exclude=o.excluded(), choice=choice, user_exclude=list(o.exclude or []))
    with write_artifact(out, STAGE, inputs, params) as w:
        if o.ranges is not None:
            job.from_ranges(o.ranges)
        else:
            job.calibrate(o.data, o.text_column)
        job.write(w)
    res = load_artifact(out)
    _summary(res)
    gate(res)
    return res


def _inputs(in_path: Path, o: CalibrateOptions) -> dict:
    """The manifest's inputs: the model, and the data, ranges and held-out files the options name."""
    from bertopt.paths import resolve_path

    inputs = {"model": describe_input(in_path)}
    if o.data is not None:
        inputs["data"] = describe_input(resolve_path(o.data))
    if o.ranges is not None:
        rp = resolve_path(o.ranges)
        inputs["ranges"] = describe_input(rp / "ranges.json" if rp.is_dir() else rp)
    if o.eval:
        inputs["eval"] = describe_input(resolve_path(o.eval))
    return inputs


# ---------------------------------------------------------------------------------------------
def _load_model(art: Artifact):
    import onnx

    from bertopt.calibrators.qdq import MIN_OPSET
    from bertopt.graph import opset_version, precision

    path = art.model_path
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise BertoptError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})", hint="re-export the model") from None
    if precision(model) == "int8":
        raise BertoptError(f"{path}: the model is already quantized (it holds Q/DQ or integer ops)",
                           hint="calibrate the FP32 model: the output of `bertopt export` or `bertopt fuse`")
    if opset_version(model) < MIN_OPSET:
        raise BertoptError(f"{path}: opset {opset_version(model)} is too old for per-channel Q/DQ (needs {MIN_OPSET}+)",
                           hint="re-export with `bertopt export --opset 17`")
    # fuse's MultiHeadAttention holds the Q/K/V biases: back into Adds while equalization and bias
    # correction edit them; write() folds them in again
    from bertopt.passes.qkv_bias import split_qkv_bias

    model, _ = split_qkv_bias(model)
    return model


def gemm_count_text(m: dict) -> str:
    """'34 of 38 GEMMs INT8 (4 kept in float: 2 by --exclude '*pooler*', 1 by --skip-sensitive, 1 zero range)'."""
    q, total = m.get("quantized_gemms"), m.get("candidate_gemms")
    why: dict[str, int] = {}
    for pat in (m.get("excluded_gemms") or {}).values():
        why[f"by --exclude '{pat}'"] = why.get(f"by --exclude '{pat}'", 0) + 1
    for reason in (m.get("float_gemms") or {}).values():
        key = "by --skip-sensitive" if reason == "sensitive" else "zero range" if str(reason).startswith("zero range") else str(reason)
        why[key] = why.get(key, 0) + 1
    text = f"{q} of {total} GEMMs INT8"
    if why:
        text += f" ({sum(why.values())} kept in float: " + ", ".join(f"{n} {k}" for k, n in why.items()) + ")"
    return text


def _summary(art: Artifact) -> None:
    m = art.manifest.get("metrics", {})
    fid = m.get("fidelity") or {}
    bits = [gemm_count_text(m)]
    k = m.get("ort_kernels", {})
    bits.append(f"ORT int8 kernels {int8_gemms(k)}")
    if fid:
        bits.append(f"'{fid['output']}' cosine vs FP32 min {fid['cosine_min']:.4f} mean {fid['cosine_mean']:.4f} (n={fid['n']})")
        if "top1_agreement" in fid:
            bits.append(f"top-1 agreement {fid['top1_agreement']:.4f}")
    console.print(f"calibrate: {art.path / MODEL_FILE}  " + "; ".join(bits), markup=False)
