"""bertopt: a model compilation toolchain for BERT-family encoders."""

__version__ = "0.2.0"

__all__ = ["load", "__version__"]


def load(path, threads: int | None = None):
    """Open an artifact (or HF folder) for ``encode``/``predict``; see :mod:`bertopt.api`.

    Imported lazily, so ``import bertopt`` (and ``bertopt --help``) stays free of torch/onnxruntime."""
    from bertopt.api import load as _load

    return _load(path, threads=threads)
