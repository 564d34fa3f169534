"""ProcessError and TimeoutError say how the worker ended, as attributes
that survive pickling; the messages keep their form."""

from __future__ import annotations

import pickle
import signal

import deadpool
import pytest

from tests import limit_tasks, tasks
from tests.helpers import Gate, pool

DEADLINE = 60
ATTRIBUTES = ("pid", "exitcode", "signal", "reason", "max_rss")


def _failure(exe, fn, *args, **kwargs):
    fut = exe.submit(fn, *args, **kwargs)
    return fut, fut.exception(timeout=DEADLINE)


def _end(exc) -> tuple:
    return tuple(getattr(exc, name) for name in ATTRIBUTES[:4])


def test_a_worker_killed_from_outside():
    with pool(max_workers=1) as exe:
        fut, exc = _failure(exe, tasks.kill_self, signal.SIGKILL)
        assert type(exc) is deadpool.ProcessError
        assert _end(exc) == (fut.pid, -9, signal.SIGKILL, "killed")
        assert isinstance(exc.signal, signal.Signals)
        assert exc.max_rss > 1 << 20, "the peak from wait4, in bytes"
        assert str(exc) == f"Subprocess {fut.pid} completed unexpectedly with exitcode -9 (Killed)"


def test_a_crash():
    with pool(max_workers=1) as exe:
        fut, exc = _failure(exe, tasks.segfault)
        assert _end(exc) == (fut.pid, -signal.SIGSEGV, signal.SIGSEGV, "killed")


def test_a_worker_that_exits():
    with pool(max_workers=1) as exe:
        fut, exc = _failure(exe, tasks.exit_with, 3)
        assert _end(exc) == (fut.pid, 3, None, "exited")
        assert str(exc) == f"Subprocess {fut.pid} completed unexpectedly with exitcode 3"


def test_a_timeout():
    with pool(max_workers=1) as exe:
        fut, exc = _failure(exe, tasks.sleep_then_return, 300, deadpool_timeout=0.2)
        assert type(exc) is deadpool.TimeoutError
        assert _end(exc) == (fut.pid, -9, signal.SIGKILL, "timeout")
        assert exc.max_rss > 0
        assert str(exc) == f"the task timed out; worker {fut.pid} was killed"


def test_a_memory_limit():
    with pool(max_workers=1) as exe:
        limit = 32 * limit_tasks.MiB
        fut, exc = _failure(exe, limit_tasks.grow_python, 10 * limit, deadpool_memory_limit=limit)
        assert _end(exc) == (fut.pid, -9, signal.SIGKILL, "memory")


def test_terminate_workers_is_the_pool_s_doing(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        fut = gate.submit(exe)
        gate.wait_started(fut)
        exe.terminate_workers()
        exc = fut.exception(timeout=DEADLINE)
        assert _end(exc) == (fut.pid, -signal.SIGTERM, signal.SIGTERM, "cancelled")


def test_errors_that_are_not_a_worker_s_end_say_lost():
    with pool(max_workers=1) as exe:
        _, exc = _failure(exe, tasks.raise_unpicklable, "x")
        assert isinstance(exc, deadpool.ProcessError)
        assert (exc.reason, exc.pid, exc.exitcode) == ("lost", None, None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: deadpool.ProcessError("lost", pid=7, exitcode=-9, signal=9, reason="killed"),
        lambda: deadpool.TimeoutError("late", pid=8, exitcode=-9, signal=9, reason="timeout"),
        lambda: deadpool.MemoryLimitError("big", memory_limit=10, memory_used=11, max_rss=99),
        lambda: deadpool.SoftTimeoutError("soft"),
        lambda: deadpool.ProcessError("plain"),
    ],
)
def test_each_error_pickles_with_its_attributes(make):
    exc = make()
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert copy.args == exc.args
    assert vars(copy) == vars(exc)
    for name in ATTRIBUTES:
        assert getattr(copy, name) == getattr(exc, name)


def test_real_failures_pickle_too():
    with pool(max_workers=1) as exe:
        for fn, args in [(tasks.kill_self, (signal.SIGKILL,)), (tasks.exit_with, (2,))]:
            _, exc = _failure(exe, fn, *args)
            copy = pickle.loads(pickle.dumps(exc))
            assert (str(copy), _end(copy), copy.max_rss) == (str(exc), _end(exc), exc.max_rss)


def test_the_classes_are_what_callers_catch():
    import concurrent.futures
    import multiprocessing

    assert issubclass(deadpool.MemoryLimitError, deadpool.ProcessError)
    assert issubclass(deadpool.ProcessError, multiprocessing.ProcessError)
    assert issubclass(deadpool.SoftTimeoutError, deadpool.TimeoutError)
    assert issubclass(deadpool.TimeoutError, concurrent.futures.TimeoutError)
    assert deadpool.MemoryLimitError("x").reason == "memory"
    with pytest.raises(ValueError, match="reason"):
        deadpool.ProcessError("x", reason="bored")
