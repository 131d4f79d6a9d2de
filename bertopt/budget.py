"""The accuracy budget's gate, one for calibrate and qat: a written artifact whose manifest says
``budget.passed`` false raises :class:`~bertopt.errors.QualityGateError` (exit 3), naming the best
candidate found. The search is calibrate's (:mod:`bertopt.calibrators.budget`), the held-out
measure :mod:`bertopt.calibrators.heldout`, qat's choice between candidates :mod:`bertopt.qat.budget`."""

from __future__ import annotations

from bertopt.artifacts import Artifact

# what to try next, per stage
HINTS = {"calibrate": "relax the budget, raise --max-float, or calibrate on more text (--samples)",
         "qat": "relax the budget, raise --max-float, or train/calibrate on more text"}


def best_found(record: dict) -> str:
    """The best candidate of a budget record: calibrate's search (``result``) or qat's choice (``chosen``)."""
    if "result" in record:
        r = record["result"]
        return (f"{r['quantized_gemms']} GEMMs INT8, {len(r['float_gemms'])} in float, cosine min {r['cosine_min']:.5f} mean {r['cosine_mean']:.5f}"
                + (f", accuracy {r['accuracy']:.4f} vs FP32 {r['accuracy_fp32']:.4f} ({r['accuracy_drop_points']:.2f} points)" if "accuracy" in r else ""))
    c = record["candidates"][record["chosen"]]
    return (f"'{record['chosen']}', cosine min {c['cosine_min']:.5f}"
            + (f", accuracy drop {c['accuracy_drop_points']:.2f} points" if "accuracy_drop_points" in c else ""))


def gate(art: Artifact) -> None:
    """Exit 3 (QualityGateError) when ``art`` was written with a budget that nothing met."""
    from bertopt.errors import QualityGateError

    b = art.manifest.get("metrics", {}).get("budget")
    if b and not b.get("passed", True):
        raise QualityGateError(f"{art.stage}: no candidate met the budget on {b['held_out']['n']} held-out texts; best found: {best_found(b)}"
                               f" (written to {art.path}, manifest budget.passed false)", hint=HINTS[art.stage])
