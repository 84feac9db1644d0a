"""Dataset generators: each writes a dataset folder following :mod:`lsbench.shards`."""
