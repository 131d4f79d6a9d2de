"""``bertopt compress``: a smaller student (fewer layers, fewer FFN neurons) distilled from the teacher."""
