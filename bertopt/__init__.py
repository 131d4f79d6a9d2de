"""bertopt: a model compilation toolchain for BERT-family encoders."""

__version__ = "0.1.0"
