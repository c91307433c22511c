"""seqbench: a benchmark and comparison suite for sequence architectures on long dependencies."""

__version__ = "0.1.0"
