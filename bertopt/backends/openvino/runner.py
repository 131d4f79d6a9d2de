"""Run an OpenVINO artifact from numpy feeds: the smallest static bucket holding the call without padding it much,
else the dynamic model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from bertopt.backends.openvino import CACHE_DIR, IR_FILE
from bertopt.backends.openvino.compile import checked_properties, compile_for, core, properties, read_ir
from bertopt.backends.openvino.shapes import Bucket, pads_too_much, select_bucket
from bertopt.errors import BertoptError


class OpenVINORunner:
    """``runner(feeds) -> {output: array}`` for int64 ``[batch, seq]`` feeds.

    Every bucket is compiled when the runner opens (from the blobs cached in the artifact: fast); the
    dynamic model when a call fits no bucket (``fallbacks`` counts those calls) or when its bucket would pad it
    more than :func:`.shapes.pads_too_much` allows (``padding_fallbacks``: e.g. 8 short texts and only 8x128). Padding: pad id 0,
    attention mask 0 (padded rows keep one unmasked token, so no row is all-masked); outputs with a
    sequence axis are cut back to the call's length, every output to its batch.
    """

    def __init__(self, xml: Path, buckets: Sequence[Bucket] = (), props: dict | None = None, cache_dir: Path | None = None):
        import openvino  # noqa: F401 - fail here, not in a worker thread

        self.path = Path(xml)
        self._core = core(cache_dir if cache_dir is not None and cache_dir.is_dir() else None)
        self._model = read_ir(self._core, self.path)
        self.props = props or properties(2)
        self.input_names = [i.get_any_name() for i in self._model.inputs]
        self.output_names = [o.get_any_name() for o in self._model.outputs]
        # outputs whose axis 1 is the (dynamic) sequence axis: cut back after padding
        self._seq_outputs = {o.get_any_name() for o in self._model.outputs
                             if o.get_partial_shape().rank.get_length() >= 2 and o.get_partial_shape()[1].is_dynamic}
        self.buckets = sorted(buckets, key=lambda b: (b.batch * b.seq, b.seq))
        self._compiled: dict[Bucket | None, object] = {b: compile_for(self._core, self._model, b, self.props, self.path) for b in self.buckets}
        if not self.buckets:
            self._compiled[None] = compile_for(self._core, self._model, None, self.props, self.path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.fallbacks = 0
        self.padding_fallbacks = 0

    @property
    def ir(self):
        """The ``openvino.Model`` read from the IR (before any reshape)."""
        return self._model

    @classmethod
    def from_artifact(cls, art, threads: int | None = None) -> "OpenVINORunner":
        from bertopt.backends.openvino.shapes import recorded_buckets

        build = art.manifest.get("build", {})
        source = str(art.path / "manifest.json")
        props = checked_properties(build.get("compile_properties") or properties(threads or 2), threads, source)
        buckets = recorded_buckets(build.get("buckets") or [], int(art.model_info.get("max_length") or 512), source)
        return cls(art.path / IR_FILE, buckets, props, art.path / CACHE_DIR)

    def compiled(self, bucket: Bucket | None):
        """The compiled model of ``bucket`` (None: the dynamic one, compiled on first use)."""
        got = self._compiled.get(bucket)
        if got is None:
            with self._lock:
                got = self._compiled.get(bucket)
                if got is None:
                    got = self._compiled[bucket] = compile_for(self._core, self._model, bucket, self.props, self.path)
        return got

    def _request(self, bucket: Bucket | None):
        """One infer request per (thread, compiled model): requests are not safe to share between threads."""
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = {}
        if bucket not in reqs:
            reqs[bucket] = self.compiled(bucket).create_infer_request()
        return reqs[bucket]

    def __call__(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BertoptError(f"{self.path}: the model needs input(s) {', '.join(missing)}", hint="feed " + ", ".join(self.input_names))
        batch, seq = (int(d) for d in feeds[self.input_names[0]].shape)
        bucket = select_bucket(self.buckets, batch, seq) if self.buckets else None
        if bucket is None and self.buckets:
            self.fallbacks += 1
        elif bucket is not None and pads_too_much(bucket, batch, seq):
            self.padding_fallbacks += 1
            bucket = None
        return self.run_on(bucket, feeds, outputs)

    def run_on(self, bucket: Bucket | None, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``feeds`` on ``bucket``'s compiled model (padded to it), or on the dynamic model (None); return
        ``outputs`` (default: all)."""
        batch, seq = (int(d) for d in feeds[self.input_names[0]].shape)
        inputs = {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in self.input_names}
        if bucket is not None:
            inputs = {n: _pad(a, bucket, mask=n == "attention_mask") for n, a in inputs.items()}
        req = self._request(bucket)
        try:
            res = req.infer(inputs, share_inputs=True, share_outputs=True)
        except RuntimeError as e:
            raise BertoptError(f"{self.path}: OpenVINO inference failed at batch={batch} seq={seq} ({str(e).splitlines()[-1][:300]})",
                               hint="check the feeds' shapes and dtypes (int64 [batch, seq])") from None
        out = {}
        for port, name in zip(req.model_outputs, self.output_names):
            if outputs is not None and name not in outputs:
                continue
            a = res[port]
            if bucket is not None:
                a = a[:batch, :seq] if name in self._seq_outputs else a[:batch]
            out[name] = np.array(a)  # one copy: the request reuses its output buffers on the next call
        return out


def _pad(a: np.ndarray, bucket: Bucket, mask: bool) -> np.ndarray:
    b, s = a.shape
    if (b, s) == (bucket.batch, bucket.seq):
        return a
    out = np.zeros((bucket.batch, bucket.seq), dtype=np.int64)
    out[:b, :s] = a
    if mask:
        out[b:, 0] = 1
    return out
