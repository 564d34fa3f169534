"""``deadpool.Deadpool``: the executor. Validates input and pickles tasks;
``_dispatcher`` maps the core's events onto futures, and the Rust core does
everything else."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.spawn
import numbers
import operator
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from deadpool import _core, _worker, _zygote
from deadpool._dispatcher import Dispatcher, _remote_exception
from deadpool._exceptions import PoolClosed
from deadpool._future import Future

_START_METHODS = ("forkserver", "spawn", "fork")
_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL

_MAX_PRIORITY = 2**64 - 1
_MAX_INT = 2**63 - 1
# The largest span the core's clock can represent (u64 seconds).
_MAX_TIMEOUT = float(2**64 - 1)
# Workers are precreated: a typo must not become a fork bomb. Linux's default
# pid_max is 32768 (4194304 on large machines); no real pool comes close.
_MAX_WORKERS = 32768


class Deadpool(concurrent.futures.Executor):
    """A process pool that never breaks: a worker lost to a crash, the OOM killer,
    ``kill -9`` or a timeout costs only the task it was running."""

    def __init__(
        self,
        max_workers: int | None = None,
        min_workers: int | None = None,
        max_tasks_per_child: int | None = None,
        max_worker_memory_bytes: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        finalizer: Callable[..., Any] | None = None,
        finalargs: Iterable[Any] = (),
        max_backlog: int = 5,
        shutdown_wait: bool | None = None,
        shutdown_cancel_futures: bool | None = None,
        daemon: bool = True,
        malloc_trim_rss_memory_threshold_bytes: int | None = None,
        propagate_environ: Mapping[str, str] | None = None,
    ) -> None:
        if _zygote.preparing:
            raise RuntimeError(
                "a Deadpool was created while a worker process imported the main module; "
                'create pools under `if __name__ == "__main__":`'
            )
        sizes = _validated_sizes(
            max_workers, min_workers, max_tasks_per_child, max_worker_memory_bytes
        )
        trim_threshold = _optional(
            partial(_int_at_least, minimum=0),
            "malloc_trim_rss_memory_threshold_bytes",
            malloc_trim_rss_memory_threshold_bytes,
        )
        sizes["max_backlog"] = _int_at_least("max_backlog", max_backlog, 0)
        start_method = _start_method(mp_context)
        _check_callables(initializer=initializer, finalizer=finalizer)
        initargs = _as_tuple("initargs", initargs)
        finalargs = _as_tuple("finalargs", finalargs)
        _check_mapping("propagate_environ", propagate_environ)
        _check_flags(shutdown_wait=shutdown_wait, shutdown_cancel_futures=shutdown_cancel_futures)

        self._settings = {
            "initializer": initializer,
            "initargs": initargs,
            "finalizer": finalizer,
            "finalargs": finalargs,
            "malloc_trim_threshold": trim_threshold,
        }
        self._propagate_environ = propagate_environ
        self._max_workers = sizes["max_workers"]
        self._shutdown_wait = shutdown_wait
        self._shutdown_cancel_futures = shutdown_cancel_futures
        self.daemon = daemon
        self._ids = itertools.count()
        self._closed = False
        self._owner_pid = _this_pid
        self._dispatcher = Dispatcher()
        self._core = self._start_core(start_method, sizes)
        _live_pools.add(self._core)
        # Dropped without shutdown(): let the work finish, then release the workers.
        weakref.finalize(self, _release, self._core, self._owner_pid)

    def _start_core(self, start_method: str, sizes: dict[str, int | None]) -> Any:
        """The Rust pool, with its workers starting."""
        static_config = None if self._propagate_environ is not None else self._worker_config()
        core = _core.Pool(
            **sizes,
            start_method=start_method,
            argv=[sys.executable, *subprocess._args_from_interpreter_flags()],
            preparation=_preparation_data() if start_method != "fork" else b"",
            static_config=static_config,
            dispatch=self._dispatcher,
            make_config=self._worker_config if static_config is None else None,
            fork_zygote=_zygote.fork_zygote if start_method == "fork" else None,
        )
        self._dispatcher.note_failed = core.note_failed
        return core

    def _worker_config(self) -> bytes:
        settings = dict(self._settings)
        if self._propagate_environ is not None:
            settings["environ"] = {str(k): str(v) for k, v in dict(self._propagate_environ).items()}
        try:
            return pickle.dumps(settings, _PICKLE_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"initializer, finalizer and their arguments must be picklable: {exc}"
            ) from exc

    # ----- Executor API ---------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        deadpool_timeout: float | None = None,
        deadpool_priority: int = 0,
        **kwargs: Any,
    ) -> Future:
        """Run ``fn(*args, **kwargs)`` in a worker. Blocks while ``max_backlog``
        tasks wait (except on a thread running an asyncio event loop)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        timeout = None if deadpool_timeout is None else _check_timeout(deadpool_timeout)
        priority = deadpool_priority
        if type(priority) is not int or not 0 <= priority <= _MAX_PRIORITY:
            priority = _check_priority(priority)
        return self._enqueue(fn, args, kwargs, priority, timeout, not _on_event_loop_thread())

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        priority: int,
        timeout: float | None,
        respect_bound: bool,
    ) -> Future:
        """``submit`` with checked arguments; ``respect_bound=False`` admits the
        task past ``max_backlog`` instead of blocking."""
        self._check_usable()
        future = Future()
        task_id = next(self._ids)
        future._task_id = task_id
        future._core = self._core
        try:
            payload = pickle.dumps((fn, args, kwargs), _PICKLE_PROTOCOL)
        except Exception as exc:
            # Like the stdlib: an unpicklable task fails its own future only.
            self._core.note_rejected()
            future.set_exception(exc)
            return future
        futures = self._dispatcher.futures
        futures[task_id] = future  # before the core can report on it
        try:
            accepted = self._core.submit(task_id, payload, priority, timeout, respect_bound)
        except BaseException:
            futures.pop(task_id, None)
            raise
        if not accepted:
            futures.pop(task_id, None)
            raise PoolClosed("cannot submit: the pool has been shut down")
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map`` of Python 3.14, on every Python: results in
        input order; ``timeout`` bounds the whole iteration; with ``chunksize >
        1`` each task runs a chunk of calls; with ``buffersize``, at most that
        many tasks (chunks) are submitted and not yet yielded, and the input is
        read as results are taken (it may be endless)."""
        # The stdlib's checks, in its order (chunksize, then buffersize).
        chunksize = _int_at_least("chunksize", chunksize, 1, too_small="chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        end_time = None
        if timeout is not None:
            seconds = _seconds("timeout", timeout)
            if seconds <= threading.TIMEOUT_MAX:  # beyond it: forever
                end_time = time.monotonic() + seconds
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        if chunksize > 1:
            calls = zip(_chunks(calls, chunksize), strict=False)
            fn = partial(_worker.run_chunk, fn)
        fs: collections.deque[Future] = collections.deque()
        try:
            if buffersize is None:
                # As before 3.14: every task is submitted now, within max_backlog.
                for args in calls:
                    fs.append(self.submit(fn, *args))
                pending = None
            else:
                self._check_usable()
                pending = _Refill(self, fn, calls)
                while len(fs) < buffersize and (future := pending.next_future()) is not None:
                    fs.append(future)
        except BaseException:
            for future in fs:
                future.cancel()
            raise
        return _map_results(fs, pending, end_time, chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the pool. ``wait`` waits for running tasks; pending tasks are
        cancelled unless ``wait=True, cancel_futures=False``; ``wait=False,
        cancel_futures=True`` also kills the running tasks."""
        for name, flag in (("wait", wait), ("cancel_futures", cancel_futures)):
            if not isinstance(flag, int):  # bool, or 0/1 as older code passes
                raise TypeError(f"{name} must be a bool, not {type(flag).__name__}")
        wait, cancel_futures = bool(wait), bool(cancel_futures)
        self._close(
            cancel_pending=cancel_futures or not wait,
            kill_running=cancel_futures and not wait,
            wait=wait,
        )

    def _close(self, cancel_pending: bool, kill_running: bool, wait: bool) -> None:
        if not _owned_by_this_process(self._owner_pid):
            return  # a forked child: the parent's workers are not ours to stop
        self._closed = True
        self._stop(cancel_pending, kill_running)
        if wait:
            try:
                self._core.wait()
            except KeyboardInterrupt:
                # Ctrl-C while waiting means "stop now", not "wait harder".
                self._stop(cancel_pending=True, kill_running=True)
                raise

    def terminate_workers(self) -> None:
        """Send SIGTERM to every worker's process tree and shut the pool down
        without waiting (Python 3.14's name, on every Python): running tasks
        fail with ``deadpool.ProcessError`` naming the signal, waiting tasks are
        cancelled, and ``submit()`` raises ``deadpool.PoolClosed``."""
        self._signal_workers(signal.SIGTERM)

    def kill_workers(self) -> None:
        """``terminate_workers()`` with SIGKILL."""
        self._signal_workers(signal.SIGKILL)

    def _signal_workers(self, signum: int) -> None:
        if not _owned_by_this_process(self._owner_pid):
            return  # a forked child: the parent's workers are not ours to signal
        self._closed = True
        self._stop(cancel_pending=True, kill_running=False, signum=signum)

    def _stop(self, cancel_pending: bool, kill_running: bool, signum: int | None = None) -> None:
        for task_id in self._core.shutdown(cancel_pending, kill_running, signum):
            future = self._dispatcher.futures.pop(task_id, None)
            if future is not None:
                future._force_cancelled()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Interrupted inside the block: kill the work instead of waiting for
            # it, then wait for the workers to go.
            self._close(cancel_pending=True, kill_running=True, wait=True)
            return False
        wait = True if self._shutdown_wait is None else self._shutdown_wait
        cancel = False if self._shutdown_cancel_futures is None else self._shutdown_cancel_futures
        self.shutdown(wait=wait, cancel_futures=cancel)
        return False

    # ----- deadpool extras ------------------------------------------------

    def get_statistics(self) -> dict[str, int]:
        """The original deadpool's eight counters."""
        return self._core.statistics()

    def clear_workers(self) -> None:
        """Retire idle workers now; their replacements get the current settings
        (and a fresh copy of ``propagate_environ``)."""
        self._check_usable()
        self._core.clear_workers()

    def _check_usable(self) -> None:
        if not _owned_by_this_process(self._owner_pid):
            raise PoolClosed(
                f"this pool belongs to process {self._owner_pid}; "
                "a process made by os.fork() must create its own pool"
            )
        if self._closed:
            raise PoolClosed("cannot submit: the pool has been shut down")


# ----- input checks -------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_at_least(
    name: str,
    value: Any,
    minimum: int,
    maximum: int = _MAX_INT,
    *,
    not_int: str | None = None,
    too_small: str | None = None,
) -> int:
    """``value`` as an int in [minimum, maximum]. ``not_int`` and ``too_small``
    are the stdlib's wording of the same check, where it has one."""
    if not _is_int(value):
        raise TypeError(not_int or f"{name} must be an int, not {type(value).__name__}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(too_small or f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _positive_int(name: str, value: Any) -> int:
    return _int_at_least(name, value, 1)


def _optional(check: Callable[..., int], name: str, value: Any) -> int | None:
    return None if value is None else check(name, value)


def _as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a tuple of arguments, not {type(value).__name__}")
    return tuple(value)


def _validated_sizes(
    max_workers: Any, min_workers: Any, max_tasks_per_child: Any, max_worker_memory_bytes: Any
) -> dict[str, int | None]:
    """The pool's sizes and limits, as the core's keyword arguments. The
    defaults: max_workers, all the CPUs we may run on; min_workers, max_workers."""
    if max_workers is None:
        max_workers = len(os.sched_getaffinity(0))
    max_workers = _int_at_least(
        "max_workers", max_workers, 1, _MAX_WORKERS, too_small="max_workers must be greater than 0"
    )
    min_workers = (
        max_workers if min_workers is None else _int_at_least("min_workers", min_workers, 0)
    )
    if min_workers > max_workers:
        raise ValueError(f"min_workers ({min_workers}) must not exceed max_workers ({max_workers})")
    return {
        "max_workers": max_workers,
        "min_workers": min_workers,
        "max_tasks_per_child": _optional(
            partial(
                _int_at_least,
                minimum=1,
                not_int="max_tasks_per_child must be an integer",
                too_small="max_tasks_per_child must be >= 1",
            ),
            "max_tasks_per_child",
            max_tasks_per_child,
        ),
        "max_worker_memory_bytes": _optional(
            _positive_int, "max_worker_memory_bytes", max_worker_memory_bytes
        ),
    }


def _check_callables(**callables: Any) -> None:
    for name, fn in callables.items():
        if fn is not None and not callable(fn):
            if name == "initializer":  # the stdlib's words
                raise TypeError("initializer must be a callable")
            raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")


def _check_mapping(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping or None, not {type(value).__name__}")


def _check_flags(**flags: Any) -> None:
    for name, flag in flags.items():
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool or None, not {type(flag).__name__}")


def _check_timeout(timeout: Any) -> float | None:
    """``deadpool_timeout`` (not None) as seconds; None for infinity."""
    timeout = _seconds("deadpool_timeout", timeout)
    if math.isinf(timeout):
        return None
    if timeout > _MAX_TIMEOUT:
        raise ValueError(
            f"deadpool_timeout must be between 0 and {_MAX_TIMEOUT:.3g} s, got {timeout}"
        )
    return timeout


def _seconds(name: str, value: Any) -> float:
    """A non-negative number of seconds (infinity allowed), as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large to be a number of seconds") from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return seconds


def _check_priority(priority: Any) -> int:
    return _int_at_least("deadpool_priority", priority, 0, _MAX_PRIORITY)


def _start_method(mp_context: Any) -> str:
    if mp_context is None:
        return "forkserver"
    if isinstance(mp_context, str):
        method = mp_context
    elif isinstance(mp_context, multiprocessing.context.BaseContext):
        method = mp_context.get_start_method()
    else:
        raise ValueError(
            f"mp_context must be one of {_START_METHODS} or a multiprocessing context, "
            f"not {mp_context!r}"
        )
    if method not in _START_METHODS:
        raise ValueError(f"mp_context must be one of {_START_METHODS}, not {method!r}")
    return method


def _preparation_data() -> bytes:
    """What a fresh interpreter needs to unpickle the parent's tasks: sys.path,
    the working directory and the ``__main__`` module (stdlib's public way)."""
    # It carries this process's authkey, as multiprocessing's own children
    # get it: Manager proxies passed to tasks authenticate with it. It travels
    # only over the zygote's private control socket.
    data = multiprocessing.spawn.get_preparation_data("deadpool-zygote")
    data["authkey"] = bytes(data["authkey"])  # pickles outside a spawning context
    return pickle.dumps(data, _PICKLE_PROTOCOL)


def _on_event_loop_thread() -> bool:
    """Blocking here would stall every coroutine on this thread's running loop."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio.events._get_running_loop() is not None


class _Refill:
    """The input of a ``map(..., buffersize=n)`` not yet submitted: one more
    task each time a result is taken. The pool is held weakly, as the stdlib
    does, so that an unfinished iterator does not keep it alive."""

    def __init__(self, exe: Deadpool, fn: Callable[..., Any], calls: Iterator[Any]) -> None:
        self._exe = weakref.ref(exe)
        self._fn = fn
        self._calls: Iterator[Any] | None = calls

    def next_future(self) -> Future | None:
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
            return exe._enqueue(self._fn, args, {}, 0, None, False)
        except Exception as exc:
            self._calls = None
            failed = Future()
            failed.set_exception(exc)
            return failed


def _map_results(
    fs: collections.deque[Future], refill: _Refill | None, end_time: float | None, chunked: bool
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
            if not chunked:
                yield outcome
                continue
            yield from results
            if error is not None:
                raise _remote_exception(error)
    finally:
        # Newest first, as the stdlib does: cancelling (killing) the oldest
        # first would free its worker for the next one meanwhile.
        for future in reversed(fs):
            future.cancel()


def _result_or_cancel(future: Future, end_time: float | None) -> Any:
    try:
        try:
            return future.result(None if end_time is None else end_time - time.monotonic())
        finally:
            future.cancel()  # timed out: kill it (a finished one ignores this)
    finally:
        del future  # no cycle through the exception's traceback


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


# ----- process-wide hooks -------------------------------------------------

_live_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def _release(core: Any, owner_pid: int) -> None:
    if _owned_by_this_process(owner_pid):
        core.shutdown(False, False)


def _finish_pools_at_exit() -> None:
    """Like the stdlib: work submitted before exit still completes."""
    for pool in list(_live_pools):
        pool.shutdown(False, False)
    for pool in list(_live_pools):
        pool.wait()


# This process's pid, kept current by the fork hook so that submit() (the hot
# path) needs no getpid() system call to notice it runs in a forked child.
_this_pid = os.getpid()


def _owned_by_this_process(owner_pid: int) -> bool:
    """False in a child made by os.fork(): a pool belongs to the process that made it."""
    return _this_pid == owner_pid


def _after_fork_in_child() -> None:
    global _this_pid
    _this_pid = os.getpid()
    _live_pools.clear()
    _core.forget_zygote_after_fork()


threading._register_atexit(_finish_pools_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
