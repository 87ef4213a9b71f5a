"""Submit many tasks with a bounded number in flight, with retries and a progress bar."""

from __future__ import annotations

import resource
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from distributed import Client, as_completed
from tqdm.auto import tqdm

__all__ = ["map_bounded", "peak_rss_bytes"]


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
    progress: bool = True,
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Run ``func(*args)`` for each ``(label, args)`` of ``tasks``, yielding ``(label, result, error)`` as done.

    At most ``max_in_flight`` tasks (default: twice the cluster's threads) are submitted at once, so neither the
    scheduler nor the workers ever hold the whole workload. A task that still fails after ``retries`` yields its
    exception instead of raising, so one bad task never stops the others.
    """
    if max_in_flight is None:
        max_in_flight = 2 * max(1, sum(client.nthreads().values()))
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
    with tqdm(total=total, initial=initial, desc=desc or name, disable=not progress) as bar:
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


def peak_rss_bytes() -> int:
    """Peak resident memory of this (worker) process so far; tasks return it so runs can report it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
