"""Training, evaluation, metrics and the leaderboard."""
