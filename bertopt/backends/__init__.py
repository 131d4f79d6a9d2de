"""Backends: build a deployable artifact and run it (ONNX Runtime on the CPU, TensorRT on GPU hosts)."""
