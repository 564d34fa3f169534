"""Deadpool as the process pool of every Dask worker.

Dask distributed schedules, moves data, retries and deploys; each of its
workers runs the tasks routed to it here in a Deadpool of its own, so that a
task can be killed on a timeout (its whole process tree), and a task that
crashes, leaks or is OOM-killed costs only itself, never the Dask worker.

- ``DeadpoolPlugin(**deadpool_kwargs)``: a ``WorkerPlugin`` that gives each
  Dask worker a Deadpool, registered as ``worker.executors["deadpool"]``;
- ``annotate(timeout=None, priority=None, **annotations)``: a context manager
  over ``dask.annotate`` that routes the tasks submitted inside it to that
  pool, with per-task deadpool options;
- ``dask worker SCHEDULER --preload deadpool.dask --deadpool-timeout 600 ...``:
  the same plugin, set up by whoever starts the workers.

How a task reaches its pool: for an executor that is not a thread pool, a
Dask worker calls ``executor.submit(distributed.worker._run_task_simple,
task, data, delay)`` on its event loop thread. The executor here finds the
task's annotations in the worker's state by ``task.key`` and passes the
deadpool options among them to ``Deadpool.submit`` as ``deadpool_timeout``
and ``deadpool_priority``. The deadpool worker runs ``_run_task_simple``
itself (``_run_in_child``), which calls the user's function and returns the
message the Dask worker expects. That calling convention is Dask's own, not
a public API: if a release changes it, tasks still run in the pool, without
per-task options and without being killed on cancel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import math
import os
import pkgutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

try:
    import click
    import dask
    from distributed import Reschedule
    from distributed.diagnostics.plugin import WorkerPlugin
    from distributed.worker import _run_task_simple
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "deadpool.dask needs Dask's distributed: pip install 'deadpool-executor[dask]'"
    ) from exc

import deadpool
from deadpool import _arguments as arguments
from deadpool import _worker

__all__ = ["EXECUTOR", "DeadpoolPlugin", "annotate", "dask_setup"]

# The name of the pool in ``worker.executors``, in the ``executor``
# annotation, and of the plugin; also the annotation holding per-task options.
EXECUTOR = "deadpool"

_POOL_PARAMETERS = frozenset(inspect.signature(deadpool.Deadpool).parameters)


# ----- annotate -------------------------------------------------------------


@contextlib.contextmanager
def annotate(
    timeout: float | None = None, priority: int | None = None, **annotations: Any
) -> Iterator[None]:
    """Run the tasks submitted inside the block in the Dask workers' Deadpools.

    ``timeout`` and ``priority`` are each task's ``deadpool_timeout`` and
    ``deadpool_priority``, checked here as ``Deadpool.submit`` checks them
    (``math.inf`` means no timeout, overriding an outer block's or the
    plugin's). Left at None, they come from an enclosing ``annotate`` block,
    else the plugin's ``timeout`` and priority 0. Any other keyword is a Dask
    annotation, passed on unchanged (``retries``, ``resources``, ...).

    Wrap the ``submit``/``map``/``compute`` call: Dask drops annotations made
    while a collection is built when it fuses the graph."""
    options = dict(dask.get_annotations().get(EXECUTOR) or {})
    if timeout is not None:
        checked = arguments.check_timeout(timeout)
        options["timeout"] = math.inf if checked is None else checked
    if priority is not None:
        options["priority"] = arguments.check_priority(priority)
    if options:
        annotations[EXECUTOR] = options
    with dask.annotate(executor=EXECUTOR, **annotations):
        yield


# ----- what sits in worker.executors["deadpool"] ------------------------------


class _Call:
    """One task handed to the pool: Dask awaits ``outer``; ``inner`` is the
    pool's future."""

    __slots__ = ("delay", "inner", "key", "outer")

    def __init__(self, key: Any, delay: float) -> None:
        self.key = key
        self.delay = delay
        self.outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.inner: deadpool.Future | None = None


class _DaskExecutor(concurrent.futures.Executor):
    """A Dask worker's view of its Deadpool. (Its class name must not contain
    "ThreadPoolExecutor": Dask would run it as one, in threads.)"""

    def __init__(self, worker: Any, pool: deadpool.Deadpool, default_timeout: float | None):
        self.pool = pool
        self._tasks = worker.state.tasks  # key -> the worker's TaskState
        self._default_timeout = default_timeout
        self._calls: dict[Any, _Call] = {}
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        key = getattr(args[0], "key", None) if args else None
        if fn is not _run_task_simple or len(args) != 3 or key is None:
            # Not Dask's calling convention (see the module's docstring).
            return self.pool.submit(fn, *args, **kwargs)
        timeout, priority = self._options(key)
        call = _Call(key, args[2])
        with self._lock:
            self._calls[key] = call
        try:
            call.inner = self.pool.submit(
                _run_in_child, *args, deadpool_timeout=timeout, deadpool_priority=priority, **kwargs
            )
        except BaseException:
            self._forget(call)
            raise
        call.outer.add_done_callback(functools.partial(_outer_done, call))
        call.inner.add_done_callback(functools.partial(self._settle, call))
        return call.outer

    def _options(self, key: Any) -> tuple[float | None, int]:
        """The task's deadpool_timeout and deadpool_priority, from its annotations."""
        timeout, priority = self._default_timeout, 0
        ts = self._tasks.get(key)
        options = (ts.annotations or {}).get(EXECUTOR) if ts is not None else None
        if options:
            timeout = options.get("timeout", timeout)
            priority = options.get("priority", priority)
        return timeout, priority

    def _forget(self, call: _Call) -> None:
        with self._lock:
            if self._calls.get(call.key) is call:
                del self._calls[call.key]

    def _settle(self, call: _Call, inner: deadpool.Future) -> None:
        """The pool's outcome, handed to Dask."""
        self._forget(call)
        outer = call.outer
        try:
            if inner.cancelled():
                # Killed for Dask (see release) or by the pool's shutdown.
                # "Reschedule" makes Dask drop the task if nobody wants it
                # any more, and run it again if somebody does; a cancelled
                # future would leave the worker's task state stuck.
                outer.set_result(_run_task_simple(_reschedule, {}, call.delay))
                return
            error = inner.exception()
            if error is None:
                outer.set_result(inner.result())
            elif isinstance(error, Exception):
                outer.set_exception(error)
            else:
                # SystemExit or KeyboardInterrupt from a task: in a thread it
                # would end the Dask worker; in a deadpool worker it ended
                # only the task, which fails.
                failure = deadpool.ProcessError(f"the task raised {error!r}")
                failure.__cause__ = error
                outer.set_exception(failure)
        except concurrent.futures.InvalidStateError:
            # Dask cancelled ``outer`` meanwhile (its worker is closing, and
            # _outer_done killed the task): nobody waits for this outcome.
            return
        except Exception as exc:
            # Whatever went wrong here, the task must not hang: fail it.
            failure = deadpool.ProcessError(f"deadpool could not deliver the outcome: {exc!r}")
            failure.__cause__ = exc
            # (Already done, or cancelled meanwhile: then nobody waits for it.)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                outer.set_exception(failure)

    def release(self, key: Any) -> None:
        """Dask no longer wants ``key`` (``client.cancel()``, its futures were
        released): kill it if it runs, drop it if it waits in the backlog."""
        call = self._calls.get(key)
        if call is not None and call.inner is not None:
            call.inner.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _run_in_child(task: Any, data: dict[Any, Any], delay: float) -> dict[str, Any]:
    """Dask's ``_run_task_simple``, in a deadpool worker, with its message
    made fit to travel back. When the task raised, the message holds the
    exception twice: made safe to send by Dask (``exception``, for the
    client) and as it was (``actual_exception``, which the Dask worker only
    checks for ``Reschedule``). The latter carries its chain of causes (Dask
    installs tblib's pickling on it), which may hold what nothing can pickle
    (``get_worker()``'s error hides a ContextVar there): then a stand-in of
    the same kind takes its place."""
    message = _run_task_simple(task, data, delay)
    error = message.get("actual_exception")
    if error is not None:
        try:
            _worker._dumps(error)
        except Exception:
            stand_in = Reschedule() if isinstance(error, Reschedule) else Exception()
            stand_in.args = (message.get("exception_text"),)
            message["actual_exception"] = stand_in
    return message


def _outer_done(call: _Call, outer: concurrent.futures.Future[Any]) -> None:
    if outer.cancelled() and call.inner is not None:
        call.inner.cancel()  # kills the task if it runs


def _reschedule(_data: Any) -> None:
    raise Reschedule()


def _prepare_child(initializer: Callable[..., Any] | None, *initargs: Any) -> None:
    """Every deadpool worker's initializer: import what unpickling Dask's tasks
    needs (distributed.worker, some tenths of a second) before the worker takes
    its first task, so that its timeout is not charged for it; then the
    user's initializer."""
    import distributed.worker  # noqa: F401

    if initializer is not None:
        initializer(*initargs)


# ----- the plugin -------------------------------------------------------------


class DeadpoolPlugin(WorkerPlugin):
    """Give every Dask worker a Deadpool, as ``worker.executors["deadpool"]``.

    ``deadpool_kwargs`` are ``Deadpool``'s own; ``max_workers`` defaults to
    the worker's number of threads, which is as many tasks as Dask hands its
    executors at once. ``timeout`` is the default ``deadpool_timeout`` of the
    tasks whose ``annotate()`` gives none.

    Register it with ``client.register_plugin(DeadpoolPlugin(...))``: workers
    that join later or are restarted get their pool too. Registering it again
    does nothing (it is idempotent); to change the settings,
    ``client.unregister_worker_plugin("deadpool")`` first. When a worker
    closes or the plugin is removed, its pool is shut down, running tasks
    killed. A task Dask no longer wants (``client.cancel()``, or every future
    of it released) is killed, since Dask tells its plugins but not its
    executors."""

    name = EXECUTOR
    idempotent = True

    def __init__(self, *, timeout: float | None = None, **deadpool_kwargs: Any) -> None:
        unknown = sorted(set(deadpool_kwargs) - _POOL_PARAMETERS)
        if unknown:
            raise TypeError(
                f"DeadpoolPlugin() got unexpected keyword argument(s): {', '.join(unknown)}"
            )
        self.timeout = None if timeout is None else arguments.check_timeout(timeout)
        self.deadpool_kwargs = deadpool_kwargs
        self._executors: dict[int, _DaskExecutor] = {}  # by id(worker)

    def __getstate__(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "deadpool_kwargs": self.deadpool_kwargs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._executors = {}

    async def setup(self, worker: Any) -> None:
        kwargs = dict(self.deadpool_kwargs)
        kwargs.setdefault("max_workers", worker.state.nthreads)
        kwargs["initializer"] = functools.partial(_prepare_child, kwargs.get("initializer"))
        # Off the event loop: starting a pool can take a tenth of a second.
        pool = await asyncio.to_thread(deadpool.Deadpool, **kwargs)
        self._executors[id(worker)] = worker.executors[EXECUTOR] = _DaskExecutor(
            worker, pool, self.timeout
        )

    def teardown(self, worker: Any) -> None:
        executor = self._executors.pop(id(worker), None)
        if executor is None:
            return
        if worker.executors.get(EXECUTOR) is executor:
            del worker.executors[EXECUTOR]
        # Returns at once; the worker's processes go by themselves.
        executor.shutdown(wait=False, cancel_futures=True)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        # A running task released by the scheduler: the worker marks it
        # "cancelled" and waits for it to end. End it now.
        if finish == "released" and start in ("executing", "long-running"):
            for executor in self._executors.values():
                executor.release(key)


# ----- dask worker --preload deadpool.dask -----------------------------------


def _import_callable(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> Callable[..., Any] | None:
    if value is None:
        return None
    try:
        found = pkgutil.resolve_name(value)
    except (ImportError, AttributeError, ValueError) as exc:
        raise click.BadParameter(f"cannot import {value!r}: {exc}") from exc
    if not callable(found):
        raise click.BadParameter(f"{value!r} is not callable")
    return found


@click.command(name="deadpool")
@click.option(
    "--deadpool-timeout",
    type=click.FloatRange(min=0),
    help="Default per-task timeout in seconds, for tasks whose annotate() gives none.",
)
@click.option(
    "--deadpool-max-workers",
    type=click.IntRange(min=1),
    help="Worker processes per Dask worker [default: its --nthreads].",
)
@click.option("--deadpool-min-workers", type=click.IntRange(min=0))
@click.option("--deadpool-max-tasks-per-child", type=click.IntRange(min=1))
@click.option("--deadpool-max-worker-memory-bytes", type=click.IntRange(min=1))
@click.option("--deadpool-malloc-trim-rss-memory-threshold-bytes", type=click.IntRange(min=0))
@click.option("--deadpool-mp-context", type=click.Choice(arguments.START_METHODS))
@click.option("--deadpool-max-backlog", type=click.IntRange(min=0))
@click.option(
    "--deadpool-initializer",
    callback=_import_callable,
    metavar="MODULE:FUNCTION",
    help="Run in each new deadpool worker, with no arguments.",
)
@click.option(
    "--deadpool-finalizer",
    callback=_import_callable,
    metavar="MODULE:FUNCTION",
    help="Run in each deadpool worker that retires, with no arguments.",
)
@click.option(
    "--deadpool-propagate-environ/--no-deadpool-propagate-environ",
    default=False,
    help="Each new deadpool worker copies the Dask worker's environment as it is then.",
)
async def dask_setup(worker: Any, **options: Any) -> None:
    """``dask worker SCHEDULER --preload deadpool.dask [--deadpool-... ...]``:
    a ``DeadpoolPlugin`` with these settings on each worker started. (Give the
    scheduler's address positionally: after ``--scheduler-file`` the first
    preload option would be taken for it.) A plugin a client registers later
    replaces this one."""
    kwargs = {
        name.removeprefix("deadpool_"): value
        for name, value in options.items()
        if value is not None and name != "deadpool_propagate_environ"
    }
    if options["deadpool_propagate_environ"]:
        kwargs["propagate_environ"] = os.environ
    plugin = DeadpoolPlugin(**kwargs)
    await worker.plugin_add(plugin, name=plugin.name, catch_errors=False)
