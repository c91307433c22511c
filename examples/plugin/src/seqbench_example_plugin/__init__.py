"""An example seqbench plug-in: the majority task (majority.py) and the minGRU family (mingru.py),
registered as entry points in pyproject.toml; see README.md."""
