"""Clean-up 1: constant folding and shape-subgraph simplification.

onnx-graphsurgeon's ``fold_constants`` evaluates every subgraph whose inputs are all constant
(Constant nodes, weight transposes, exporter arithmetic on constants) and, with ``fold_shapes``,
the ``Shape -> Gather/Slice`` chains that only read static dims; ``cleanup`` then drops what no
output needs. Fires = nodes removed.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from bertopt.passes.common import PassContext

NAME = "fold_constants"
FAMILY = "cleanup"
# Folding must not blow a small broadcast up into a huge constant (e.g. an Expand of a mask).
SIZE_THRESHOLD = 256 << 20


def run(graph: gs.Graph, ctx: PassContext) -> int:
    before = len(graph.nodes)
    graph.fold_constants(fold_shapes=True, error_ok=True, size_threshold=SIZE_THRESHOLD)
    graph.cleanup(remove_unused_graph_inputs=False)
    removed = before - len(graph.nodes)
    if removed == 0:
        ctx.miss("no node has only constant inputs or static-shape inputs")
    return removed
