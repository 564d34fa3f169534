"""The dispatcher: where the core's completion thread hands over what happened
to tasks, and futures learn of it (the event kinds are in src/wire/dispatch.rs)."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from concurrent.futures.process import _RemoteTraceback
from typing import Any

from deadpool import _payload
from deadpool._core import (
    CANCEL_REMOVED_PENDING,
    EVENT_CANCELLED,
    EVENT_OVER_MEMORY,
    EVENT_RAISED,
    EVENT_RETURNED,
    EVENT_STARTED,
)
from deadpool._exceptions import MemoryLimitError, ProcessError, TimeoutError
from deadpool._future import Future

logger = logging.getLogger("deadpool")


class Dispatcher:
    """Called by the core's completion thread with a batch of
    ``(kind, task_id, pid, payload)`` events. An outcome carries the worker's
    pid (else None) when its start was reported in the same batch."""

    def __init__(self) -> None:
        self.futures: dict[int, Future] = {}
        self.core: Any = None  # set as soon as the core exists
        self.note_failed: Callable[[], None] = lambda: None
        # Held by shutdown from the moment it tells the core to stop until it
        # has taken the futures of the pending tasks it removed, so that
        # abandon(), which runs once the core has stopped, cannot take them
        # first. (Reentrant: shutdown may be called from a signal handler.)
        self.removing = threading.RLock()

    def cancel(self, task_id: int) -> int:
        """``Future.cancel``'s way to the core. A task taken out of the backlog
        gets no event, so its future leaves ``futures`` here."""
        reply: int = self.core.cancel(task_id)
        if reply == CANCEL_REMOVED_PENDING:
            self.futures.pop(task_id, None)
        return reply

    def __call__(self, events: list[tuple[int, int, int | None, Any]]) -> None:
        futures = self.futures
        for kind, task_id, pid, payload in events:
            # A user callback raising anything (even SystemExit) must cost
            # nothing but itself: every other event of the batch is delivered.
            try:
                if kind == EVENT_STARTED:
                    future = futures.get(task_id)
                    if future is not None:
                        future._started(pid)
                    continue
                future = futures.pop(task_id, None)
                if future is None:
                    continue  # cancelled, and already resolved by cancel()
                if pid is not None:
                    # Started in the same batch: the core folded it in here.
                    future._started(pid, running=False)
                self._finish(future, kind, payload)
            except BaseException:
                logger.exception("deadpool: a callback of task %d raised", task_id)

    def abandon(self) -> None:
        """The core has stopped for good: nothing left here will ever be resolved
        by it (normally nothing is left), so fail it rather than let it hang."""
        with self.removing:
            left = list(self.futures.values())
            self.futures.clear()
        for future in left:
            future._resolve(
                exception=ProcessError(
                    "deadpool stopped before this task finished (internal error)", reason="lost"
                )
            )

    def _finish(self, future: Future, kind: int, payload: Any) -> None:
        try:
            self._settle(future, kind, payload)
        except BaseException as exc:
            if not future.done():
                error = ProcessError(
                    f"deadpool could not deliver the outcome: {exc!r}", reason="lost"
                )
                future._resolve(exception=error)
            raise

    def _settle(self, future: Future, kind: int, payload: Any) -> None:
        if kind == EVENT_RETURNED:
            try:
                if type(payload) is bytes:
                    result = pickle.loads(payload)
                else:
                    result = self._shared_result(payload)
            except BaseException as exc:
                self.note_failed()
                error = ProcessError(
                    f"the task's result could not be unpickled: {exc!r}", reason="lost"
                )
                error.__cause__ = exc
                future._resolve(exception=error)
                return
            future._resolve(result)
        elif kind == EVENT_RAISED:
            future._resolve(exception=_remote_exception(payload))
        elif kind == EVENT_CANCELLED:
            future._force_cancelled()
        elif kind == EVENT_OVER_MEMORY:
            raised, limit = payload
            cause = _remote_exception(raised)
            error = MemoryLimitError(
                "the task raised MemoryError under its memory limit of "
                f"{limit / 2**20:.1f} MiB; worker {future.pid} was replaced",
                memory_limit=limit,
                pid=future.pid,
            )
            error.__cause__ = cause
            future._resolve(exception=error)
        else:  # EVENT_TIMED_OUT, EVENT_LOST: the payload says how the worker ended
            future._resolve(exception=_worker_end(payload))

    def _shared_result(self, payload: tuple[bytes, Any]) -> Any:
        """A result whose large buffers came through shared memory: ``(body,
        segment)`` (``_payload``)."""
        body, segment = payload
        try:
            result, nbytes = _payload.loads(body, segment.read)
        finally:
            segment.release()
        self.core.note_shared_bytes(nbytes)
        return result


def _worker_end(payload: tuple[Any, ...]) -> BaseException:
    """The error of a task whose worker ended, from the core's ``(message,
    reason, pid, exitcode, max_rss, memory_used, memory_limit)``."""
    message, reason, pid, exitcode, max_rss, used, limit = payload
    signum = -exitcode if exitcode is not None and exitcode < 0 else None
    end = {"pid": pid, "exitcode": exitcode, "signal": signum, "max_rss": max_rss}
    if reason == "timeout":
        return TimeoutError(message, reason=reason, **end)
    if reason == "memory":
        return MemoryLimitError(message, memory_limit=limit, memory_used=used, **end)
    return ProcessError(message, reason=reason, **end)


def _remote_exception(payload: bytes) -> BaseException:
    """The exception a task raised, from ``_worker._pickle_exception``'s
    ``(pickled exception or None, repr, traceback text)``, with the worker's
    traceback as its ``__cause__``: the stdlib's own ``_RemoteTraceback``,
    formatted as the stdlib formats it. An exception that unpickles with an
    error is replaced by that error (the worker's traceback still attached);
    one the worker could not pickle at all becomes ``ProcessError``."""
    try:
        exc_bytes, description, tb = pickle.loads(payload)
    except BaseException as error:
        return ProcessError(f"the task's exception could not be read: {error!r}", reason="lost")
    if exc_bytes is None:
        return ProcessError(
            f"the task raised an exception that could not be pickled: {description}\n{tb}",
            reason="lost",
        )
    try:
        exc = pickle.loads(exc_bytes)
    except BaseException as error:
        exc = error
    if not isinstance(exc, BaseException):
        exc = ProcessError(
            f"the task raised {description}, which unpickled as a {type(exc).__name__}",
            reason="lost",
        )
    exc.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
    return exc
