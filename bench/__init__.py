"""seqbench: a benchmark and comparison suite for sequence architectures on long dependencies.

The source folders bench/ and tasks/ install as `seqbench` and `seqbench.tasks`. Until 0.2 they were
imported as `bench` and `tasks`; those names are deprecated (importing them from a source checkout
warns) and will go.
"""

__version__ = "0.2.0"

if __name__ != "seqbench":  # imported by its folder name from a checkout, the pre-0.2 way
    import warnings

    warnings.warn("`import bench` is deprecated: the package is `seqbench` since 0.2 "
                  "(pip install -e . installs it)", DeprecationWarning, stacklevel=2)
