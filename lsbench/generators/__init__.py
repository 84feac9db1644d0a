"""Dataset generators: each writes a dataset folder (:mod:`lsbench.dataset`, :mod:`lsbench.shards`).

Every generator is a package of the same shape: ``config.py`` (its config dataclass — the options
of ``lsbench generate NAME``, declared once), ``pipeline.py`` (``generate(config, out, run)``,
the groups of samples of one shard) and its stage modules; :mod:`.runner` builds any of them from
:class:`~.runner.RunOptions` (workers, shard size, overwrite, progress).
"""
