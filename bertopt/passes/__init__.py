"""Graph-surgeon fusion passes: one pass per file, the order per target in ``pipeline.py``, the stage in ``stage.py``.

A pass is a function ``run(graph, ctx) -> int`` that rewrites an ``onnx_graphsurgeon.Graph`` in
place and returns how many times it fired; when a candidate fails a guard it calls
``ctx.miss("which guard failed")`` so that ``bertopt fuse --verbose`` can say why a pass fired zero
times. Nothing heavy is imported here: ``bertopt fuse --help`` must stay fast.
"""
