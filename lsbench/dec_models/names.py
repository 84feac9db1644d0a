"""The built-in method names as data, importable without torch.

The leaderboard splits ``{arch}_{method}`` result names with them, and ``lsbench leaderboard`` must
not pay for importing torch (:mod:`.methods`, which registers these methods, needs it).  A test
keeps this tuple equal to the registry's names.
"""

METHOD_NAMES = ("base", "aug", "canon", "invl", "augl", "dec")
