"""``bertopt qat``: quantization-aware training with knowledge distillation, exported as Q/DQ ONNX.

The FP32 Hugging Face model teaches its fake-quantized copy (nvidia-modelopt quantizers placed by
the same rules as ``bertopt calibrate``), on text alone or text + labels; the student is exported
through the legacy exporter as a Q/DQ ONNX model that takes the same path through fuse/build/bench
as a calibrated one. The distillation loop it trains with is ``bertopt.distill``.

- ``placement``: the modelopt quant config (which quantizers exist, which stay float);
- ``ranges``:    quantizer ranges taken from a ``bertopt calibrate`` artifact;
- ``onnx_qdq``:  Q/DQ ONNX export, weight folding to int8, parity against the fake-quant model;
- ``stage``:     ``run_qat``, the stage function the CLI and recipes call.
"""
