"""Streaming model inputs from a dataset folder: ``webdataset`` pipelines → batches of tensors.

Images become ``(3, S, S)`` float tensors by the model's :class:`~.preprocess.Preprocess` (lsbench
models: grey images repeated to 3 channels, resized to ``img_size`` with antialiasing, normalised
with the backbone's mean/std; pretrained timm models: timm's own eval transform); labels ``cls``
become ints and masks ``(S, S)`` long tensors (nearest).
Shards are split between ranks (``split_by_node``) and DataLoader workers (``split_by_worker``);
training shuffles shards and samples with a seeded RNG per epoch, so a resumed run sees the same
order as an uninterrupted one.
"""

from __future__ import annotations

import functools
import os
import random
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..dataset import Dataset
from ..errors import CorruptSampleError, DatasetError
from ..processes import dataloader_worker_init
from ..shards import REBUILD, decode_sample
from .preprocess import Preprocess, legacy


def mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.array(mask, copy=True)).long()
    if t.shape != (size, size):
        t = F.interpolate(t[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return t


@dataclass(frozen=True)
class Skipped:
    """A corrupt sample left out (``--skip-corrupt``): its shard, its key, and what is wrong with it."""

    shard: str
    key: str
    problem: str


SKIP_HINT = ", or pass --skip-corrupt to leave such samples out"


class _Decode:
    """Picklable map stage: raw sample → ``(image, target, meta)``; ``meta`` gains ``__key__`` and
    ``__inside__`` (per object box, whether it stays whole in the model input, :meth:`Preprocess.inside`).

    A corrupt sample (:func:`~lsbench.shards.decode_sample`) stops the run with one line naming its shard
    and key, or with ``skip_corrupt`` becomes a :class:`Skipped` that :func:`loader` reports and leaves
    out (``skip_corrupt=False``: the line also names ``--skip-corrupt``; ``None``: the command has none)."""

    def __init__(self, pre: Preprocess, task: str, skip_corrupt: bool | None = None):
        self.pre, self.size, self.task, self.skip_corrupt = pre, pre.size, task, skip_corrupt
        self.transform = pre.transform()

    def __call__(self, raw: dict[str, Any]):
        try:
            return self._decode(raw)
        except CorruptSampleError as e:
            if self.skip_corrupt:
                return Skipped(getattr(e, "shard", "?"), getattr(e, "key", "?"), getattr(e, "problem", str(e)))
            if self.skip_corrupt is False:
                raise CorruptSampleError(f"{e}{SKIP_HINT}") from None
            raise

    def _decode(self, raw: dict[str, Any]):
        s = decode_sample(raw)
        h, w = s["image"].shape[:2]
        image = self.transform(s["image"])
        inside = [self.pre.inside(box, h, w) for box in s["meta"].get("boxes") or []]
        s["meta"] = {**s["meta"], "__key__": s["__key__"], "__inside__": inside}
        if self.task == "seg":
            if "mask" not in s:
                raise DatasetError(f"sample {s['__key__']} has no mask.png; this dataset is not a segmentation set")
            target = mask_tensor(s["mask"], self.size)
        else:
            if "cls" not in s:
                raise DatasetError(f"sample {s['__key__']} has no cls label; this dataset is not a classification set")
            target = s["cls"]
        return image, target, s["meta"]


def _collate(batch):
    """``(images, targets, metas, skipped)``: the decoded samples batched, the :class:`Skipped` ones listed
    (images and targets ``None`` when every sample of the batch was skipped)."""
    skipped = [b for b in batch if isinstance(b, Skipped)]
    batch = [b for b in batch if not isinstance(b, Skipped)]
    if not batch:
        return None, None, [], skipped
    images, targets, metas = zip(*batch)
    targets = torch.stack(targets) if isinstance(targets[0], torch.Tensor) else torch.tensor(targets)
    return torch.stack(images), targets, list(metas), skipped


def _tar_error(exn: Exception) -> bool:
    """webdataset's handler for a shard that is not a readable tar (its manifest rewritten over a damaged
    file): one line naming it (webdataset appends the shard's URL to the exception's arguments)."""
    if not isinstance(exn, tarfile.TarError | EOFError):
        raise exn
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and ".tar" in a), "a shard")
    raise CorruptSampleError(f"{url} is not a readable tar ({type(exn).__name__}); {REBUILD}") from None


class Batches:
    """What :func:`loader` returns: iterates its ``DataLoader`` (:attr:`dataloader`) as ``(images, targets,
    metas)``, handing each skipped corrupt sample to ``on_skip`` (in the main process, where DataLoader
    workers cannot print)."""

    def __init__(self, dataloader, on_skip: Callable[[Skipped], None] | None = None):
        self.dataloader, self.on_skip = dataloader, on_skip

    def __iter__(self):
        for images, targets, metas, skipped in self.dataloader:
            for s in skipped:
                if self.on_skip:
                    self.on_skip(s)
            if metas:
                yield images, targets, metas


def pipeline(urls: list[str], *, size: int, task: str, train: bool, seed: int = 0, epoch: int = 0,
             shuffle_buffer: int = 1000, preprocess: Preprocess | None = None, skip_corrupt: bool | None = None):
    """The ``webdataset`` pipeline of one epoch (composable stages, no global state); ``skip_corrupt`` as
    :class:`_Decode` takes it."""
    import webdataset as wds

    stages: list[Any] = [wds.SimpleShardList(urls)]
    if train:
        stages.append(wds.shuffle(len(urls), initial=len(urls), rng=random.Random(seed * 7919 + epoch)))
    stages += [wds.split_by_node, wds.split_by_worker, wds.tarfile_to_samples(handler=_tar_error)]
    if train and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100),
                                  rng=random.Random(seed * 104729 + epoch)))
    stages.append(wds.map(_Decode(preprocess or legacy(size), task, skip_corrupt)))
    return wds.DataPipeline(*stages)


def loader(dataset: Dataset, split: str, *, size: int, batch_size: int, train: bool, workers: int = 0,
           seed: int = 0, epoch: int = 0, shuffle_buffer: int = 1000, skip: Collection[str] = (),
           task: str | None = None, preprocess: Preprocess | None = None, skip_corrupt: bool | None = None,
           on_skip: Callable[[Skipped], None] | None = None) -> Batches:
    """A ``DataLoader`` over one split of an opened dataset yielding ``(images (B, 3, S, S), targets,
    metas)``; shard file names in ``skip`` are left out; ``task`` defaults to the dataset's;
    ``preprocess`` (default: :func:`~.preprocess.legacy` at ``size``) makes each image's tensor.  A corrupt
    sample stops it with one line naming shard and key, or with ``skip_corrupt`` goes to ``on_skip``
    (:class:`Batches`)."""
    urls = [str(p) for p in dataset.shard_paths(split) if p.name not in skip]
    if not urls:
        raise DatasetError(f"{dataset.directory}: split {split!r} has no shards")
    task = task or dataset.task
    workers = min(workers, len(urls))
    return Batches(torch.utils.data.DataLoader(
        pipeline(urls, size=size, task=task, train=train, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer,
                 preprocess=preprocess, skip_corrupt=skip_corrupt),
        batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        worker_init_fn=functools.partial(dataloader_worker_init, os.getpid()) if workers else None,  # no orphans
    ), on_skip)
