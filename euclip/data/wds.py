"""Image-text pairs in webdataset tar shards (img2dataset's layout), loaded like OpenCLIP's ``get_wds_dataset``.

A shard is a tar file of samples; the files of one sample share a key: ``000000042.jpg`` + ``000000042.txt``.
Images may be ``jpg``/``jpeg``/``png``/``webp``; the caption is ``txt``, or the ``"caption"`` field of ``json``.

Bad samples never stop a run: a corrupt image, a sample without an image or without a (non-empty) caption
becomes ``None`` in the stream, and :class:`~euclip.data.batch.Collate` drops it and counts it in
``Batch.skipped``. The count thus travels inside the batch from the DataLoader worker that saw it to the main
process, where the trainer sums ``Batch.skipped``. A batch is ``batch_size`` *raw* samples, so it holds
``batch_size - skipped`` pairs. Errors below the sample level (a shard that cannot be opened, a truncated tar)
are logged and the rest of that shard is skipped; each such shard-level error counts as *one* skipped sample
(in the next batch the worker yields), since at least one sample was lost and how many followed it in the
shard is unknown.

Data that is unreadable as a whole stops the stream with :class:`~euclip.data.batch.NoReadableDataError`
(named shards and counts) instead of spinning: in a sized epoch (``num_samples``), a pass over a worker's shards
that yields no sample at all (none is a tar file) or no usable one (e.g. none has a caption); with
``resampled``, ``2 * len(shards) + 10`` drawn shards in a row without a sample. An error found in a DataLoader
worker travels to the main process as an item of the stream and is raised there, so that it reads as one line
rather than inside a worker traceback.

What an epoch is
----------------
* ``num_samples=None`` and ``resampled=False``: one pass over the shards. Each rank reads the shards
  ``order[rank::world_size]`` and each of its DataLoader workers a ``[worker::num_workers]`` slice of those,
  where ``order`` is the shard list shuffled with ``(seed, epoch)`` (the same permutation on every rank, so
  the ranks' slices are disjoint and together cover every shard exactly once). Every sample is read exactly
  once, the last batch of each worker may be short, and ranks and workers may get different numbers of batches
  (so with DDP use ``num_samples``, or ranks can deadlock on the last step).
* ``num_samples=N``: like OpenCLIP, an epoch is a fixed number of batches, not a pass over the data. Each
  worker yields ``worker_batches = ceil(ceil(N / (batch_size * world_size)) / num_workers)`` full batches
  (its shards are reread in a fresh order if it runs out), so every rank yields
  ``num_batches = worker_batches * max(num_workers, 1)`` batches, ``num_batches * batch_size >= N / world_size``
  raw samples. Each pass over a worker's shards is shuffled on its own (the buffer never mixes two passes), so
  with ``N`` equal to the number of samples in the shards (a whole number of batches per worker) an epoch holds
  every sample exactly once. Requires at least ``world_size * max(num_workers, 1)`` shards unless ``resampled``.
* ``resampled=True``: every worker draws shards with replacement (``webdataset.ResampledShards``, seeded per
  ``(seed, epoch, rank, worker)``); with ``num_samples`` the epoch is sized as above, without it the stream
  never ends.

Determinism and resuming
------------------------
Everything random is seeded from ``(seed, epoch, rank, worker)``: the shard order, the shard resampling, the
sample shuffle buffer, and, per sample, the torch RNG the image augmentation draws from (seeded with the
sample's position in its worker's stream). So for fixed shards, ``batch_size``, ``num_workers``, ``world_size``
and transform, an epoch's batches are a pure function of ``(seed, epoch)``. ``set_epoch(epoch, start_batch)``
resumes mid-epoch exactly: each worker skips its share of the first ``start_batch`` batches as raw tar bytes
(no decoding), and workers swap roles so that the DataLoader's round-robin continues with batch
``start_batch``. This needs every worker to yield the same number of batches, i.e. ``num_samples`` set or
``resampled=True``. A transform drawing from Python's ``random`` module instead of torch is not reproduced.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from euclip.data.batch import Batch, Collate, NoReadableDataError
from euclip.signals import ignore_stop_signals

__all__ = ["WdsLoader", "make_wds_loader", "write_shards", "expand_shards", "IMAGE_KEYS"]

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_MAX_LOGGED = 5  # per process: the first few bad samples are logged, after that only counts at powers of ten
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")


def expand_shards(urls: str) -> list[str]:
    """Expand a shard spec: brace patterns (``"a/{00000..00009}.tar"``), several joined with ``::``.

    Args:
        urls: the spec, as OpenCLIP's ``--train-data`` takes it.

    Returns:
        The shard URLs in spec order.

    Raises:
        ValueError: the spec expands to nothing.
        FileNotFoundError: local shard files that do not exist (all of them named, up to 20).
    """
    shards = [url for url in expand_urls(urls) if url]
    if not shards:
        raise ValueError(f"shard spec {urls!r} expands to no shards")
    # Remote and piped shards are not checked: that would open a connection per shard before the first step.
    local = [url.removeprefix("file:") for url in shards if not url.startswith(_REMOTE_PREFIXES)]
    missing = [path for path in local if not os.path.isfile(path)]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} shard(s) of {urls!r} do not exist:\n  {shown}")
    return shards


def _seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts; hashlib rather than ``hash()``, which is salted per process for str."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class _RateLimitedLog:
    """Log the first few events of a kind per process, then only at counts 10, 100, 1000, ..."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        n = self.count
        if n <= _MAX_LOGGED:
            logger.warning("%s: %s", self.what, message)
            if n == _MAX_LOGGED:
                logger.warning("%s: further ones are only counted and logged at powers of ten", self.what)
        elif str(n).rstrip("0") == "1":
            logger.warning("%s: %d so far in this process (last: %s)", self.what, n, message)


_bad_sample_log = _RateLimitedLog("skipped webdataset sample")
_shard_error_log = _RateLimitedLog("webdataset shard error")


@dataclass
class _Progress:
    """What one worker's stream has read so far: how the shard source tells unreadable data from slow data."""

    raw: int = 0  # tar samples read (before the shuffle buffer)
    usable: int = 0  # samples decoded into a pair (or skipped undecoded by a resume: not known to be bad)
    shard_errors: int = 0  # shards with a read error (not a tar file, cut short), at most one per shard and pass


class _ShardErrors:
    """The webdataset handler of one pass: logs every shard-level error, counts at most one per shard.

    webdataset reports a member cut short twice (reading its data, then the next header), and the count stands
    for "samples were lost in this shard", so a shard counts once. ``start``/``end`` bracket the reading of a
    shard; errors outside (a shard that cannot even be opened) count one each.
    """

    def __init__(self, progress: _Progress):
        self.progress = progress
        self.url: str | None = None
        self.failed = False

    def start(self, url: str) -> None:
        self.url, self.failed = url, False

    def end(self) -> None:
        self.url = None

    def __call__(self, exn: Exception) -> bool:
        """Log and count, then continue with the next shard."""
        _shard_error_log(f"{type(exn).__name__}: {exn}")
        if not self.failed:
            self.progress.shard_errors += 1
        self.failed = self.url is not None
        return True


@dataclass(frozen=True)
class _StreamError:
    """A :class:`NoReadableDataError` found in a worker, sent to the main process as an item of the stream.

    Raised in a DataLoader worker, the error would reach the main process re-created from a message holding the
    worker's traceback; as an item it arrives intact and :class:`WdsLoader` raises it there.
    """

    message: str


def _name_shards(shards: Iterable[str], shown: int = 5) -> str:
    shards = list(shards)
    more = f", ... and {len(shards) - shown} more" if len(shards) > shown else ""
    return ", ".join(shards[:shown]) + more


@dataclass(frozen=True)
class _Plan:
    """Everything about the stream fixed at construction (picklable, sent to each worker)."""

    shards: tuple[str, ...]
    batch_size: int
    num_workers: int  # >= 1: the main process counts as one worker
    rank: int
    world_size: int
    seed: int
    resampled: bool
    shuffle_buffer: int
    worker_batches: int | None  # batches per worker per epoch; None: one pass (or endless if resampled)


@dataclass(frozen=True)
class _Context:
    """Per-iteration state of one worker, derived from the shared epoch/start_batch and the worker id."""

    epoch: int
    role: int  # which worker's share of the epoch this worker produces (differs from its id after a resume)
    skip_batches: int  # this role's batches already consumed before start_batch
    take_batches: int | None


class _SharedEpoch:
    """``epoch`` and ``start_batch`` in shared memory, so persistent workers see ``set_epoch`` of the main process."""

    def __init__(self, epoch: int, start_batch: int):
        self._epoch = multiprocessing.Value("q", epoch, lock=False)
        self._start = multiprocessing.Value("q", start_batch, lock=False)

    def set(self, epoch: int, start_batch: int) -> None:
        self._epoch.value, self._start.value = epoch, start_batch

    def get(self) -> tuple[int, int]:
        return self._epoch.value, self._start.value


class _SampleDecoder:
    """Raw tar sample (dict of bytes) -> ``(image_tensor, caption)``, or ``None`` when it is unusable."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]):
        self.transform = transform

    def __call__(self, sample: dict, seed: int) -> tuple[torch.Tensor, str] | None:
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        image_key = next((key for key in IMAGE_KEYS if key in sample), None)
        if image_key is None:
            _bad_sample_log(f"{where} has no image ({'/'.join(IMAGE_KEYS)}); it has {_keys(sample)}")
            return None
        try:
            caption = _caption(sample)
        except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as exn:
            _bad_sample_log(f"{where} has an unreadable caption: {type(exn).__name__}: {exn}")
            return None
        if caption is None or not caption.strip():
            _bad_sample_log(f"{where} has no caption (txt, or json with a non-empty 'caption'); it has "
                            f"{_keys(sample)}")
            return None
        try:
            with Image.open(io.BytesIO(sample[image_key])) as image:
                return self._augment(image, seed), caption
        except Exception as exn:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            _bad_sample_log(f"{where}.{image_key} cannot be decoded: {type(exn).__name__}: {exn}")
            return None

    def _augment(self, image: Image.Image, seed: int) -> torch.Tensor:
        # Seeding torch's RNG per sample makes the augmentation a function of the sample's position, not of how
        # many random numbers earlier samples drew; that is what lets a resume skip samples without decoding.
        # The CPU generator directly: torch.manual_seed also visits every accelerator backend (~50x slower).
        generator = torch.default_generator
        if get_worker_info() is not None:
            generator.manual_seed(seed)  # a worker process's RNG serves nothing but this pipeline
            return self.transform(image)
        state = generator.get_state()  # in the main process, leave the training RNG untouched
        generator.manual_seed(seed)
        try:
            return self.transform(image)
        finally:
            generator.set_state(state)


def _keys(sample: dict) -> list[str]:
    return sorted(key for key in sample if not key.startswith("__"))


def _caption(sample: dict) -> str | None:
    if "txt" in sample:
        return sample["txt"].decode("utf-8")
    if "json" in sample:
        caption = json.loads(sample["json"]).get("caption")
        return caption if isinstance(caption, str) else None
    return None


class _WdsStream(IterableDataset):
    """The per-worker stream of collated batches: shard list -> tar samples -> shuffle -> decode -> batch."""

    def __init__(self, plan: _Plan, shared: _SharedEpoch, transform: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor]):
        super().__init__()
        self.plan = plan
        self.shared = shared
        self.decoder = _SampleDecoder(transform)
        self.collate = Collate(tokenizer)

    def context(self) -> _Context:
        plan = self.plan
        epoch, start = self.shared.get()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batches round-robin starting at worker 0 every epoch. After skipping `start`
        # batches the next one is due from worker `start % workers`, so worker 0 plays that worker's role.
        role = (worker + start) % workers
        skip = (start - role + workers - 1) // workers if start > role else 0
        take = None if plan.worker_batches is None else max(plan.worker_batches - skip, 0)
        return _Context(epoch, role, skip, take)

    def __iter__(self) -> Iterator[Batch | _StreamError]:
        ctx = self.context()
        plan = self.plan
        progress = _Progress()  # lets the shard source stop when its shards yield nothing (usable) at all
        samples = itertools.chain.from_iterable(self._shuffled(shards, ctx, pass_, progress)
                                                for pass_, shards in enumerate(self._passes(ctx, progress)))
        pipeline = wds.DataPipeline(
            lambda: self._positioned(samples, ctx, progress),
            lambda samples: (self._decode(sample, seed, progress) for sample, seed in samples),
            # Nones stay in the batch: Collate drops and counts them, which carries the count to the main process.
            wds.batched(plan.batch_size, collation_fn=self.collate, partial=plan.worker_batches is None),
        )
        batches = self._count_shard_errors(iter(pipeline), progress, final=ctx.take_batches is None)
        return self._reporting(batches if ctx.take_batches is None else islice(batches, ctx.take_batches))

    def _decode(self, sample: dict, seed: int, progress: _Progress) -> tuple[torch.Tensor, str] | None:
        pair = self.decoder(sample, seed)
        progress.usable += pair is not None
        return pair

    def _count_shard_errors(self, batches: Iterator[Batch], progress: _Progress, final: bool) -> Iterator[Batch]:
        """Add the shard-level errors since the previous batch to each batch's ``skipped`` (one per error).

        ``final``: an unsized pass also reports the errors after its last batch, in an extra empty batch.
        """
        reported = 0
        for batch in batches:
            batch.skipped += progress.shard_errors - reported
            reported = progress.shard_errors
            yield batch
        if final and progress.shard_errors > reported:
            batch = self.collate([])
            batch.skipped = progress.shard_errors - reported
            yield batch

    @staticmethod
    def _reporting(batches: Iterator[Batch]) -> Iterator[Batch | _StreamError]:
        try:
            yield from batches
        except NoReadableDataError as exn:
            yield _StreamError(str(exn))

    def _passes(self, ctx: _Context, progress: _Progress) -> Iterator[Iterable[dict]]:
        """This worker's shards, one iterable per pass over them (a resampled stream is one endless pass).

        Raises:
            NoReadableDataError: a pass of a sized epoch read no sample, or no usable one. The next pass would
                read the same shards again, forever, without a single batch (or with only empty ones).
        """
        plan = self.plan
        if plan.resampled:
            yield self._resampled(ctx, progress)
            return
        for pass_ in itertools.count():  # more than one pass only when num_samples asks for more than the data holds
            order = list(plan.shards)
            if plan.shuffle_buffer > 0:
                # The same permutation on every rank and worker (no rank/worker in the seed), so the slices
                # below partition the shards.
                random.Random(_seed(plan.seed, ctx.epoch, pass_, "shards")).shuffle(order)
            mine = order[plan.rank::plan.world_size][ctx.role::plan.num_workers]
            if not mine:
                return
            raw, usable, errors = progress.raw, progress.usable, progress.shard_errors
            # Read to the end (by _shuffled), and every sample decoded, before the next pass is asked for.
            yield [{"url": url} for url in mine]
            if plan.worker_batches is None:
                return
            raw, usable, errors = progress.raw - raw, progress.usable - usable, progress.shard_errors - errors
            if raw == 0:
                raise NoReadableDataError(
                    f"webdataset: no sample could be read from the {len(mine)} shard(s) of a worker ({errors} "
                    f"shard-level read error(s), logged above: not tar files, truncated or unreadable?): "
                    f"{_name_shards(mine)}")
            if usable == 0:
                raise NoReadableDataError(
                    f"webdataset: none of the {raw} samples in the {len(mine)} shard(s) of a worker is usable (no "
                    f"image, no caption, or an image that does not decode; the warnings above say which): "
                    f"{_name_shards(mine)}")

    def _resampled(self, ctx: _Context, progress: _Progress) -> Iterator[dict]:
        plan = self.plan
        # ResampledShards seeds itself with make_seed(worker_seed(), epoch, seed); its own epoch counter
        # counts iterations of this object, so it is pinned to the shared epoch for reproducibility.
        shards = wds.ResampledShards(list(plan.shards), seed=plan.seed, deterministic=True,
                                     worker_seed=lambda: _seed(plan.rank, ctx.role) & 0x7FFF_FFFF)
        shards.epoch = ctx.epoch - 1  # __iter__ increments it first
        last, idle, errors = progress.raw, 0, progress.shard_errors
        for shard in shards:
            yield shard
            # An endless draw from shards that all fail would spin forever without a single batch. (Usable
            # samples are not checked here: the shuffle buffer decodes far behind the shard being read;
            # guard_readable catches a stream of nothing but unusable samples in the main process.)
            idle = idle + 1 if progress.raw == last else 0
            last = progress.raw
            if idle > 2 * len(plan.shards) + 10:
                raise NoReadableDataError(
                    f"webdataset: {idle} shards drawn in a row (--dataset-resampled) yielded no sample "
                    f"({progress.shard_errors - errors} shard-level read error(s) in this worker, logged above: not "
                    f"tar files, truncated or unreadable?); its {len(plan.shards)} shard(s): "
                    f"{_name_shards(plan.shards)}")

    def _shuffled(self, shards: Iterable[dict], ctx: _Context, pass_: int, progress: _Progress) -> Iterator[dict]:
        """The raw samples of one pass, shuffled within that pass only.

        A pass is shuffled on its own so that an epoch of exactly the shard total holds every sample once: a
        buffer spanning passes would pull samples of the next pass into this one (repeats and misses).
        """
        plan = self.plan
        samples = _counted(_tar_samples(shards, _ShardErrors(progress)), progress)  # before the buffer (reads ahead)
        if plan.shuffle_buffer <= 1:
            return samples
        rng = random.Random(_seed(plan.seed, ctx.epoch, plan.rank, ctx.role, pass_, "samples"))
        # Shuffling raw bytes before decoding keeps the buffer cheap (compressed images) and makes the order
        # independent of decode failures.
        return wds.shuffle(plan.shuffle_buffer, initial=plan.shuffle_buffer, rng=rng)(samples)

    def _positioned(self, samples: Iterable[dict], ctx: _Context, progress: _Progress) -> Iterator[tuple[dict, int]]:
        """Drop this role's already-consumed samples (a resume) and pair each sample with its augmentation seed."""
        plan = self.plan
        skip = ctx.skip_batches * plan.batch_size
        for index, sample in enumerate(samples):
            if index >= skip:  # skipped samples cost reading bytes only: no decode, no augmentation
                yield sample, _seed(plan.seed, ctx.epoch, plan.rank, ctx.role, index)
            else:
                progress.usable += 1  # not decoded, so not known to be bad: a resumed pass is not "unusable"


def _tar_samples(shards: Iterable[dict], errors: _ShardErrors) -> Iterator[dict]:
    """``webdataset.tarfile_samples``, but closing each shard's file once read (it leaves that to the GC), and
    counting shards cut short."""
    streams = _closing(url_opener(shards, handler=errors), errors)
    files = tar_file_expander(streams, handler=errors)
    return group_by_keys(files, handler=errors)


def _closing(streams: Iterable[dict], errors: _ShardErrors) -> Iterator[dict]:
    for shard in streams:
        errors.start(shard["url"])
        try:
            yield shard  # resumed when the expander asks for the next shard, i.e. after this one is read
        finally:
            shard["stream"].close()
        # tarfile ends a stream cut at (or inside) a member header without an error, as if the archive ended
        # there: the samples after the cut would vanish uncounted. A shard that ended without an error is checked
        # for the end-of-archive marker instead.
        if not errors.failed and _cut_short(shard["url"]):
            errors(tarfile.ReadError(f"{shard['url']} ends without tar's end-of-archive marker: the file is cut "
                                     "short (an incomplete copy or download?) and the samples after the cut are "
                                     "lost"))
        errors.end()


def _cut_short(url: str) -> bool:
    """Whether a local tar file lacks the end-of-archive marker (two zero blocks) every tar writer appends."""
    if url.startswith(_REMOTE_PREFIXES):
        return False  # would mean reading the shard a second time
    try:
        with open(url.removeprefix("file:"), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < 1024:
                return True
            f.seek(size - 1024)
            return any(f.read(1024))
    except OSError:
        return False  # then opening it failed too, and that error was counted


def _counted(samples: Iterable[dict], progress: _Progress) -> Iterator[dict]:
    for sample in samples:
        progress.raw += 1
        yield sample


class WdsLoader:
    """Iterable of :class:`Batch` over webdataset shards; made by :func:`make_wds_loader`.

    Attributes:
        loader: the underlying ``torch.utils.data.DataLoader`` (``batch_size=None``: the pipeline batches).
        num_batches: batches per epoch on this rank, or ``None`` for one unsized pass / an endless stream.
        num_samples: raw samples per epoch on this rank (``num_batches * batch_size``), or ``None``.
        epoch: the epoch of the latest (or next, before the first) iteration.
    """

    def __init__(self, loader: DataLoader, shared: _SharedEpoch, plan: _Plan, epoch: int):
        self.loader = loader
        self._shared = shared
        self._plan = plan
        self.num_batches = None if plan.worker_batches is None else plan.worker_batches * plan.num_workers
        self.num_samples = None if self.num_batches is None else self.num_batches * plan.batch_size
        self.epoch = epoch
        self._next = (epoch, 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch the next iteration produces, optionally resuming after its first batches.

        Without a call, each iteration after the first moves on to the next epoch by itself.

        Args:
            epoch: the epoch; with the seed it fixes the shard order, shuffles and augmentations.
            start_batch: batches of this epoch (on this rank) already consumed; the iteration yields the rest,
                exactly as an uninterrupted epoch would have. Only for sized or resampled streams.

        Raises:
            ValueError: ``start_batch`` is negative, or positive for an unsized one-pass stream (its workers
                yield different numbers of batches, so their round-robin cannot be replayed).
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        if start_batch and self._plan.worker_batches is None and not self._plan.resampled:
            raise ValueError("start_batch needs num_samples (--train-num-samples) or resampled=True "
                             "(--dataset-resampled): without them workers yield uneven batch counts and the batch "
                             "order after a skip is not reproducible")
        self._next = (epoch, start_batch)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self._next
        # Written before iter(loader): persistent workers read it when the DataLoader restarts them.
        self._shared.set(epoch, start)
        self.epoch = epoch
        self._next = (epoch + 1, 0)
        return _raising(iter(self.loader))

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this webdataset stream has no fixed length: pass num_samples to size its epochs")
        return self.num_batches


def _raising(items: Iterator[Batch | _StreamError]) -> Iterator[Batch]:
    """The batches of ``items``; a worker's :class:`_StreamError` is raised here, in the main process."""
    for item in items:
        if isinstance(item, _StreamError):
            raise NoReadableDataError(item.message)
        yield item


def make_wds_loader(urls: str, transform: Callable[[Image.Image], torch.Tensor],
                    tokenizer: Callable[[list[str]], torch.Tensor], batch_size: int, num_workers: int = 0,
                    num_samples: int | None = None, resampled: bool = False, shuffle_buffer: int = 1000,
                    seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                    pin_memory: bool = False) -> WdsLoader:
    """Build a loader of :class:`Batch` from webdataset shards (see the module docstring for epochs and resume).

    Args:
        urls: shard spec: brace patterns, several joined with ``::``; local files are checked up front.
        transform: PIL image -> tensor (:func:`euclip.data.transforms.image_transform`); torch-RNG based
            augmentations are reproduced exactly per ``(seed, epoch)``.
        tokenizer: list of captions -> ``(B, L)`` LongTensor.
        batch_size: raw samples per batch on this rank; bad ones among them are dropped and counted.
        num_workers: DataLoader worker processes (0: decode in the main process). They are persistent.
        num_samples: samples per epoch over all ranks; ``None``: one pass (or endless if ``resampled``).
        resampled: draw shards with replacement, independently per rank and worker.
        shuffle_buffer: sample shuffle buffer per worker; 0 disables both the sample and the shard shuffle.
        seed: base seed shared by all ranks.
        epoch: the first iteration's epoch (``WdsLoader.set_epoch`` changes it).
        rank: this process's rank; the shards are split by it, not by environment variables.
        world_size: number of ranks.
        pin_memory: pin batches in page-locked memory for faster host-to-GPU copies.

    Returns:
        The loader.

    Raises:
        FileNotFoundError: missing local shards (named).
        ValueError: bad arguments, or fewer shards than ``world_size * num_workers`` for a sized epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}")
    shards = expand_shards(urls)
    workers = max(num_workers, 1)
    if num_samples is not None and not resampled and len(shards) < world_size * workers:
        # A worker without shards would yield nothing and its rank would come up short of num_batches.
        raise ValueError(f"{len(shards)} shard(s) cannot feed {world_size} rank(s) x {workers} worker(s) (each reads "
                         f"whole shards); use fewer --workers, more shards, or --dataset-resampled "
                         f"(resampled=True)")
    worker_batches = None
    if num_samples is not None:
        # OpenCLIP's rounding: up to whole global batches, then up to a multiple of the worker count.
        worker_batches = math.ceil(math.ceil(num_samples / (batch_size * world_size)) / workers)
    plan = _Plan(tuple(shards), batch_size, workers, rank, world_size, seed, resampled, max(shuffle_buffer, 0),
                 worker_batches)
    shared = _SharedEpoch(epoch, 0)
    dataset = _WdsStream(plan, shared, transform, tokenizer)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                        persistent_workers=num_workers > 0, pin_memory=pin_memory,
                        prefetch_factor=2 if num_workers > 0 else None,
                        worker_init_fn=ignore_stop_signals)  # the trainer handles preemption (euclip.signals)
    return WdsLoader(loader, shared, plan, epoch)


def write_shards(samples: Iterable[tuple[Image.Image | bytes, str]], pattern: str, maxcount: int,
                 image_format: str = "jpg") -> list[str]:
    """Write image-caption pairs as webdataset shards in img2dataset's layout (``KEY.jpg`` + ``KEY.txt``).

    Args:
        samples: ``(image, caption)`` pairs; an image is a PIL image (encoded here) or already-encoded bytes
            (stored as they are, under the ``image_format`` extension).
        pattern: printf-style shard path, e.g. ``"shards/%05d.tar"``; its folder is created.
        maxcount: samples per shard.
        image_format: ``jpg``, ``jpeg``, ``png`` or ``webp``.

    Returns:
        The shard paths written, in order (one empty shard if ``samples`` is empty).
    """
    if image_format not in IMAGE_KEYS:
        raise ValueError(f"image_format must be one of {IMAGE_KEYS}, got {image_format!r}")
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    try:
        first = pattern % 0
    except TypeError:
        raise ValueError(f"pattern needs a printf field for the shard number, e.g. 'shards/%05d.tar': {pattern!r}")
    os.makedirs(os.path.dirname(first) or ".", exist_ok=True)
    written: list[str] = []
    # An integer mtime: with webdataset's default float time.time(), tarfile adds a PAX header to every member,
    # which doubles the header parsing of every later read (the main per-sample cost for small images).
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, post=written.append,
                         mtime=int(time.time())) as sink:
        for index, (image, caption) in enumerate(samples):
            data = image if isinstance(image, bytes) else _encode(image, image_format)
            sink.write({"__key__": f"{index:09d}", image_format: data, "txt": caption})
    return written


def _encode(image: Image.Image, image_format: str) -> bytes:
    pil_format = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format]
    if pil_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG stores neither alpha nor palettes
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **({"quality": 95} if pil_format != "PNG" else {}))
    return buffer.getvalue()
