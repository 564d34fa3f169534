"""``deadpool.Future``: a ``concurrent.futures.Future`` that knows its worker.

Unlike the stdlib pool, a running task can be cancelled: its worker is killed and
the future ends CANCELLED. The state changes below follow the stdlib's state
machine, so ``wait()`` and ``as_completed()`` see every transition.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any, TypeVar

from deadpool._core import CANCEL_NOT_FOUND

logger = logging.getLogger("deadpool")

_T = TypeVar("_T")


class _Condition(threading.Condition):
    """A ``threading.Condition`` over an ``RLock``, as the stdlib's futures use,
    minus the five bound methods the stdlib's makes per instance: a future is
    made per task, and every object it allocates is more work for the cyclic
    GC (a fifth of the caller's time with 20,000 futures alive)."""

    def __init__(self) -> None:  # deliberately not threading.Condition.__init__
        self._lock = threading.RLock()
        self._waiters: collections.deque[Any] = collections.deque()

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined]


class Future(concurrent.futures.Future[_T]):
    def __init__(self) -> None:
        # concurrent.futures.Future.__init__'s attributes (the same from 3.10
        # to 3.13; a test compares them), with the leaner condition.
        self._condition = _Condition()
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Future], object]] = []
        self._pid: int | None = None
        # Made on first use: most futures never get a pid callback, and every
        # container allocated per task is more work for the cyclic GC.
        self._pid_callbacks: list[Callable[[Future], Any]] | None = None
        self._task_id: int | None = None
        # The pool's dispatcher (shared, not a bound method per task): cancel(task_id).
        self._pool: Any = None

    @property
    def pid(self) -> int | None:
        """The pid of the worker process running (or that ran) this task."""
        return self._pid

    def add_pid_callback(self, fn: Callable[[Future[_T]], Any]) -> None:
        """Call ``fn(future)`` once the task starts on a worker (at once if it has)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._condition:
            if self._pid is None:
                if self._pid_callbacks is None:
                    self._pid_callbacks = []
                self._pid_callbacks.append(fn)
                return
        self._run_pid_callback(fn)

    def cancel(self) -> bool:
        """Cancel the task. A pending task is removed; a running task's worker is
        killed. Returns False only if the task already finished."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
        if self._pool is None or self._task_id is None:
            return super().cancel()
        if self._pool.cancel(self._task_id) == CANCEL_NOT_FOUND:
            # Finishing at this moment: its outcome is on the way.
            return self.cancelled()
        return self._force_cancelled()

    def cancel_and_kill_if_running(self) -> bool:
        """The explicit name for ``cancel()``: kills the worker if the task runs."""
        return self.cancel()

    # ----- called by the executor ---------------------------------------

    def _started(self, pid: int, running: bool = True) -> None:
        """The task reached worker ``pid``. ``running=False``: it has also
        finished already (both reported together), so the RUNNING state, which
        nobody could observe, is skipped; pid callbacks still run first."""
        with self._condition:
            if self._state != PENDING:
                return
            if running:
                self._state = RUNNING
            self._pid = pid
            callbacks, self._pid_callbacks = self._pid_callbacks, None
        if callbacks:
            for fn in callbacks:
                self._run_pid_callback(fn)

    def _force_cancelled(self) -> bool:
        """End CANCELLED from PENDING or RUNNING, waking every waiter."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True

    def _resolve(self, result: Any = None, exception: BaseException | None = None) -> None:
        """Set the outcome unless the future was cancelled meanwhile."""
        try:
            if exception is None:
                self.set_result(result)
            else:
                self.set_exception(exception)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled (its worker killed) while the outcome was in flight

    def _run_pid_callback(self, fn: Callable[[Future[_T]], Any]) -> None:
        try:
            fn(self)
        except BaseException:
            # Even SystemExit: a callback must not take the pool's thread down.
            logger.exception("pid callback %r of %r raised", fn, self)
