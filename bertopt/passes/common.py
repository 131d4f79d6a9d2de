"""What the passes share: small graph helpers, the pass context, and the probe.

The probe runs the graph under rewrite on ONNX Runtime (its own optimizations disabled) with small
synthetic inputs and returns intermediate tensors. Passes use it as a guard where structure alone
cannot prove a rewrite right: the layout of the Q/K/V reshapes, the scale, and whether an exporter's
mask subgraph is a plain key-padding mask all differ between exporters (legacy, dynamo; eager, sdpa),
so the attention pass matches the structure loosely and then checks the numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertopt.graph import MS_DOMAIN, ort_session

# Probe shapes: symbolic dims on axis 0 get PROBE_BATCH, on axis 1 PROBE_SEQ, elsewhere 3.
PROBE_BATCH = 2
PROBE_SEQ = 7
# ORT cannot load models whose IR version is newer than this.
MAX_IR_VERSION = 10


# --------------------------------------------------------------------------------------- tensors
def producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) else None


def is_op(node: gs.Node | None, op: str | Sequence[str], domain: str = "") -> bool:
    if node is None:
        return False
    ops = (op,) if isinstance(op, str) else tuple(op)
    return node.op in ops and (node.domain or "") in ((domain,) if domain else ("", "ai.onnx"))


def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (an initializer or a Constant node's output), else None."""
    if t is None:
        return None
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    p = producer(t)
    if p is not None and p.op == "Constant" and "value" in p.attrs:
        v = p.attrs["value"]
        return np.asarray(v.values) if isinstance(v, gs.Constant) else np.asarray(v)
    return None


def scalar_value(t: gs.Tensor | None) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(-1)[0])


def other_input(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is t and b is not t:
        return b
    if b is t and a is not t:
        return a
    return None


def single_use(graph: gs.Graph, t: gs.Tensor) -> bool:
    """True when ``t`` feeds exactly one node and is not a graph output (safe to fold away)."""
    return len(t.outputs) == 1 and t not in graph.outputs


def bypass(graph: gs.Graph, node: gs.Node, keep: gs.Tensor | None = None) -> bool:
    """Remove a one-in/one-out node by wiring its consumers to ``keep`` (default: its first input)."""
    x = keep if keep is not None else node.inputs[0]
    y = node.outputs[0]
    if y in graph.outputs:
        if x in graph.inputs or x in graph.outputs or isinstance(x, gs.Constant):
            return False
        # Keep the graph output's name: the producer of x now writes y.
        for c in list(x.outputs):
            for i, inp in enumerate(c.inputs):
                if inp is x:
                    c.inputs[i] = y
        px = producer(x)
        node.outputs.clear()
        if px is None:
            return False
        px.outputs = [y if o is x else o for o in px.outputs]
        return True
    for c in list(y.outputs):
        for i, inp in enumerate(c.inputs):
            if inp is y:
                c.inputs[i] = x
    node.outputs.clear()
    return True


def take_over(out: gs.Variable, node: gs.Node) -> None:
    """Make ``node`` the producer of ``out`` (its old producer loses it and is cleaned up later)."""
    out.inputs.clear()
    node.outputs = [out]


def int32_cast(graph: gs.Graph, t: gs.Tensor, cache: dict) -> gs.Variable:
    """One Cast(t -> int32) per tensor and ``cache`` (a pass shares one over the graph, e.g. the attention mask)."""
    if t.name not in cache:
        out = gs.Variable(f"{t.name}_int32", dtype=np.int32, shape=t.shape)
        graph.nodes.append(gs.Node("Cast", name=f"{t.name}_to_int32", attrs={"to": onnx.TensorProto.INT32}, inputs=[t], outputs=[out]))
        cache[t.name] = out
    return cache[t.name]


def ancestors(t: gs.Tensor, limit: int = 10_000) -> tuple[set[int], list[gs.Tensor]]:
    """(ids of the nodes ``t`` depends on, the non-constant graph-input-like leaves it reaches)."""
    seen: set[int] = set()
    leaves: list[gs.Tensor] = []
    stack = [t]
    visited_t: set[int] = set()
    while stack and len(seen) < limit:
        cur = stack.pop()
        if id(cur) in visited_t:
            continue
        visited_t.add(id(cur))
        p = producer(cur)
        if p is None:
            if not isinstance(cur, gs.Constant):
                leaves.append(cur)
            continue
        if id(p) in seen:
            continue
        seen.add(id(p))
        stack.extend(p.inputs)
    return seen, leaves


def import_domains(graph: gs.Graph) -> dict[str, int]:
    """The graph's opset imports as {domain: version} ('' is ai.onnx)."""
    out = {}
    for d in graph.import_domains or []:
        out["" if d.domain == "ai.onnx" else d.domain] = d.version
    out.setdefault("", graph.opset)
    return out


def opset_of(graph: gs.Graph, domain: str = "") -> int:
    return import_domains(graph).get(domain, 0)


def ensure_ms_domain(graph: gs.Graph) -> None:
    if MS_DOMAIN not in import_domains(graph):
        graph.import_domains = list(graph.import_domains or []) + [onnx.helper.make_opsetid(MS_DOMAIN, 1)]


# --------------------------------------------------------------------------------------- context
@dataclass
class PassContext:
    """What a pass may read and report besides the graph."""

    target: str
    ir_version: int = 8
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    misses: dict[str, Counter] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)
    current: str = ""
    probe_runs: int = 0

    def miss(self, reason: str) -> None:
        """Record that a candidate failed a guard (reported by --verbose when the pass fired 0 times)."""
        self.misses.setdefault(self.current, Counter())[reason] += 1

    def values(self, graph: gs.Graph, tensors: Iterable[gs.Tensor]) -> dict[str, np.ndarray] | None:
        """Run the graph on the probe feeds and return the tensors' values by name.

        None when ONNX Runtime cannot run the graph (recorded as a miss for every candidate): a
        pass then leaves the graph alone instead of guessing.
        """
        self.probe_runs += 1
        tensors = list(tensors)
        try:
            return tensor_values(graph, tensors, self.feeds, self.ir_version)
        except Exception as e:  # noqa: BLE001 - ORT's reasons vary; the miss carries its message
            msg = str(e).split("Status Message:")[-1].strip().splitlines()[0][-160:] if str(e) else ""
            self.miss(f"probe run failed ({type(e).__name__}: {msg})")
            return None


# --------------------------------------------------------------------------------------- probe
def probe_feeds(graph: gs.Graph, batch: int = PROBE_BATCH, seq: int = PROBE_SEQ, seed: int = 0) -> dict[str, np.ndarray]:
    """Small synthetic inputs for every graph input, with padding in the attention mask.

    Symbolic dims become ``batch`` (axis 0) / ``seq`` (axis 1) / 3; integer inputs consumed by a
    ``Gather`` stay inside that table; ``*mask*`` inputs get right padding on rows after the first;
    ``*token_type*``/``*segment*`` inputs get two segments.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in graph.inputs:
        shape = []
        for axis, d in enumerate(t.shape or []):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                shape.append(batch if axis == 0 else seq if axis == 1 else 3)
        dtype = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
        name = t.name.lower()
        if dtype.kind in "iub":
            if "mask" in name:
                v = np.ones(shape, dtype=np.int64)
                if len(shape) == 2:  # row b pads its last 2b positions (a static batch of 1 pads 2)
                    for b in range(shape[0]):
                        pad = 2 * b if shape[0] > 1 else 2
                        if pad:
                            v[b, max(1, shape[1] - pad):] = 0
            elif "token_type" in name or "segment" in name:
                v = np.zeros(shape, dtype=np.int64)
                if len(shape) == 2:
                    v[:, shape[1] // 2 :] = 1
            elif "position" in name and len(shape) == 2:
                v = np.broadcast_to(np.arange(shape[1]), shape).copy()
            else:
                hi = _gather_bound(t) or 100
                v = rng.integers(min(1, hi - 1), hi, size=shape)
            feeds[t.name] = v.astype(dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _gather_bound(t: gs.Tensor) -> int | None:
    bounds = []
    for c in t.outputs:
        if c.op == "Gather" and len(c.inputs) > 1 and c.inputs[1] is t:
            data = const_value(c.inputs[0])
            if data is not None:
                bounds.append(data.shape[int(c.attrs.get("axis", 0))])
    return min(bounds) if bounds else None


def to_model(graph: gs.Graph, ir_version: int) -> onnx.ModelProto:
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = min(ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    return model


def session(model: onnx.ModelProto | str | Path, optimize: bool = False, threads: int | None = None):
    """An ORT CPU session; by default with ORT's graph optimizations disabled (ours must stand alone)."""
    return ort_session(model, "ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL", threads)


def tensor_values(graph: gs.Graph, tensors: list[gs.Tensor], feeds: dict[str, np.ndarray], ir_version: int = 8) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    wanted = []
    for t in tensors:
        v = const_value(t)
        if v is not None:
            out[t.name] = v
        elif t.name in feeds:
            out[t.name] = feeds[t.name]
        elif t.name not in {w.name for w in wanted}:
            wanted.append(t)
    if not wanted:
        return out
    old = list(graph.outputs)
    try:
        graph.outputs = old + [t for t in wanted if t not in old]
        model = to_model(graph, ir_version)
    finally:
        graph.outputs = old
    for vi in model.graph.output:  # untyped extra outputs: let ORT infer them
        if vi.name in {t.name for t in wanted} and vi.type.tensor_type.elem_type == 0:
            vi.ClearField("type")
    sess = session(model)
    names = [t.name for t in wanted]
    vals = sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})
    out.update(dict(zip(names, vals)))
    return out


# --------------------------------------------------------------------------------------- elementwise
_UNARY = {
    "Erf": None,  # filled lazily (math.erf is scalar)
    "Tanh": np.tanh,
    "Sqrt": np.sqrt,
    "Neg": np.negative,
    "Reciprocal": np.reciprocal,
    "Identity": lambda x: x,
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}


def erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def eval_elementwise(nodes: Sequence[gs.Node], x: gs.Tensor, xv: np.ndarray, out: gs.Tensor) -> np.ndarray | None:
    """Evaluate a small elementwise region (topologically ordered) with ``x = xv``; None if not elementwise."""
    env: dict[int, np.ndarray] = {id(x): xv}
    for n in nodes:
        args = []
        for t in n.inputs:
            if id(t) in env:
                args.append(env[id(t)])
            else:
                v = const_value(t)
                if v is None or v.size != 1:
                    return None
                args.append(np.float64(v.reshape(-1)[0]))
        if n.op == "Erf" and len(args) == 1:
            r = erf(args[0])
        elif n.op in _UNARY and len(args) == 1:
            r = _UNARY[n.op](args[0])
        elif n.op in _BINARY and len(args) == 2:
            r = _BINARY[n.op](args[0], args[1])
        else:
            return None
        env[id(n.outputs[0])] = np.asarray(r, dtype=np.float64)
    return env.get(id(out))


def gelu_exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def toposorted(nodes: Iterable[gs.Node]) -> list[gs.Node]:
    """Order a small node set so that producers come first (within the set)."""
    nodes = list(nodes)
    ids = {id(n) for n in nodes}
    done: set[int] = set()
    order: list[gs.Node] = []

    def visit(n: gs.Node) -> None:
        if id(n) in done:
            return
        done.add(id(n))
        for t in n.inputs:
            p = producer(t)
            if p is not None and id(p) in ids:
                visit(p)
        order.append(n)

    for n in nodes:
        visit(n)
    return order
