"""Running a built engine from numpy feeds through Polygraphy's ``TrtRunner``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bertopt.backends.tensorrt import require_tensorrt
from bertopt.backends.tensorrt.engine import deserialize_engine
from bertopt.errors import BertoptError

class TensorRTRunner:
    """Run a built engine from numpy feeds through Polygraphy's ``TrtRunner``; used by ``bench`` (and by a
    user's service).

    ``runner(feeds) -> {output: array}`` copies host->device, executes and copies back (float32 out).
    ``runner.run_device_only(feeds)`` executes on inputs already on the device (uploaded once per
    distinct feeds) with ``infer(copy_outputs_to_host=False)``, so ``bench`` can time both.
    The engine's profile covering each (batch, seq) is chosen with ``TrtRunner.set_profile``.
    """

    def __init__(self, artifact_or_path: Any):
        from bertopt.artifacts import Artifact, load_artifact
        from bertopt.backends.profiles import Profile

        trt = require_tensorrt()
        from polygraphy.backend.trt import TrtRunner
        from polygraphy.datatype import DataType

        art = artifact_or_path if isinstance(artifact_or_path, Artifact) else load_artifact(artifact_or_path)
        self.path = art.model_path
        self.profiles = [Profile.from_json(p) for p in art.manifest.get("build", {}).get("profiles", [])]
        self.engine = deserialize_engine(self.path.read_bytes(), self.path)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # tensor dtypes through Polygraphy's DataType, as TrtRunner itself does (no trt.nptype)
        self.dtypes = {n: np.dtype(DataType.to_dtype(DataType.from_dtype(self.engine.get_tensor_dtype(n), source_module="tensorrt"), "numpy"))
                       for n in names}
        self._runner = TrtRunner(self.engine, optimization_profile=0)
        self._runner.activate()
        self._profile = 0
        self._device: dict[str, Any] = {}
        self._staged: tuple | None = None

    def _select_profile(self, batch: int, seq: int) -> None:
        from polygraphy.exception import PolygraphyException

        from bertopt.backends.profiles import select_profile

        idx = select_profile(self.profiles, batch, seq) if self.profiles else 0
        if idx < 0:
            spans = "; ".join(p.spec() for p in self.profiles)
            raise BertoptError(f"{self.path}: shape batch={batch} seq={seq} is outside the engine's profiles ({spans})",
                               hint="tokenize with truncation to the engine's max sequence length / split batches, or rebuild with a wider --profile")
        if idx != self._profile:
            try:
                self._runner.set_profile(idx)
            except PolygraphyException:
                raise BertoptError(f"{self.path}: TensorRT refused optimization profile {idx}", hint="rebuild the engine") from None
            self._profile = idx

    def _host_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BertoptError(f"{self.path}: the engine needs input(s) {', '.join(missing)}", hint="feed " + ", ".join(self.input_names))
        first = feeds[self.input_names[0]]
        self._select_profile(int(first.shape[0]), int(first.shape[1]))
        return {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names}

    def _infer(self, feeds: dict, **kw) -> dict:
        from polygraphy.exception import PolygraphyException

        try:
            return self._runner.infer(feeds, **kw)
        except PolygraphyException as e:
            raise BertoptError(f"{self.path}: TensorRT execution failed ({str(e)[:300]})", hint="check the input shapes against the engine's profiles, or rebuild the engine on this GPU") from None

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._infer(self._host_feeds(feeds))
        # TrtRunner reuses its output buffers between calls: copy (and widen FP16) before returning
        return {k: np.array(v, dtype=np.float32 if v.dtype == np.float16 else v.dtype) for k, v in out.items()}

    def run_device_only(self, feeds: dict[str, np.ndarray]) -> None:
        """Execute without host<->device copies (inputs uploaded once per distinct feeds)."""
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        key = tuple((id(feeds[n]), feeds[n].shape) for n in self.input_names if n in feeds)
        if key != self._staged:
            for name, arr in self._host_feeds(feeds).items():
                buf = self._device.get(name)
                if buf is None:
                    buf = self._device[name] = cuda.DeviceArray(shape=arr.shape, dtype=DataType.from_dtype(arr.dtype))
                buf.resize(arr.shape)
                buf.copy_from(arr)
            self._staged = key
        else:
            first = feeds[self.input_names[0]]
            self._select_profile(int(first.shape[0]), int(first.shape[1]))
        # device inputs are used in place ("If the provided inputs already reside in GPU memory, no additional
        # copies are made"); infer() synchronizes its stream before returning
        self._infer(dict(self._device), check_inputs=False, copy_outputs_to_host=False)

    def time(self, feeds: dict[str, np.ndarray], iters: int = 50, warmup: int = 10, copies: bool = True) -> np.ndarray:
        """Latencies (ms) of ``iters`` calls, with (``copies``) or without host<->device copies."""
        fn = self.__call__ if copies else self.run_device_only
        for _ in range(warmup):
            fn(feeds)
        ts = np.empty(iters)
        for i in range(iters):
            t = time.perf_counter()
            fn(feeds)
            ts[i] = (time.perf_counter() - t) * 1000
        return ts

    def close(self) -> None:
        for buf in self._device.values():
            buf.free()
        self._device.clear()
        self._runner.deactivate()
