"""``bertopt fuse``: the ordered pass list per target and :class:`FuseReport` (the stage: :mod:`bertopt.passes.stage`).

The order, and why:

1. ``fold_constants``, ``remove_noops`` - every later pattern expects constants to be constants
   (sqrt(2), epsilon, weights the exporter transposed at run time) and no Identity/no-op Cast in
   the middle of a pattern.
2. ``layernorm`` - decomposed LayerNorm -> opset-17 LayerNormalization; ``skip_layernorm`` and
   ``embed_layernorm`` start from that op.
3. ``gelu`` before ``bias_gelu``: the bias is folded into the fused Gelu, not into the pattern.
4. ``attention`` (onnxruntime) / ``attention_standard`` (tensorrt): independent of 2-3; its mask
   subgraph dies here, so it runs before the embedding pass that shares ``attention_mask``.
5. ``qkv_bias`` right after ``attention``: the Q/K/V bias Adds the new MultiHeadAttention
   reads go into its bias input (added during its head reordering, a copy it makes anyway).
6. ``embed_layernorm`` before ``skip_layernorm``: the embedding sum is also an Add feeding a
   LayerNormalization, which the skip pass would otherwise take.

After every pass the graph is cleaned up (dead nodes dropped) and topologically sorted.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

from bertopt.errors import BertoptError
from bertopt.graph import op_counts, opset_version
from bertopt.passes.options import ORT_FUSIONS, TARGETS


# Fused com.microsoft ops that ONNX Runtime's CPU kernels run slower than the ops they replace
# (measured with `benchmarks/fuse_vs_ort_optimizer.py --kernels`; re-measure after an ONNX Runtime upgrade).
# With ort_fusions="measured" (the default) these passes are not run and keep_fast_kernels stops ORT's
# session optimizer from doing them.
SLOWER_ON_ORT_CPU = {
    "skip_layernorm": "ORT's CPU SkipLayerNormalization kernel is ~5x slower than Add + LayerNormalization (measured)",
    "embed_layernorm": "ORT's CPU EmbedLayerNormalization kernel is 1.4-1.7x slower than Gather/Add + LayerNormalization (measured)",
    "bias_gelu": "ORT's CPU BiasGelu kernel is 1.1-1.5x slower than Add + Gelu (measured)",
}


def pass_modules(target: str, ort_fusions: str = "measured") -> list[ModuleType]:
    """The passes for ``target``, in order (see the module docstring for why this order)."""
    from bertopt.passes import (
        attention,
        attention_standard,
        bias_gelu,
        embed_layernorm,
        fold_constants,
        gelu,
        keep_fast_kernels,
        layernorm,
        qkv_bias,
        remove_noops,
        skip_layernorm,
    )

    if target == "onnxruntime":
        mods = [fold_constants, remove_noops, layernorm, gelu, bias_gelu, attention, qkv_bias, embed_layernorm, skip_layernorm]
        if ort_fusions == "measured":
            mods = [m for m in mods if m.NAME not in SLOWER_ON_ORT_CPU] + [keep_fast_kernels]
        return mods
    if target == "tensorrt":
        return [fold_constants, remove_noops, layernorm, gelu, attention_standard]
    raise _bad_target(target)


def _bad_target(target: str) -> BertoptError:
    return BertoptError(f"--target: unknown target '{target}'", hint="choose one of: " + ", ".join(TARGETS))


@dataclass
class FuseReport:
    target: str
    passes: dict[str, int] = field(default_factory=dict)
    misses: dict[str, dict[str, int]] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # pass -> why it was left out

    def zero_fired(self) -> dict[str, dict[str, int]]:
        """Passes that fired zero times (or were left out) -> {why: how many candidates}."""
        out = {name: self.misses.get(name, {}) for name, n in self.passes.items() if n == 0}
        out.update({name: {f"not run: {why}": 0} for name, why in self.not_run.items()})
        return out

    def as_metrics(self) -> dict:
        return {
            "passes": dict(self.passes),
            "misses": {k: dict(v) for k, v in self.misses.items() if v},
            "expected": dict(self.expected),
            "not_run": dict(self.not_run),
            "warnings": list(self.warnings),
            "ops_before": dict(self.ops_before),
            "ops_after": dict(self.ops_after),
        }


# ----------------------------------------------------------------------------------- the passes
def fuse_model(model, target: str = "onnxruntime", *, options: dict | None = None, on_pass: Callable[[str], None] | None = None):
    """Run the pass list for ``target`` on an ``onnx.ModelProto``: (fused ModelProto, FuseReport).

    ``options`` (onnxruntime target): ``attention_op``: "MultiHeadAttention" (default) | "Attention";
    ``ort_fusions``: "measured" (default: only the fusions that are faster on ORT's CPU kernels) |
    "all" (every com.microsoft fusion, including SkipLayerNormalization, BiasGelu and
    EmbedLayerNormalization); ``disable``: pass names not to run (to measure what a pass buys).
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    from bertopt.passes.common import PassContext, opset_of, probe_feeds, to_model

    if target not in TARGETS:
        raise _bad_target(target)
    if (options or {}).get("ort_fusions", "measured") not in ORT_FUSIONS:
        raise BertoptError(f"ort_fusions: unknown value '{options['ort_fusions']}'", hint="one of: " + ", ".join(ORT_FUSIONS))
    G_LOGGER.severity = G_LOGGER.ERROR
    report = FuseReport(target=target, ops_before=op_counts(model))
    ir_version = max(int(model.ir_version or 8), 8)
    model = _upgrade_opset(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are a help, not a requirement (e.g. > 2 GB)
        pass
    graph = gs.import_onnx(model)
    del model
    options = dict(options or {})
    ort_fusions = options.pop("ort_fusions", "measured")
    disabled = set(options.pop("disable", ()))
    ctx = PassContext(target=target, ir_version=ir_version, feeds=probe_feeds(graph))
    ctx.info.update(options)
    modules = [m for m in pass_modules(target, ort_fusions) if m.NAME not in disabled]
    if target == "onnxruntime" and ort_fusions == "measured":
        report.not_run = dict(SLOWER_ON_ORT_CPU)
    counted = False
    for mod in modules:
        if on_pass:
            on_pass(mod.NAME)
        if not counted and mod.FAMILY != "cleanup":  # after the clean-up passes: what the families should find
            report.expected = _expected(graph, target, opset_of(graph))
            counted = True
        ctx.current = mod.NAME
        t0 = time.perf_counter()
        n = int(mod.run(graph, ctx))
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        report.passes[mod.NAME] = report.passes.get(mod.NAME, 0) + n
        report.seconds[mod.NAME] = round(time.perf_counter() - t0, 3)
    report.misses = {k: dict(v.most_common()) for k, v in ctx.misses.items()}
    report.info = {k: v for k, v in ctx.info.items() if k in ("num_heads", "hidden_size")}
    report.info["probe_runs"] = ctx.probe_runs
    out = to_model(graph, ir_version)
    report.ops_after = op_counts(out)
    report.warnings = _family_warnings(report)
    return out, report


def _upgrade_opset(model):
    """Opset < 17 -> 17 (LayerNormalization; Unsqueeze axes as input). The ops in between only gained types."""
    import onnx

    ver = opset_version(model)
    if ver >= 17:
        return model
    try:
        return onnx.version_converter.convert_version(model, 17)
    except Exception as e:  # noqa: BLE001
        if ver < 13:
            raise BertoptError(
                f"the model uses opset {ver} and could not be converted to opset 17 ({type(e).__name__}: {str(e)[:160]})",
                hint="re-export with opset 17 (`bertopt export` does)",
            ) from None
        for o in model.opset_import:  # 13..16 -> 17: no op used by these encoders changed meaning
            if o.domain in ("", "ai.onnx"):
                o.version = 17
        return model


def _expected(graph, target: str, opset: int) -> dict[str, int]:
    """How many of each family the cleaned input graph holds (to say so when a family misses)."""
    from bertopt.passes.common import scalar_value

    softmax = sum(n.op == "Softmax" for n in graph.nodes)
    gelu = sum(
        1
        for n in graph.nodes
        if n.op in ("Erf", "Tanh") and n.outputs and any(c.op == "Add" and any(abs((scalar_value(i) or 0) - 1) < 1e-6 for i in c.inputs) for c in n.outputs[0].outputs)
    )
    ln = sum(1 for n in graph.nodes if n.op == "ReduceMean" and n.outputs and any(c.op == "Sub" for c in n.outputs[0].outputs))
    out = {"attention": softmax, "layernorm": ln}
    if target == "onnxruntime" or opset >= 20:
        out["gelu"] = gelu
    return out


FAMILY_PASS = {"attention": ("attention", "attention_standard"), "layernorm": ("layernorm",), "gelu": ("gelu",)}


def _family_warnings(report: FuseReport) -> list[str]:
    out = []
    for fam, want in report.expected.items():
        got = sum(report.passes.get(p, 0) for p in FAMILY_PASS[fam])
        if want and got < want:
            reasons = Counter()
            for p in FAMILY_PASS[fam]:
                reasons.update(report.misses.get(p, {}))
            why = "; ".join(f"{r} (x{n})" for r, n in reasons.most_common(3)) or "no candidate matched"
            out.append(f"{fam}: fused {got} of {want} in the model ({why})")
    return out


def zero_fired_lines(report: FuseReport) -> list[str]:
    """One line per pass that fired zero times (or was left out), with the guards that failed."""
    out = []
    for name, why in report.zero_fired().items():
        reasons = "; ".join(f"{r} (x{n})" if n else r for r, n in why.items()) or "no candidate in the graph"
        out.append(f"{name}: fired 0 times: {reasons}")
    return out


