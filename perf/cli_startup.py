"""How long ``lsbench`` commands that need no model take to start and finish, written to JSON.

The CLI imports torch only for commands that run a model (train, evaluate, study run, models);
``--help``, ``info``, ``validate``, ``preview``, ``generate mnist`` and ``leaderboard`` do not (tested in
``tests/test_cli_startup.py``).  Measured here, each command ``--repeats`` times in a fresh process
(min and median wall time), beside two references in the same run: a bare ``python -c pass`` (the
interpreter's own start) and ``python -c "import torch"`` (what every command paid before).  The
issue's goal: ``lsbench info`` on the demo set under 0.5 s.

Usage: ``python perf/cli_startup.py [--repeats 7]``.  Writes ``perf/results/cli_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lsbench import __version__


def timed(cmd: list[str], repeats: int, cwd: Path) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"min_s": round(min(times), 3), "median_s": round(statistics.median(times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json")
    args = ap.parse_args()
    py = sys.executable
    lsb = [py, "-m", "lsbench.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The demo's first dataset (make demo: 1000 train / 500 test in shards of 250).
        subprocess.run([*lsb, "generate", "mnist", "--out", "ds", "--train", "1000", "--test", "500",
                        "--shard-size", "250", "-q"], cwd=tmp, check=True)
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "lsbench --help": [*lsb, "--help"],
            "lsbench info": [*lsb, "info", "ds"],
            "lsbench validate": [*lsb, "validate", "ds"],
        }
        generate = [*lsb, "generate", "mnist", "--train", "1", "--test", "5", "-q", "--out"]
        results = {}
        for name, cmd in commands.items():
            results[name] = timed(cmd, args.repeats, tmp)
            print(f"{name}: {results[name]}", file=sys.stderr)
        runs = [timed([*generate, f"six-{i}"], 1, tmp)["min_s"] for i in range(args.repeats)]  # a new folder each
        results["lsbench generate mnist (6 images)"] = {"min_s": min(runs),
                                                         "median_s": round(statistics.median(runs), 3)}
    info = results["lsbench info"]["min_s"]
    report = {
        "benchmark": "cli_startup", "lsbench_version": __version__,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "repeats": args.repeats, "commands": results,
        "goal_info_s": 0.5, "info_min_s": info, "goal_met": info < 0.5,
        "info_over_import_torch": round(info / results["python -c 'import torch'"]["min_s"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
