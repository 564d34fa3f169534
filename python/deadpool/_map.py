"""The results side of ``map()``: futures taken in input order, the input
read as results are taken (``buffersize``), and the chunks of
``chunksize``."""

from __future__ import annotations

import collections
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from deadpool import _worker
from deadpool._dispatcher import _remote_exception
from deadpool._future import Future

if TYPE_CHECKING:
    from deadpool._executor import Deadpool


def calls(
    fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], chunksize: int
) -> tuple[Callable[..., Any], Iterator[tuple[Any, ...]]]:
    """The tasks of a map, as ``(function, iterator of argument tuples)``: one
    call per input, or with ``chunksize > 1`` one ``run_chunk`` per chunk."""
    args: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
    if chunksize == 1:
        return fn, args
    return partial(_worker.run_chunk, fn), zip(chunks(args, chunksize), strict=False)


class Refill:
    """The input of a ``map(..., buffersize=n)`` not yet submitted: one more
    task each time a result is taken. The pool is held weakly, as the stdlib
    does, so that an unfinished iterator does not keep it alive."""

    def __init__(self, exe: Deadpool, fn: Callable[..., Any], calls: Iterator[Any]) -> None:
        self._exe = weakref.ref(exe)
        self._fn = fn
        self._calls: Iterator[Any] | None = calls

    def next_future(self) -> Future[Any] | None:
        """The next task's future, or None once the input (or the pool) is gone.
        The buffer is the bound, so the task is admitted past ``max_backlog``:
        waiting for room there could wait for results nobody has yet been
        given the chance to take. An input that raises, or a pool shut down
        meanwhile, gives a failed future: the error comes in that input's
        place, after the results before it."""
        calls = self._calls
        exe = self._exe()
        if calls is None or exe is None:
            return None
        try:
            args = next(calls, None)
            if args is None:
                self._calls = None
                return None
            fn, kwargs, memory = self._fn, {}, exe._task_memory_limit
            if memory is not None:  # the pool's limit holds for map's tasks too
                fn, args, kwargs, memory = exe._guarded(fn, args, kwargs, None, None, None)
            return exe._enqueue(fn, args, kwargs, 0, None, False, memory)
        except Exception as exc:
            self._calls = None
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed


def results(
    fs: collections.deque[Future[Any]], refill: Refill | None, end_time: float | None, chunked: bool
) -> Iterator[Any]:
    """``map()``'s results, in order. Leaving early cancels (and so kills) what
    has not been yielded."""
    try:
        while fs:
            outcome = _result_or_cancel(fs.popleft(), end_time)
            if chunked:
                results, error = outcome
            if refill is not None and not (chunked and error is not None):
                # The oldest task is done: one more may start while the caller
                # takes this result.
                future = refill.next_future()
                if future is None:
                    refill = None
                else:
                    fs.append(future)
                    del future
            # Hand each result over without keeping a reference to it here
            # (the caller may want it collected: CPython issue 14406).
            if not chunked:
                box = [outcome]
                del outcome
                yield box.pop()
                continue
            results.reverse()
            while results:
                yield results.pop()
            if error is not None:
                raise _remote_exception(error)
    finally:
        # Newest first, as the stdlib does: cancelling (killing) the oldest
        # first would free its worker for the next one meanwhile.
        for future in reversed(fs):
            future.cancel()


def _result_or_cancel(future: Future[Any], end_time: float | None) -> Any:
    try:
        try:
            return future.result(None if end_time is None else end_time - time.monotonic())
        finally:
            future.cancel()  # timed out: kill it (a finished one ignores this)
    finally:
        del future  # no cycle through the exception's traceback


def chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk
