"""``deadpool.Deadpool``: the executor. Validates input and pickles tasks;
``_dispatcher`` maps the core's events onto futures, and the Rust core does
everything else."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import multiprocessing.context
import multiprocessing.spawn
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from deadpool import _arguments as arguments
from deadpool import _core, _map, _payload, _pickling, _settings, _worker, _zygote
from deadpool._dispatcher import Dispatcher
from deadpool._exceptions import PoolClosed
from deadpool._future import Future

if TYPE_CHECKING:
    import asyncio

_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
# Read by submit(), the hot path, as a plain global.
_MAX_PRIORITY = arguments.MAX_PRIORITY
_T = TypeVar("_T")


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
        task_memory_limit_bytes: int | None = None,
        max_shared_memory_bytes: int | None = None,
    ) -> None:
        if _zygote.preparing:
            raise RuntimeError(
                "a Deadpool was created while a worker process imported the main module; "
                'create pools under `if __name__ == "__main__":`'
            )
        sizes = arguments.validated_sizes(
            max_workers, min_workers, max_tasks_per_child, max_worker_memory_bytes
        )
        sizes["max_backlog"] = arguments.int_at_least("max_backlog", max_backlog, 0)
        sizes["max_shared_memory_bytes"] = arguments.shared_memory_cap(max_shared_memory_bytes)
        self._task_memory_limit = arguments.optional(
            arguments.positive_int, "task_memory_limit_bytes", task_memory_limit_bytes
        )
        start_method = arguments.start_method(mp_context)
        self._settings = arguments.worker_settings(
            initializer, initargs, finalizer, finalargs, malloc_trim_rss_memory_threshold_bytes
        )
        self._shared_cap = self._settings["max_shared_memory_bytes"] = sizes[
            "max_shared_memory_bytes"
        ]
        arguments.check_mapping("propagate_environ", propagate_environ)
        arguments.check_flags(
            shutdown_wait=shutdown_wait, shutdown_cancel_futures=shutdown_cancel_futures
        )
        self._propagate_environ = propagate_environ
        self._max_workers = sizes["max_workers"]
        self._max_backlog = sizes["max_backlog"]
        self._shutdown_wait = shutdown_wait
        self._shutdown_cancel_futures = shutdown_cancel_futures
        self.daemon = daemon
        self._ids = itertools.count()
        self._closed = False
        self._owner_pid = _this_pid
        # Workers cannot import an interactive __main__ (python -c, a
        # notebook): what a task takes from it must travel by value.
        self._main_by_value = not _pickling.main_is_importable()
        self._dispatcher = Dispatcher()
        # asyncio: per event loop, the submissions waiting there for room (_asyncio.py).
        self._admissions: dict[Any, Any] = {}
        self._core = self._start_core(start_method, sizes)
        self._dispatcher.core = self._core
        _live_pools.add(self._core)
        # Dropped without shutdown(): let the work finish, then release the workers.
        weakref.finalize(self, _release, self._core, self._owner_pid)

    def _start_core(self, start_method: str, sizes: dict[str, int | None]) -> Any:
        """The Rust pool, with its workers starting."""
        self._inherits = start_method == "fork"
        fork_zygote = forked_zygote = None
        if self._inherits:
            # Workers come from a zygote forked here and now, and take the
            # live objects from it; their settings frame says so (and brings
            # a fresh propagate_environ).
            fork_zygote = partial(_zygote.fork_zygote, partial(dict, self._settings))
            forked_zygote = fork_zygote()
            static_config = None if self._propagate_environ else pickle.dumps({"inherited": True})
        elif self._propagate_environ is None:
            static_config = _settings.for_every_worker(self._settings)
        else:
            static_config = None
            # Made per worker (a fresh environment each time); a TypeError now
            # rather than in every worker.
            _settings.for_every_worker(self._settings)
        core = _core.Pool(
            **sizes,
            start_method=start_method,
            argv=[sys.executable, *subprocess._args_from_interpreter_flags()],
            preparation=_preparation_data() if start_method != "fork" else b"",
            static_config=static_config,
            dispatch=self._dispatcher,
            make_config=self._worker_config if static_config is None else None,
            fork_zygote=fork_zygote,
            forked_zygote=forked_zygote,
        )
        self._dispatcher.note_failed = core.note_failed
        return core

    def _worker_config(self) -> bytes:
        """A new worker's settings, made for it alone (see ``_settings``)."""
        if self._inherits:
            environ = _settings.snapshot({}, self._propagate_environ)
            return pickle.dumps({"inherited": True, **environ}, _PICKLE_PROTOCOL)
        return _settings.for_one_worker(_settings.snapshot(self._settings, self._propagate_environ))

    # ----- Executor API ---------------------------------------------------

    def submit(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        deadpool_timeout: float | None = None,
        deadpool_priority: int = 0,
        deadpool_soft_timeout: float | None = None,
        deadpool_memory_limit: int | None = None,
        **kwargs: Any,
    ) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` in a worker. Blocks while ``max_backlog``
        tasks wait (except on a thread running an asyncio event loop).
        ``deadpool_soft_timeout`` raises ``SoftTimeoutError`` in the task;
        ``deadpool_memory_limit`` (default: the pool's
        ``task_memory_limit_bytes``) bounds what its processes may grow by."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        timeout = None if deadpool_timeout is None else arguments.check_timeout(deadpool_timeout)
        priority = deadpool_priority
        if type(priority) is not int or not 0 <= priority <= _MAX_PRIORITY:
            priority = arguments.check_priority(priority)
        memory = self._task_memory_limit
        if deadpool_soft_timeout is not None or deadpool_memory_limit is not None or memory:
            fn, args, kwargs, memory = self._guarded(
                fn, args, kwargs, timeout, deadpool_soft_timeout, deadpool_memory_limit
            )
        respect_bound = not _on_event_loop_thread()
        return self._enqueue(fn, args, kwargs, priority, timeout, respect_bound, memory)

    def _guarded(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        soft_timeout: Any,
        memory_limit: Any,
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], int | None]:
        """A task with a soft timeout or a memory limit runs inside
        ``_worker.guarded_call`` (plain tasks do not). Returns the call to
        pickle and the memory limit (the task's, else the pool's)."""
        soft = arguments.check_soft_timeout(soft_timeout, timeout)
        memory = (
            self._task_memory_limit
            if memory_limit is None
            else arguments.positive_int("deadpool_memory_limit", memory_limit)
        )
        if soft is None and memory is None:
            return fn, args, kwargs, None
        return _worker.guarded_call, (fn, args, kwargs, soft, memory is not None), {}, memory

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        priority: int,
        timeout: float | None,
        respect_bound: bool,
        memory_limit: int | None = None,
    ) -> Future[Any]:
        """``submit`` with checked arguments; ``respect_bound=False`` admits the
        task past ``max_backlog`` instead of blocking."""
        future, packed = self._new_task(fn, args, kwargs)
        if packed is None:
            return future
        task_id = future._task_id
        futures = self._dispatcher.futures
        futures[task_id] = future  # before the core can report on it
        try:
            accepted = self._core.submit(
                task_id, packed[0], priority, timeout, respect_bound, memory_limit, packed[1]
            )
        except BaseException:
            futures.pop(task_id, None)
            raise
        if not accepted:
            futures.pop(task_id, None)
            raise PoolClosed("cannot submit: the pool has been shut down")
        return future

    def _new_task(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Future[Any], tuple[bytes, Any] | None]:
        """A new task's future and ``(payload, segment)`` (``_payload``), on a
        pool that takes tasks. A task that will not pickle, or is too large,
        gets None and a failed future."""
        self._check_usable()
        future: Future[Any] = Future()
        future._task_id = next(self._ids)
        future._pool = self._dispatcher
        try:
            packed = _payload.pack_task(
                self._core, (fn, args, kwargs), self._shared_cap, self._main_by_value
            )
        except Exception as exc:
            # Like the stdlib: an unpicklable task fails its own future only.
            self._core.note_rejected()
            future.set_exception(exc)
            return future, None
        return future, packed

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[_T]:
        """Like ``Executor.map`` of Python 3.14, on every Python: results in
        input order; ``timeout`` bounds the whole iteration; with ``chunksize >
        1`` each task runs a chunk of calls; with ``buffersize``, at most that
        many tasks (chunks) are submitted and not yet yielded, and the input is
        read as results are taken (it may be endless)."""
        chunksize, buffersize = arguments.map_sizes(chunksize, buffersize)
        end_time = None
        if timeout is not None:
            seconds = arguments.seconds("timeout", timeout)
            if seconds <= threading.TIMEOUT_MAX:  # beyond it: forever
                end_time = time.monotonic() + seconds
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        task, calls = _map.calls(fn, iterables, chunksize)
        fs: collections.deque[Future[Any]] = collections.deque()
        try:
            if buffersize is None:
                # As before 3.14: every task is submitted now, within max_backlog.
                for args in calls:
                    fs.append(self.submit(task, *args))
                pending = None
            else:
                self._check_usable()
                pending = _map.Refill(self, task, calls)
                while len(fs) < buffersize and (future := pending.next_future()) is not None:
                    fs.append(future)
        except BaseException:
            for future in fs:
                future.cancel()
            raise
        return _map.results(fs, pending, end_time, chunksize > 1)

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
        dispatcher = self._dispatcher
        # The removed tasks' futures are taken before any is resolved: their
        # callbacks may take a while, and the pool may finish meanwhile.
        with dispatcher.removing:
            removed = self._core.shutdown(cancel_pending, kill_running, signum)
            futures = [dispatcher.futures.pop(task_id, None) for task_id in removed]
        for future in futures:
            if future is not None:
                future._force_cancelled()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Interrupted inside the block: kill the work instead of waiting for
            # it, then wait for the workers to go.
            self._close(cancel_pending=True, kill_running=True, wait=True)
            return False
        wait = True if self._shutdown_wait is None else self._shutdown_wait
        cancel = False if self._shutdown_cancel_futures is None else self._shutdown_cancel_futures
        self.shutdown(wait=wait, cancel_futures=cancel)
        return False

    # ----- asyncio (in _asyncio.py) ---------------------------------------

    async def asubmit(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        deadpool_timeout: float | None = None,
        deadpool_priority: int = 0,
        deadpool_soft_timeout: float | None = None,
        deadpool_memory_limit: int | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[_T]:
        """``submit`` for coroutines: waits, without blocking the event loop,
        while ``max_backlog`` tasks wait, then returns an ``asyncio.Future``.
        Cancelling it cancels the task, killing it if it runs."""
        from deadpool import _asyncio

        return await _asyncio.submit(
            self,
            fn,
            args,
            kwargs,
            deadpool_timeout,
            deadpool_priority,
            deadpool_soft_timeout,
            deadpool_memory_limit,
        )

    def amap(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> AsyncIterator[_T]:
        """``map`` for coroutines: an async iterator of the results, in input
        order, with at most ``buffersize`` tasks (default: ``max_workers +
        max_backlog``) submitted and not yet yielded. Leaving it early cancels
        what it has not yielded."""
        from deadpool import _asyncio

        return _asyncio.amap(self, fn, iterables, chunksize, buffersize)

    async def __aenter__(self) -> Deadpool:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        """``__exit__``'s shutdown, awaited without blocking the event loop."""
        from deadpool import _asyncio

        await _asyncio.aexit(self, exc_type)
        return False

    # ----- deadpool extras ------------------------------------------------

    def get_statistics(self) -> dict[str, int]:
        """The original deadpool's eight counters, then ``tasks_timed_out``,
        ``tasks_over_memory_limit``, ``worker_processes_killed_by_signal`` and
        ``bytes_through_shared_memory``."""
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
