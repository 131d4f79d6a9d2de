"""Where ``qat`` starts without ``--init-from``: bertopt's own calibration of the same model on the same data.

Measured on all-MiniLM-L6-v2 (S-Labs text): QAT from modelopt's max calibration of its quantizers
started at held-out min cosine 0.9608, ``calibrate``'s model (equalization, bias correction, ranges)
at 0.9941, and QAT from calibrate's start ended better still. So the default start is calibrate's
model: the model is exported and calibrated (calibrate's defaults, e.g. its first ``--samples`` texts) on the training
texts into a temporary folder, and training proceeds exactly as with ``--init-from`` that folder
(which is removed afterwards; the qat manifest records ``start: calibrate``). ``--start max`` is the
old route. Under torchrun every process calibrates the same way; DDP then broadcasts rank 0's state.
"""

from __future__ import annotations

from pathlib import Path

from bertopt.outdir import forget_outputs_under
from bertopt.ui import note

def calibrated_start(model_dir: Path, base: Path, o, *, data: str, task: str, pooling: str, normalize: bool, force: bool = False) -> Path:
    """Export + calibrate ``model_dir`` into ``base`` (text column, max length and opset as qat's options ``o``);
    returns the calibrate artifact folder."""
    from bertopt.calibrators.stage import run_calibrate
    from bertopt.export.stage import run_export

    exp = base / "export"
    cal = base / "calibrate"
    note(f"qat: no --init-from: starting from bertopt's own calibration of {model_dir} on {data} (calibrate's defaults)")
    run_export(model_dir, exp, task=task, pooling=pooling, normalize=normalize, opset=o.opset, force=force)
    run_calibrate(exp, cal, data=str(data), text_column=o.text_column, max_length=o.max_length, trt_cache=False, force=force)
    forget_outputs_under(base)  # a temporary start, not an output: Ctrl-C later reports qat's own output
    return cal
