"""INT8 post-training calibration: statistics, range calibrators, equalization, Q/DQ placement.

Modules (imported on use; nothing heavy happens at import time):

- ``histogram``: streaming |x| histograms;
- ``methods``: the max, percentile, entropy (TensorRT's KL) and MSE calibrators;
- ``collect``: running the FP32 model on ONNX Runtime over calibration text;
- ``smooth``: smoothing, shifting and bias correction of GEMM inputs;
- ``qdq``: Q/DQ placement rules (``quantizable_gemms``) and insertion (``insert_qdq``), shared with ``qat``;
- ``sensitivity``: output error vs FP32, per-GEMM sensitivity;
- ``rangefile``: ranges.json and TensorRT's calibration cache;
- ``stage``: ``run_calibrate``, the stage function behind ``bertopt calibrate``.
"""
