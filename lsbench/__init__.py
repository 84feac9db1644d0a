"""lsbench: local-scale robustness benchmark — datasets, DEC models, metrics, leaderboard."""

__version__ = "0.1.0"
