"""deadpool on an asyncio event loop: ``asubmit``, ``amap`` and ``async with``,
none of which ever blocks the loop.

A full backlog is waited for on the loop itself. The submissions waiting on
one loop for one pool queue up in an ``_Admission``, served in arrival order;
its ``_core.RoomSignal`` is an eventfd that the backlog makes readable when a
task leaves it or the pool closes, and the loop watches that descriptor as it
watches a socket. Nothing blocks, and nothing wakes on a timer.

A task's outcome reaches its ``asyncio.Future`` from the pool's completion
thread through ``call_soon_threadsafe``; cancelling that future cancels the
task, killing it if it runs, as ``deadpool.Future.cancel()`` does.

Imported on first use of the API, so that ``import deadpool`` stays free of
asyncio.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from deadpool import _arguments as arguments
from deadpool import _core, _map
from deadpool._core import SUBMIT_ACCEPTED, SUBMIT_FULL
from deadpool._dispatcher import _remote_exception
from deadpool._exceptions import PoolClosed
from deadpool._executor import _owned_by_this_process
from deadpool._future import Future

if TYPE_CHECKING:
    from deadpool._executor import Deadpool

_CLOSED = "cannot submit: the pool has been shut down"

# ----- asubmit ----------------------------------------------------------


async def submit(
    exe: Deadpool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: Any,
    priority: Any,
    soft_timeout: Any = None,
    memory_limit: Any = None,
) -> asyncio.Future[Any]:
    """``Deadpool.asubmit``: ``submit``'s checks and errors; then the task
    waits on the running loop for room in the backlog, and its outcome comes
    as an asyncio future of that loop."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    if timeout is not None:
        timeout = arguments.check_timeout(timeout)
    priority = arguments.check_priority(priority)
    memory = exe._task_memory_limit
    if soft_timeout is not None or memory_limit is not None or memory:
        fn, args, kwargs, memory = exe._guarded(
            fn, args, kwargs, timeout, soft_timeout, memory_limit
        )
    loop = asyncio.get_running_loop()
    future, packed = exe._new_task(fn, args, kwargs)
    if packed is not None:  # else it would not pickle: the future says why
        payload, segment = packed
        await _admit(exe, loop, future, payload, priority, (timeout, memory, segment))
    return _follow(future, loop)


async def _admit(
    exe: Deadpool,
    loop: asyncio.AbstractEventLoop,
    future: Future[Any],
    payload: bytes,
    priority: int,
    limits: _Limits,
) -> None:
    """Puts the task in the backlog, first waiting (behind whoever waits
    already on this loop) while it is full. ``PoolClosed`` if the pool shuts
    down first; cancelled, it leaves no task behind."""
    futures = exe._dispatcher.futures
    task_id = future._task_id
    futures[task_id] = future  # before the core can report on it
    try:
        admission = exe._admissions.get(loop)
        if admission is None:  # nobody waits here: straight in if there is room
            reply = exe._core.try_submit(task_id, payload, priority, *limits)
            if reply == SUBMIT_ACCEPTED:
                return
            if reply != SUBMIT_FULL:
                raise PoolClosed(_CLOSED)
            admission = _Admission(exe, loop)
        await admission.wait(future, payload, priority, limits)
    except BaseException:
        futures.pop(task_id, None)
        raise


# (timeout, memory limit, segment): try_submit's last arguments.
_Limits = tuple["float | None", "int | None", Any]
# (ticket, task id, payload, priority, limits)
_Waiter = tuple["asyncio.Future[None]", int, bytes, int, _Limits]


class _Admission:
    """The submissions waiting on one loop for room in one pool's backlog, in
    arrival order, and the room signal the loop watches for them. It exists
    while some wait (registered in the pool's ``_admissions``)."""

    def __init__(self, exe: Deadpool, loop: asyncio.AbstractEventLoop) -> None:
        self._core = exe._core
        self._loop = loop
        self._registry = exe._admissions
        self._waiting: deque[_Waiter] = deque()
        self._signal = _core.RoomSignal()
        loop.add_reader(self._signal.fileno(), self._let_in)
        self._registry[loop] = self

    async def wait(
        self,
        future: Future[Any],
        payload: bytes,
        priority: int,
        limits: _Limits,
    ) -> None:
        """Returns once the task is in the backlog."""
        ticket: asyncio.Future[None] = self._loop.create_future()
        waiter = (ticket, future._task_id, payload, priority, limits)
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            self._core.notify_when_room(self._signal)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled() and ticket.exception() is None:
                # Let in just as it was cancelled: take it out again.
                future.cancel()
            else:
                self._leave(waiter)
            raise

    def _let_in(self) -> None:
        """The signal fired: let waiters in, oldest first, while there is room."""
        self._signal.clear()
        waiting = self._waiting
        while waiting:
            ticket, task_id, payload, priority, limits = waiting[0]
            if ticket.done():  # cancelled; its coroutine has yet to hear of it
                waiting.popleft()
                continue
            try:
                reply = self._core.try_submit(task_id, payload, priority, *limits)
            except Exception as exc:
                waiting.popleft()
                ticket.set_exception(exc)
                continue
            if reply == SUBMIT_FULL:
                self._core.notify_when_room(self._signal)
                return
            waiting.popleft()
            if reply == SUBMIT_ACCEPTED:
                ticket.set_result(None)
            else:
                ticket.set_exception(PoolClosed(_CLOSED))
        self._close()

    def _leave(self, waiter: _Waiter) -> None:
        try:
            self._waiting.remove(waiter)
        except ValueError:
            return
        if not self._waiting:
            self._close()

    def _close(self) -> None:
        if self._registry.get(self._loop) is self:
            del self._registry[self._loop]
        self._loop.remove_reader(self._signal.fileno())


def _follow(future: Future[Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    """An asyncio future of ``loop`` that takes ``future``'s outcome.
    Cancelling it cancels the task (killing it if it runs)."""
    outcome: asyncio.Future[Any] = loop.create_future()
    outcome.add_done_callback(partial(_cancel_task, future))
    future.add_done_callback(partial(_report, loop, outcome))
    return outcome


def _cancel_task(future: Future[Any], outcome: asyncio.Future[Any]) -> None:
    if outcome.cancelled():
        future.cancel()


def _report(
    loop: asyncio.AbstractEventLoop, outcome: asyncio.Future[Any], future: Future[Any]
) -> None:
    """On the thread that resolved ``future``, mostly the completion thread."""
    try:
        loop.call_soon_threadsafe(_copy_outcome, future, outcome)
    except RuntimeError:
        pass  # the loop is closed: nobody is left to await the outcome


def _copy_outcome(future: Future[Any], outcome: asyncio.Future[Any]) -> None:
    if outcome.done():
        return  # cancelled meanwhile
    if future.cancelled():
        outcome.cancel()
        return
    exception = future.exception()
    if exception is None:
        outcome.set_result(future.result())
    else:
        outcome.set_exception(exception)


# ----- async with -------------------------------------------------------


async def aexit(exe: Deadpool, exc_type: Any) -> None:
    """``Deadpool.__aexit__``: ``shutdown()`` with the flags ``__exit__``
    uses, awaiting the end of the work on a thread of its own. A block left
    by cancellation (or Ctrl-C) kills the work rather than wait for it, as
    Ctrl-C does to ``__exit__``; so does cancelling the wait itself."""
    if exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt)):
        cancel_pending = kill_running = wait = True
    else:
        wait = True if exe._shutdown_wait is None else exe._shutdown_wait
        cancel = bool(exe._shutdown_cancel_futures)
        cancel_pending, kill_running = cancel or not wait, cancel and not wait
    exe._close(cancel_pending, kill_running, wait=False)
    if not wait or not _owned_by_this_process(exe._owner_pid):
        return
    try:
        await _finished(exe._core)
    except asyncio.CancelledError:
        exe._stop(cancel_pending=True, kill_running=True)
        raise


async def _finished(core: Any) -> None:
    """Returns once every task is resolved and every worker gone:
    ``core.wait()`` blocks a thread of its own, not the loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wait() -> None:
        try:
            core.wait()
        finally:
            try:
                loop.call_soon_threadsafe(_set_done, done)
            except RuntimeError:
                pass  # the loop is closed

    threading.Thread(target=wait, name="deadpool-aexit", daemon=True).start()
    await done


def _set_done(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


# ----- amap -------------------------------------------------------------


def amap(
    exe: Deadpool,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    chunksize: int,
    buffersize: int | None,
) -> AsyncIterator[Any]:
    """``Deadpool.amap``: ``map``'s checks and errors, now; the tasks start
    with the iteration."""
    chunksize, buffersize = arguments.map_sizes(chunksize, buffersize)
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    exe._check_usable()
    fn, calls = _map.calls(fn, iterables, chunksize)
    bound = buffersize or default_buffersize(exe._max_workers, exe._max_backlog)
    return _results(weakref.ref(exe), fn, calls, bound, chunksize > 1)


def default_buffersize(max_workers: int, max_backlog: int) -> int:
    """What ``amap`` keeps in flight without a ``buffersize``: a task for
    every worker and a full backlog behind them, as many as the pool holds
    with nobody waiting (``max_backlog=0``, no bound, counts as
    ``max_workers``). More would only wait for room or pile up results; fewer
    would idle workers whenever a slow task holds up the results behind it."""
    return max_workers + (max_backlog or max_workers)


async def _results(
    exe: weakref.ref[Deadpool],
    fn: Callable[..., Any],
    calls: Iterator[tuple[Any, ...]],
    bound: int,
    chunked: bool,
) -> AsyncIterator[Any]:
    """The results, in input order. A feeder task reads the input and submits
    at most ``bound`` tasks ahead of the results taken. Leaving early
    cancels, and so kills, what has not been yielded, newest first."""
    slots = asyncio.Semaphore(bound)
    submitted: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue()
    feeder = asyncio.get_running_loop().create_task(_feed(exe, fn, calls, slots, submitted))
    current = None
    try:
        while (current := await submitted.get()) is not None:
            # Shielded: were our caller cancelled, asyncio would cancel (kill)
            # the running task at once, and the worker freed could start the
            # next before the finally below cancels it. The finally cancels
            # them all, newest first.
            outcome = await asyncio.shield(current)
            current = None
            slots.release()  # one more may start while the caller takes this
            values, error = outcome if chunked else ([outcome], None)
            del outcome
            # Handed over without a reference kept here (CPython issue 14406).
            values.reverse()
            while values:
                yield values.pop()
            if error is not None:
                raise _remote_exception(error)
    finally:
        feeder.cancel()
        left: list[asyncio.Future[Any] | None] = [] if current is None else [current]
        while not submitted.empty():
            left.append(submitted.get_nowait())
        for future in reversed(left):
            if future is not None and not future.cancel() and not future.cancelled():
                future.exception()  # seen: asyncio need not log it as lost


async def _feed(
    exe_ref: weakref.ref[Deadpool],
    fn: Callable[..., Any],
    calls: Iterator[tuple[Any, ...]],
    slots: asyncio.Semaphore,
    submitted: asyncio.Queue[asyncio.Future[Any] | None],
) -> None:
    """Submits ``amap``'s tasks in input order, one per free slot, then ends
    the queue with None. An input that raises, or a pool shut down meanwhile,
    gives a failed future in that input's place and ends the input. The pool
    is held weakly between tasks, as ``map`` holds it."""
    try:
        while True:
            await slots.acquire()
            try:
                args = next(calls, None)
                exe = exe_ref()
                if args is None or exe is None:
                    return
                future = await submit(exe, fn, args, {}, None, 0)
                del exe
            except Exception as exc:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(exc)
                submitted.put_nowait(future)
                return
            submitted.put_nowait(future)
    finally:
        submitted.put_nowait(None)
