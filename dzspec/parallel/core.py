"""The execution core: every command runs as block-map and block-reduce stages over one block plan.

Two stages, both on a :class:`distributed.Client`:

* :func:`map_blocks` runs ``task(block, start, stop, *args)`` for the blocks not yet done, with a bounded number
  of tasks in flight, Dask retries, a progress bar and one :class:`RunReport`. A task writes its own outputs and
  then its done flag (the store is the checkpoint); a task still failing after its retries is reported, not
  raised, so one bad block never stops the others; a failure that says the output location is unusable
  (``unwritable``) stops further submission.
* :func:`reduce_blocks` computes one partial per block on the workers and combines them in a fixed tree (groups
  of ``split_every`` consecutive blocks), so the result is bit-identical for a given plan, and partials stay on
  the workers (a 600 MB Gram matrix per block never reaches the driver until the end). With a ``checkpoint``,
  each partial is saved by its worker and a rerun recomputes only the missing ones.

:func:`plan_rows` sizes blocks by compute rather than storage, so a store smaller than one chunk still gives every
worker thread at least two blocks. :class:`Provenance` is the one identity of a run: what it computed (name,
version, parameters: :attr:`Provenance.sha256`) from which input (``input_id``), checked before a resume.

Examples
--------
>>> from dzspec.cluster import make_client
>>> def square_sum(block, start, stop):
...     return float(sum(i * i for i in range(start, stop)))
>>> with make_client(n_workers=1, processes=False) as client:  # doctest: +SKIP
...     reduce_blocks(client, square_sum, [(0, 5), (5, 10)], progress=False)
285.0
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, as_completed
from tqdm.auto import tqdm

from dzspec.errors import StoreError

__all__ = ["Checkpoint", "PerBlock", "Provenance", "RunReport", "StageStopped", "map_blocks", "map_bounded",
           "peak_rss_bytes", "persist_blocks", "plan_rows", "progress_enabled", "reduce_blocks", "worker_threads"]

log = logging.getLogger(__name__)

#: Blocks per worker thread that :func:`plan_rows` aims for: two, so a slow block is not the whole run's tail.
BLOCKS_PER_THREAD = 2


def worker_threads(client: Client) -> int:
    """Worker threads of the cluster now (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def plan_rows(nspectrum: int, threads: int, chunk_rows: int, *, blocks_per_thread: int = BLOCKS_PER_THREAD) -> int:
    """Rows per block, sized by compute: at most one storage chunk (so big stores read whole chunks) and small
    enough that every worker thread gets ``blocks_per_thread`` blocks of a small store.

    Examples
    --------
    >>> plan_rows(1000, 2, 4096)   # a store smaller than one chunk still gives 2 blocks per thread
    250
    >>> plan_rows(100_000, 2, 4096)  # a big one: one chunk per block
    4096
    """
    return max(1, min(chunk_rows, nspectrum // (blocks_per_thread * max(threads, 1))))


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: show progress bars only on an interactive terminal, never in a batch job's log."""
    return sys.stderr.isatty() if progress is None else bool(progress)


@dataclass(frozen=True)
class Provenance:
    """What a run's outputs depend on: the computation (``name``, ``version``, ``params``) and its input.

    Examples
    --------
    >>> a = Provenance("summary", "1", {"snr_window": None}, input_id="abc")
    >>> a.sha256 == Provenance("summary", "1", {"snr_window": None}, input_id="other").sha256
    True
    >>> a.check({"config_sha256": a.sha256, "input_id": "abc"}, "s.zarr/results/x")
    """

    name: str
    version: str
    params: Mapping[str, Any]
    input_id: str = ""

    @property
    def sha256(self) -> str:
        """Hash of the computation (not of the input): a changed kernel or parameter refuses to resume."""
        payload = {"kernel": self.name, "version": self.version, "params": dict(self.params)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def attrs(self) -> dict[str, Any]:
        """The attributes a results group carries."""
        return {"kernel": self.name, "kernel_version": self.version, "params": dict(self.params),
                "config_sha256": self.sha256, "input_id": self.input_id}

    def check(self, existing: Mapping[str, Any], where: str) -> None:
        """Raise :class:`~dzspec.errors.StoreError` unless ``existing`` attributes were written by this run."""
        for key, now in (("config_sha256", self.sha256), ("input_id", self.input_id)):
            if existing.get(key) != now:
                raise StoreError(f"{where}: cannot resume: {key} differs (store {existing.get(key)!r}, now {now!r}); "
                                 "the kernel, its parameters or the input changed: use --overwrite")


@dataclass
class RunReport:
    """What a stage did: blocks planned, already done, computed and failed (with the error of each)."""

    results: str
    nblocks: int
    already_done: int
    computed: int
    failed: dict[int, str] = field(default_factory=dict)
    peak_worker_rss_bytes: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and self.already_done + self.computed == self.nblocks

    def summary(self) -> str:
        text = (
            f"{self.results}: {self.nblocks} blocks, {self.already_done} already done, {self.computed} computed, "
            f"{len(self.failed)} failed in {self.seconds:.1f} s; peak worker RSS "
            f"{self.peak_worker_rss_bytes / 2**20:.0f} MiB"
        )
        for _, error in sorted(self.failed.items())[:10]:
            text += f"\n  {error}"  # names the block, its rows and targetids
        return text


class StageStopped(StoreError):
    """A block-map stage stopped submitting because its output location cannot be written; ``report`` says
    what was done."""

    def __init__(self, message: str, report: RunReport):
        super().__init__(message)
        self.report = report


def peak_rss_bytes() -> int:
    """Peak resident memory of this (worker) process so far; tasks return it so runs can report it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def map_bounded(
    client: Client,
    func: Callable[..., Any],
    tasks: Iterable[tuple[Any, Sequence[Any]]],
    *,
    max_in_flight: int | None = None,
    retries: int = 0,
    desc: str = "",
    total: int | None = None,
    initial: int = 0,
    progress: bool | None = True,
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Run ``func(*args)`` for each ``(label, args)`` of ``tasks``, yielding ``(label, result, error)`` as done.

    At most ``max_in_flight`` tasks (default: twice the cluster's threads) are submitted at once, so neither the
    scheduler nor the workers ever hold the whole workload. A task that still fails after ``retries`` yields its
    exception instead of raising, so one bad task never stops the others.
    """
    if max_in_flight is None:
        max_in_flight = 2 * worker_threads(client)
    token = uuid.uuid4().hex[:8]
    name = getattr(func, "__name__", "task").strip("_")
    todo = iter(tasks)
    futures = as_completed()
    labels: dict[str, Any] = {}

    def submit_next() -> None:
        item = next(todo, None)
        if item is not None:
            label, args = item
            future = client.submit(func, *args, key=f"dzspec-{name}-{token}-{label}", retries=retries, pure=False)
            labels[future.key] = label
            futures.add(future)

    for _ in range(max(1, max_in_flight)):
        submit_next()
    with tqdm(total=total, initial=initial, desc=desc or name, disable=not progress_enabled(progress)) as bar:
        for future in futures:
            label = labels.pop(future.key)
            try:
                result, error = future.result(), None
            except Exception as exc:
                result, error = None, exc
            future.release()
            bar.update(1)
            submit_next()
            yield label, result, error


def map_blocks(
    client: Client,
    task: Callable[..., Any],
    bounds: Sequence[tuple[int, int]],
    *,
    args: Sequence[Any] = (),
    done: Sequence[bool] | None = None,
    name: str = "",
    describe: Callable[[int, BaseException], str] | None = None,
    on_failure: Callable[[int, BaseException], None] | None = None,
    max_in_flight: int | None = None,
    retries: int = 2,
    progress: bool | None = True,
) -> RunReport:
    """Run ``task(block, start, stop, *args)`` for every block of ``bounds`` whose ``done`` flag is False.

    The task writes its block's outputs and then its done flag; it returns its worker's peak RSS (an int) or
    anything else. A block still failing after ``retries`` goes to the report as ``describe(block, error)``
    and to ``on_failure``; an error with a true ``unwritable`` attribute (disk full, read-only) stops further
    submission, lets the blocks in flight finish and is then raised as :class:`StageStopped` (a
    :class:`~dzspec.errors.StoreError` carrying the report), naming how many blocks are done.

    Examples
    --------
    >>> from dzspec.cluster import make_client
    >>> with make_client(n_workers=1, processes=False) as client:  # doctest: +SKIP
    ...     report = map_blocks(client, lambda block, start, stop: stop - start, [(0, 2), (2, 3)],
    ...                         done=[True, False], progress=False)
    >>> report.already_done, report.computed  # doctest: +SKIP
    (1, 1)
    """
    t0 = time.perf_counter()
    done = [False] * len(bounds) if done is None else list(done)
    pending = [b for b in range(len(bounds)) if not done[b]]
    report = RunReport(name, len(bounds), len(bounds) - len(pending), 0)
    unwritable: list[str] = []

    def tasks() -> Iterator[tuple[str, tuple[Any, ...]]]:
        for block in pending:
            if unwritable:  # the output location is full or read-only: submit nothing more, let the rest finish
                return
            yield f"block-{block}", (block, *bounds[block], *_arguments(args, block))

    for label, outcome, error in map_bounded(client, task, tasks(), max_in_flight=max_in_flight, retries=retries,
                                             desc=name, total=len(bounds), initial=report.already_done,
                                             progress=progress):
        if error is None:
            report.computed += 1
            if isinstance(outcome, int):
                report.peak_worker_rss_bytes = max(report.peak_worker_rss_bytes, outcome)
            continue
        block = int(label.removeprefix("block-"))
        report.failed[block] = describe(block, error) if describe else (
            f"{name}: block {block} (rows {bounds[block][0]}:{bounds[block][1]}): {type(error).__name__}: {error}")
        log.error("%s", report.failed[block])
        if getattr(error, "unwritable", False):
            unwritable.append(report.failed[block])
        elif on_failure is not None:
            on_failure(block, error)
    report.seconds = time.perf_counter() - t0
    if unwritable:
        ndone = report.already_done + report.computed
        raise StageStopped(
            f"{unwritable[0]}\nThe output location cannot be written, so the run stopped: {ndone} of "
            f"{len(bounds)} blocks are done and kept, {len(bounds) - ndone} are not. Free space (or fix "
            "permissions) and run again with --resume.", report)
    return report


class PerBlock(list):
    """An argument of :func:`map_blocks`/:func:`reduce_blocks` that differs per block: block ``b`` receives
    ``per_block[b]`` in its place (e.g. the future of the data a worker keeps for that block)."""


def _arguments(args: Sequence[Any], block: int) -> tuple[Any, ...]:
    return tuple(a[block] if isinstance(a, PerBlock) else a for a in args)


def persist_blocks(client: Client, load: Callable[..., Any], bounds: Sequence[tuple[int, int]], *,
                   args: Sequence[Any] = (), retries: int = 2) -> PerBlock:
    """Load every block once into worker memory: ``load(block, start, stop, *args)``; the futures, as a
    :class:`PerBlock` argument for the stages that iterate over the same data (the NMF training)."""
    token = uuid.uuid4().hex[:8]
    stem = getattr(load, "__name__", "load").strip("_")
    return PerBlock(client.submit(load, block, *bounds[block], *_arguments(args, block), retries=retries,
                                  key=f"dzspec-{stem}-{token}-{block}", pure=False)
                    for block in range(len(bounds)))


class Checkpoint:
    """Where :func:`reduce_blocks` keeps each block's partial: ``<store>/<path>/<block>/<name>`` Zarr arrays,
    written by the worker that computed it and read back by a rerun of the same reduction (same ``sha256``)."""

    def __init__(self, store: str, path: str, sha256: str):
        self.store, self.path, self.sha256 = store, path, sha256

    def _group(self, mode: str) -> Any:
        import zarr

        root = zarr.open_group(self.store, mode=mode)
        if mode == "r":
            return root[self.path]
        group = root.require_group(self.path)
        if group.attrs.get("sha256") != self.sha256:  # another reduction's partials: start again
            group = root.create_group(self.path, overwrite=True)
            group.attrs["sha256"] = self.sha256
        return group

    def prepare(self) -> set[int]:
        """Create (or reuse) the checkpoint; the blocks whose partial is already saved."""
        group = self._group("a")
        return {int(name) for name, sub in group.groups() if sub.attrs.get("complete")}

    def save(self, block: int, value: Any) -> None:
        arrays = value if isinstance(value, Mapping) else {"value": value}
        group = self._group("r+").create_group(str(block), overwrite=True)
        for key, array in arrays.items():
            group.create_array(key, data=array)
        group.attrs["kind"] = "mapping" if isinstance(value, Mapping) else "value"
        group.attrs["complete"] = True  # last, as a block's done flag

    def load(self, block: int) -> Any:
        group = self._group("r")[str(block)]
        arrays = {key: array[...] for key, array in group.arrays()}
        return arrays if group.attrs["kind"] == "mapping" else arrays["value"]

    def remove(self) -> None:
        import zarr

        root = zarr.open_group(self.store, mode="r+")
        if self.path in root:
            del root[self.path]
        parent = self.path.rpartition("/")[0]
        while parent and parent in root and not list(root[parent].keys()):  # no empty checkpoints/ left behind
            del root[parent]
            parent = parent.rpartition("/")[0]


def _partial(partial: Callable[..., Any], checkpoint: Checkpoint | None, block: int, start: int, stop: int,
             *args: Any) -> Any:
    value = partial(block, start, stop, *args)
    if checkpoint is not None:
        checkpoint.save(block, value)
    return value


def _combine(combine: Callable[[Any, Any], Any], *values: Any) -> Any:
    total = values[0]
    for value in values[1:]:
        total = combine(total, value)
    return total


def reduce_blocks(
    client: Client,
    partial: Callable[..., Any],
    bounds: Sequence[tuple[int, int]],
    *,
    args: Sequence[Any] = (),
    combine: Callable[[Any, Any], Any] = operator.add,
    split_every: int = 8,
    checkpoint: Checkpoint | None = None,
    name: str = "",
    max_in_flight: int | None = None,
    retries: int = 2,
    progress: bool | None = True,
) -> Any:
    """``combine``-reduce ``partial(block, start, stop, *args)`` over every block, on the workers (a
    :class:`PerBlock` argument gives each block its own value).

    The tree is fixed by the block numbers: level 0 combines blocks ``[0, split_every)``, ``[split_every,
    2 split_every)`` … in order, each level the groups of the one below, so a given plan always adds in the same
    order (bit-identical results), and at most ``max_in_flight`` partials are computed at once. ``combine`` must
    be associative (sums of arrays, of dicts of arrays with a suitable function …). A partial that still fails
    after its retries raises: a reduction over a missing block would be silently wrong.

    Examples
    --------
    >>> from dzspec.cluster import make_client
    >>> def rows(block, start, stop):
    ...     return stop - start
    >>> with make_client(n_workers=1, processes=False) as client:  # doctest: +SKIP
    ...     reduce_blocks(client, rows, [(0, 3), (3, 7), (7, 8)], split_every=2, progress=False)
    8
    """
    if not bounds:
        raise ValueError(f"{name or 'reduce_blocks'}: nothing to reduce (no blocks)")
    max_in_flight = max_in_flight or 2 * worker_threads(client)
    saved = checkpoint.prepare() if checkpoint is not None else set()
    token = uuid.uuid4().hex[:8]
    stem = getattr(partial, "__name__", "partial").strip("_")
    nblocks = len(bounds)
    # level[k] holds the futures (or values) of level k by index; a group is combined once all its members exist.
    levels: list[dict[int, Any]] = [{}]
    sizes = [nblocks]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / split_every))
        levels.append({})
    running = as_completed()
    slots: dict[str, tuple[int, int]] = {}  # future key -> (level, index)
    todo = iter(range(nblocks))

    def submit_partial() -> None:
        block = next(todo, None)
        if block is None:
            return
        if block in saved:
            future = client.submit(checkpoint.load, block, key=f"dzspec-{stem}-{token}-load-{block}", pure=False)
        else:
            future = client.submit(_partial, partial, checkpoint, block, *bounds[block], *_arguments(args, block),
                                   retries=retries,
                                   key=f"dzspec-{stem}-{token}-{block}", pure=False)
        slots[future.key] = (0, block)
        running.add(future)

    def place(level: int, index: int, future: Any) -> None:
        levels[level][index] = future
        if level + 1 == len(levels):
            return
        group = index // split_every
        members = range(group * split_every, min((group + 1) * split_every, sizes[level]))
        if all(m in levels[level] for m in members):
            parts = [levels[level].pop(m) for m in members]
            if len(parts) == 1:
                place(level + 1, group, parts[0])
                return
            combined = client.submit(_combine, combine, *parts, key=f"dzspec-{stem}-{token}-l{level + 1}-{group}",
                                     pure=False)
            slots[combined.key] = (level + 1, group)
            running.add(combined)

    for _ in range(max_in_flight):  # then one more each time a partial finishes
        submit_partial()
    with tqdm(total=nblocks, desc=name or stem, disable=not progress_enabled(progress)) as bar:
        for future in running:
            level, index = slots.pop(future.key)
            if future.status == "error":
                error = future.exception()
                raise RuntimeError(f"{name or stem}: block {index} (rows {bounds[index][0]}:{bounds[index][1]}) "
                                   f"failed: {type(error).__name__}: {error}" if level == 0 else
                                   f"{name or stem}: combining group {index} of level {level} failed: {error}"
                                   ) from error
            if level == 0:
                bar.update(1)
                submit_partial()
            place(level, index, future)
    result = levels[-1][0].result()
    if checkpoint is not None:
        checkpoint.remove()
    return result
