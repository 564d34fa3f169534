"""Worker death and task failures cost exactly one future; the pool never breaks."""

from __future__ import annotations

import concurrent.futures.process
import multiprocessing
import os
import pickle
import re
import signal
import traceback

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, stats_settle, wait_until

PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def _assert_pool_works(exe):
    assert [exe.submit(tasks.square, i).result(timeout=30) for i in range(3)] == [0, 1, 4]


def _assert_names_exit(exc, pid, exitcode, signame=None):
    message = str(exc)
    assert isinstance(exc, deadpool.ProcessError), repr(exc)
    assert isinstance(exc, multiprocessing.ProcessError)
    assert re.search(rf"\b{pid}\b", message), f"pid {pid} not in {message!r}"
    assert f"exitcode {exitcode}" in message, message
    if signame is not None:
        assert any(name in message for name in signame), f"none of {signame} in {message!r}"


def test_os_exit_gives_process_error_with_real_exit_code():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.exit_with, 3)
        exc = fut.exception(timeout=30)
        assert fut.pid is not None
        _assert_names_exit(exc, fut.pid, 3)
        assert "Subprocess" in str(exc) and "completed unexpectedly" in str(exc)
        _assert_pool_works(exe)


def test_self_sigkill_gives_process_error_naming_the_signal():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.kill_self, signal.SIGKILL)
        exc = fut.exception(timeout=30)
        _assert_names_exit(exc, fut.pid, -9, ("Killed", "SIGKILL"))
        assert str(exc) == (
            f"Subprocess {fut.pid} completed unexpectedly with exitcode -9 (Killed)"
        )
        _assert_pool_works(exe)


def test_segfault_gives_process_error_with_sigsegv():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.segfault)
        exc = fut.exception(timeout=30)
        _assert_names_exit(exc, fut.pid, -11, ("Segmentation fault", "SIGSEGV"))
        _assert_pool_works(exe)


@pytest.mark.parametrize(
    ("signum", "names"),
    [(signal.SIGKILL, ("Killed", "SIGKILL")), (signal.SIGTERM, ("Terminated", "SIGTERM"))],
)
def test_worker_killed_from_outside(tmp_path, signum, names):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        fut = gate.submit(exe)
        pid = gate.wait_started(fut)
        os.kill(pid, signum)
        exc = fut.exception(timeout=30)
        _assert_names_exit(exc, pid, -int(signum), names)
        _assert_pool_works(exe)


def test_death_of_one_worker_does_not_affect_others(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=2, max_backlog=10) as exe:
        survivor = gate.submit(exe, "survivor")
        gate.wait_started(survivor)
        deaths = [exe.submit(tasks.exit_with, 7) for _ in range(3)]
        for fut in deaths:
            assert isinstance(fut.exception(timeout=30), deadpool.ProcessError)
        assert not survivor.done()
        gate.open()
        assert survivor.result(timeout=30) == "survivor"
        _assert_pool_works(exe)
        stats = stats_settle(exe, worker_processes_still_alive=2)
        assert stats["worker_processes_created"] == 2 + 3
        assert stats["tasks_failed"] == 3


def test_idle_worker_killed_from_outside_is_replaced():
    with pool(max_workers=1) as exe:
        pid = exe.submit(tasks.get_pid).result(timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not is_alive(pid))
        assert exe.submit(tasks.get_pid).result(timeout=30) != pid
        stats = stats_settle(exe, worker_processes_still_alive=1)
        assert stats["worker_processes_created"] == 2
        assert stats["tasks_failed"] == 0


def test_exception_keeps_type_args_and_remote_traceback_as_cause():
    with pool(max_workers=1) as exe:
        exc = exe.submit(tasks.raise_value_error, "bad value", 42).exception(timeout=30)
        assert type(exc) is ValueError
        assert exc.args == ("bad value", 42)
        cause = exc.__cause__
        assert cause is not None, "worker traceback not attached as __cause__"
        assert isinstance(cause, concurrent.futures.process._RemoteTraceback), repr(cause)
        text = str(cause)
        assert "raise_value_error" in text, text
        assert "Traceback" in text or "File " in text, text
        # The traceback is not pasted into the exception's own message.
        assert "raise_value_error" not in str(exc)
        formatted = "".join(traceback.format_exception(exc))
        assert "raise_value_error" in formatted
        _assert_pool_works(exe)


def test_custom_exception_type_is_preserved():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.raise_custom, "one", 2, [3])
        with pytest.raises(tasks.CustomError) as info:
            fut.result(timeout=30)
        assert info.value.args == ("one", 2, [3])
        assert info.value.__cause__ is not None


def test_unpicklable_exception_becomes_process_error_with_repr_and_traceback():
    with pool(max_workers=1) as exe:
        exc = exe.submit(tasks.raise_unpicklable, "distinctive message 8832").exception(timeout=30)
        assert isinstance(exc, deadpool.ProcessError), repr(exc)
        text = str(exc)
        assert "UnpicklableError" in text, text
        assert "distinctive message 8832" in text, text
        everything = text + str(exc.__cause__ or "")
        assert "raise_unpicklable" in everything, "the task's traceback text is missing"
        _assert_pool_works(exe)


def test_exception_that_fails_to_unpickle_fails_only_that_future():
    # As the original deadpool (and the stdlib) do: the future raises what
    # unpickling raised (here a TypeError from __init__), and the worker's
    # traceback is still its __cause__.
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.raise_ununpicklable)
        exc = fut.exception(timeout=30)
        assert type(exc) is TypeError, repr(exc)
        assert "UnunpicklableError" in str(exc) and "'b'" in str(exc), str(exc)
        assert "raise_ununpicklable" in str(exc.__cause__)
        _assert_pool_works(exe)


def test_unpicklable_result_fails_only_that_future():
    with pool(max_workers=1) as exe:
        neighbour = exe.submit(tasks.square, 5)
        fut = exe.submit(tasks.return_unpicklable)
        after = exe.submit(tasks.square, 6)
        exc = fut.exception(timeout=30)
        assert exc is not None
        assert "lock" in str(exc).lower(), str(exc)
        assert neighbour.result(timeout=30) == 25
        assert after.result(timeout=30) == 36
        _assert_pool_works(exe)


def test_unpicklable_call_fails_only_that_future():
    # A lock is beyond cloudpickle too (lambdas and closures are not: see
    # test_cloudpickle.py).
    with pool(max_workers=1, max_backlog=10) as exe:
        before = exe.submit(tasks.square, 2)
        fut = exe.submit(tasks.return_value, tasks.threading.Lock())
        after = exe.submit(tasks.square, 3)
        exc = fut.exception(timeout=30)
        assert isinstance(exc, PICKLING_ERRORS), repr(exc)
        assert before.result(timeout=30) == 4
        assert after.result(timeout=30) == 9
        _assert_pool_works(exe)


def test_failed_task_is_counted_once_and_worker_survives():
    with pool(max_workers=1) as exe:
        pid = exe.submit(tasks.get_pid).result(timeout=30)
        for _ in range(3):
            assert isinstance(exe.submit(tasks.raise_value_error).exception(timeout=30), ValueError)
        # A task raising is not a worker death: the same worker keeps serving.
        assert exe.submit(tasks.get_pid).result(timeout=30) == pid
        stats = exe.get_statistics()
        assert stats["tasks_failed"] == 3
        assert stats["worker_processes_created"] == 1


def test_futures_left_when_the_core_stops_fail_instead_of_hanging():
    # The completion thread calls abandon() when the core stops for good; after
    # an internal failure (a supervisor panic) this is what resolves every
    # future the core can no longer report on.
    with pool(max_workers=1) as exe:
        running = exe.submit(tasks.sleep_then_return, 300)
        wait_until(running.running, timeout=30, message="the task never started")
        exe._dispatcher.abandon()
        error = running.exception(timeout=30)
        assert isinstance(error, deadpool.ProcessError), repr(error)
        assert "stopped before this task finished" in str(error)
        exe.shutdown(wait=False, cancel_futures=True)  # kill the 300 s task
