"""bertopt: a model compilation toolchain for BERT-family encoders."""

__version__ = "0.2.0"
