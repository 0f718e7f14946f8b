"""lrfr: low-resolution face recognition toolkit."""

__version__ = "0.1.0"
