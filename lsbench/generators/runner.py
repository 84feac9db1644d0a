"""Build a dataset folder shard by shard: resumable, atomic, parallel, multi-node.

Every generator describes its dataset as splits of numbered samples and a picklable function
that produces the samples of one shard (:class:`~lsbench.shards.ShardSpec`) from the config
alone; how to build it is :class:`RunOptions`, the same for every generator.  This module does
the rest, the same way for every generator:

- work is partitioned by shard: local worker processes (``workers``) and, across machines,
  ``RANK``/``WORLD_SIZE`` (torchrun) or ``SLURM_PROCID``/``SLURM_NTASKS``; rank ``r`` of ``w``
  owns shards ``r, r + w, ...`` and writes its own partial manifest, which
  :func:`merge_manifests` joins;
- a rerun with the same config verifies finished shards by size and sha256 and redoes only the
  rest; a different config is refused unless ``overwrite``;
- Ctrl-C / SIGTERM / a full disk keep every finished shard and leave no partial file.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing as mp
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..card import CROISSANT, DATASHEET, is_datasheet
from ..dataset import MANIFEST, new_manifest, read_manifest, split_entry
from ..errors import ConfigError, DatasetError, Interrupted, ManifestError
from ..lock import LOCK_NAME, FolderLock, describe_holder, is_lock_file, lock_folder, rank_lock_name
from ..options import check_ranges, option
from ..processes import die_with_parent
from ..shards import SHARD_RE, ShardRecord, ShardSpec, plan_shards, remove_stale_temporaries, write_shard
from ..util import TMP_MARK, sha256_file, write_json_atomic
from .cards import write_dataset_card

MakeShard = Callable[[ShardSpec], Iterable[dict[str, Any]]]
Progress = Callable[[int, int], None]  # (samples finished, samples total) for this process


@dataclass(frozen=True)
class RunOptions:
    """How a dataset is built, not what it holds (the generator's config says that): the same
    for every generator.  ``shard_size`` ``None`` takes the generator's default (its config's
    ``DEFAULT_SHARD_SIZE``); ``rank``/``world_size`` ``None`` read torchrun/SLURM variables."""

    workers: int = option(1, help="Local worker processes (shards are split between them).", min=1)
    shard_size: int | None = option(None, help="Samples per shard (rounded down to whole groups).", min=1)
    overwrite: bool = option(False, help="Replace a different dataset already in --out.")
    progress: Progress | None = option(None, cli=False)
    log: Callable[[str], None] | None = option(None, cli=False)
    rank: int | None = option(None, cli=False)
    world_size: int | None = option(None, cli=False)

    def checked(self, default_shard_size: int) -> RunOptions:
        """These options with the generator's shard size filled in, ranges checked."""
        run = self if self.shard_size is not None else replace(self, shard_size=default_shard_size)
        check_ranges(run)
        return run


@dataclass(frozen=True)
class SplitPlan:
    """One split: ``num_samples`` samples in groups of ``group_size`` (``grouped``: has references)."""

    name: str
    num_samples: int
    group_size: int = 1
    grouped: bool = False


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    manifest: Path
    shards_written: int
    shards_reused: int
    samples: int
    complete: bool  # the whole dataset is finished (always False for one rank of several)
    world_size: int = 1


def distributed_rank(env: dict[str, str] | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun (``RANK``/``WORLD_SIZE``) or SLURM variables; else (0, 1)."""
    env = os.environ if env is None else env
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if world_var in env:
            try:
                rank, world = int(env.get(rank_var, "0")), int(env[world_var])
            except ValueError as e:
                raise ConfigError(
                    f"{rank_var}/{world_var} must be integers, got {env.get(rank_var)!r}/{env[world_var]!r}"
                ) from e
            if world < 1 or not 0 <= rank < world:
                raise ConfigError(f"{rank_var}={rank} is not a valid rank for {world_var}={world}")
            return rank, world
    return 0, 1


def part_manifest_name(rank: int, world: int) -> str:
    return f"manifest.rank{rank:05d}-of-{world:05d}.json"


def _known_manifests(out: Path) -> list[Path]:
    return sorted(p for p in [out / MANIFEST, *out.glob("manifest.rank*-of-*.json")] if p.is_file())


def _identity(manifest: dict[str, Any]) -> tuple:
    # The shard size decides which samples each shard name holds, so a finished shard is only
    # reusable under the same shard size.
    return manifest.get("generator"), manifest.get("config"), manifest.get("seed"), manifest.get("shard_size")


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _clear(out: Path) -> None:
    """Remove lsbench's own files (shards, manifests, cards, temporaries) and nothing else."""
    for p in out.iterdir():
        if p.is_file() and (SHARD_RE.match(p.name) or p.name.startswith("manifest") or TMP_MARK in p.name
                            or p.name == CROISSANT or (p.name == DATASHEET and is_datasheet(p))):
            p.unlink()


def _verified_records(out: Path, manifests: list[dict[str, Any]]) -> dict[str, ShardRecord]:
    """Shard records from existing manifests whose file is present with the listed size and hash."""
    records: dict[str, ShardRecord] = {}
    for manifest in manifests:
        for entry in manifest["splits"].values():
            for rec in entry.get("shards", []):
                path = out / rec["name"]  # a name the manifest schema allows: no separators
                if (
                    not path.is_symlink()  # a symlinked shard (perhaps out of the folder) is rewritten, not reused
                    and path.is_file()
                    and path.stat().st_size == rec["bytes"]
                    and sha256_file(path) == rec["sha256"]
                ):
                    records[rec["name"]] = ShardRecord(**rec)
    return records


def _produce(make_shard: MakeShard, out: Path, spec: ShardSpec) -> ShardRecord:
    return write_shard(out / spec.name, make_shard(spec))


def output_lock(out: Path, run: RunOptions | None = None) -> FolderLock:
    """Hold the dataset folder ``out`` (:mod:`lsbench.lock`): exclusively for a single-process build or a
    merge (``run`` None); one rank of several holds its own lock and shares the folder's with the other ranks."""
    rank, world = (0, 1) if run is None else (run.rank, run.world_size)
    if rank is None or world is None:
        rank, world = distributed_rank()
    words = {"what": "dataset folder", "hint": "choose another --out"}
    if world == 1:
        return lock_folder(out, **words)
    return lock_folder(out, name=rank_lock_name(rank, world), share=LOCK_NAME, **words)


def _holding_output_lock(fn):
    """``fn(out, ...)`` with :func:`output_lock` held throughout (an ``out`` that is a file is left to
    ``fn`` to refuse)."""

    @functools.wraps(fn)
    def locked(out, *args, **kwargs):
        if Path(out).exists() and not Path(out).is_dir():
            return fn(out, *args, **kwargs)
        run = kwargs.get("run")
        with output_lock(Path(out), run) as lock:
            if lock.previous and run is not None and run.log is not None:
                run.log(f"took over the lock of a run that ended without releasing it "
                        f"({describe_holder(lock.previous)})")
            return fn(out, *args, **kwargs)

    return locked


@_holding_output_lock
def build(
    out: Path,
    *,
    name: str,
    generator: str,
    config: dict[str, Any],
    seed: int,
    splits: list[SplitPlan],
    make_shard: MakeShard,
    run: RunOptions,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> BuildResult:
    """Generate (or finish) the dataset in ``out``; see the module docstring for the guarantees.

    ``run.shard_size`` must be set (:meth:`RunOptions.checked`).  ``extra`` gives generator-specific
    top-level manifest fields once every shard is done (e.g. the ImageNet generator's yield per
    stage); they are written with the complete manifest of a single-rank run."""
    if run.shard_size is None:
        raise ConfigError("build() needs RunOptions.shard_size; use RunOptions.checked(default)")
    check_ranges(run)
    workers, shard_size, overwrite, progress = run.workers, run.shard_size, run.overwrite, run.progress
    rank, world_size = run.rank, run.world_size
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder")
    existed = out.exists()
    fresh = not existed or not any(not is_lock_file(p.name) for p in out.iterdir())
    out.mkdir(parents=True, exist_ok=True)

    existing: list[dict[str, Any]] = []
    for path in _known_manifests(out):
        try:
            existing.append(read_manifest(out, path.name))
        except ManifestError as e:
            if not overwrite:
                raise DatasetError(
                    f"{path} is unreadable ({e.reason}); pass --overwrite to replace the dataset in {out}"
                ) from None
    manifest = new_manifest(name, generator, config, seed)
    manifest["shard_size"] = shard_size
    different = [m for m in existing if _identity(m) != _identity(manifest)]
    if different and not overwrite:
        changed = _config_diff(different[0].get("config", {}), config)
        if different[0].get("shard_size") != shard_size:
            changed.append(f"--shard-size (was {different[0].get('shard_size')})")
        changed = changed or ["generator/seed"]
        raise DatasetError(
            f"{out} holds a different dataset (differs in: {', '.join(changed)}); "
            "pass --overwrite to replace it or choose another --out"
        )
    if not existing and not overwrite and any(not is_lock_file(p.name) for p in out.iterdir()):
        raise DatasetError(f"{out} is not empty and is not an lsbench dataset; choose an empty or new --out folder")
    if overwrite:
        _clear(out)
        existing = []

    specs = [
        spec
        for plan in splits
        for spec in plan_shards(plan.name, plan.num_samples, shard_size, plan.group_size)
    ]
    by_split = {plan.name: [s for s in specs if s.split == plan.name] for plan in splits}
    mine = [s for i, s in enumerate(specs) if i % world_size == rank]
    # Only this rank's own leftovers: on a shared folder other ranks may be writing theirs now.
    manifest_path = out / (MANIFEST if world_size == 1 else part_manifest_name(rank, world_size))
    remove_stale_temporaries(out, {s.name for s in mine} | {manifest_path.name})
    records = _verified_records(out, existing)
    todo = [s for s in mine if s.name not in records]
    if world_size > 1:
        manifest["rank"], manifest["world_size"] = rank, world_size

    owned = {s.name for s in mine}

    def save(complete: bool) -> None:
        keep = records if world_size == 1 else {k: v for k, v in records.items() if k in owned}
        manifest["splits"] = {
            plan.name: split_entry(plan.num_samples, plan.group_size, plan.grouped, by_split[plan.name], keep)
            for plan in splits
        }
        manifest["complete"] = complete
        if complete and world_size == 1 and extra is not None:
            manifest.update(extra())
        write_json_atomic(manifest_path, manifest)
        if complete and world_size == 1:
            write_dataset_card(out, manifest)

    total = sum(s.count for s in mine)
    done = total - sum(s.count for s in todo)
    reused = len(mine) - len(todo)
    save(complete=not todo)
    if progress:
        progress(done, total)

    def finished(rec: ShardRecord) -> None:
        nonlocal done
        records[rec.name] = rec
        done += rec.num_samples
        save(complete=len([s for s in mine if s.name in records]) == len(mine))
        if progress:
            progress(done, total)

    try:
        if workers == 1 or len(todo) <= 1:
            for spec in todo:
                finished(_produce(make_shard, out, spec))
        else:
            _run_pool(make_shard, out, todo, workers, finished)
    except KeyboardInterrupt:
        save(complete=False)
        raise Interrupted(
            f"interrupted: {len(records)} finished shards are kept in {out}; rerun the same command to resume"
        ) from None
    except ConfigError:
        # A setting that only fails once work starts (a model that loads lazily, at the first shard)
        # leaves nothing behind in a folder this run created: the corrected command then starts
        # afresh instead of meeting a "different dataset".  Not with several ranks sharing the folder.
        if fresh and world_size == 1 and not records:
            for child in [p for p in out.iterdir() if not is_lock_file(p.name)] if existed else [out]:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    complete = manifest["complete"] and world_size == 1  # a rank's part needs merge-manifests
    return BuildResult(out, manifest_path, len(todo), reused, total, complete, world_size)


def _run_pool(make_shard: MakeShard, out: Path, todo: list[ShardSpec], workers: int, finished) -> None:
    ctx = mp.get_context("spawn")  # no inherited threads/locks (torch may be imported in the parent)
    n = min(workers, len(todo))
    # Workers die with this process (a SIGKILL leaves no orphans; see lsbench.processes): they are started
    # from submit() below, in this thread, which outlives the pool.
    with cf.ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=die_with_parent,
                                initargs=(os.getpid(),)) as pool:
        # Workers leave Ctrl-C to the parent, which stops handing out shards and lets the running
        # ones finish (each is atomic).  An ignored SIGINT survives exec and Python keeps it
        # ignored, so workers are started with it ignored (they are spawned by submit()).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            futures = [pool.submit(_produce, make_shard, out, spec) for spec in todo]
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            for fut in cf.as_completed(futures):
                finished(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            # Shards already running finish atomically; record them so a rerun need not redo them.
            cf.wait([f for f in futures if not f.cancelled()])
            for fut in futures:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    try:
                        finished(fut.result())
                    except Exception:  # noqa: BLE001 - best effort while unwinding
                        pass
            raise


@_holding_output_lock
def merge_manifests(out: Path) -> Path:
    """Join the partial manifests written by ``world_size`` ranks into ``manifest.json``.

    Refuses (one clear line) when parts disagree on the dataset, or a rank's shards are missing.
    """
    out = Path(out)
    parts = sorted(out.glob("manifest.rank*-of-*.json"))
    if not parts:
        raise DatasetError(f"{out} has no partial manifests (manifest.rankNNNNN-of-NNNNN.json) to merge")
    manifests = [read_manifest(out, p.name) for p in parts]
    first = manifests[0]
    world = first.get("world_size")
    if any(_identity(m) != _identity(first) or m.get("world_size") != world for m in manifests):
        raise DatasetError(f"the partial manifests in {out} describe different datasets; regenerate them")
    ranks = sorted(m.get("rank") for m in manifests)
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        raise DatasetError(f"{out}: manifests of ranks {missing} of {world} are missing; run those ranks first")
    records = _verified_records(out, manifests)
    merged = dict(first)
    for key in ("rank", "world_size"):
        merged.pop(key, None)
    merged["splits"] = {}
    for split, entry in first["splits"].items():
        specs = plan_shards(split, entry["num_samples"], first["shard_size"], entry["group_size"])
        absent = [s.name for s in specs if s.name not in records]
        if absent:
            raise DatasetError(
                f"{out}: {len(absent)} shards of split {split!r} are missing or corrupt (first: {absent[0]}); "
                "rerun the ranks that own them"
            )
        merged["splits"][split] = split_entry(
            entry["num_samples"], entry["group_size"], entry["grouped"], specs, records
        )
    merged["complete"] = True
    write_json_atomic(out / MANIFEST, merged)
    write_dataset_card(out, merged)
    for p in parts:
        p.unlink()
    return out / MANIFEST
