"""initializer / finalizer / atexit: when each runs, and when none may."""

from __future__ import annotations

import logging
import os
import signal

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, read_lines, stats_settle, wait_until


def _lines_for(path, pid):
    return [line for line in read_lines(path) if line.split()[1] == str(pid)]


# ---------------------------------------------------------------- initializer


def test_initializer_runs_once_per_worker_before_its_first_task(tmp_path):
    log = tmp_path / "init.log"
    with pool(
        max_workers=2, max_backlog=20, initializer=tasks.init_record, initargs=(str(log), "a", 1)
    ) as exe:
        results = [f.result(timeout=30) for f in [exe.submit(tasks.init_state) for _ in range(12)]]
    inits = read_lines(log)
    init_pids = [int(line.split()[1]) for line in inits]
    assert len(init_pids) == len(set(init_pids)), f"an initializer ran twice: {inits}"
    for pid, state, _env in results:
        # The task sees what the initializer set up: it ran before the first task.
        assert state == ("a", 1)
        assert pid in init_pids
    assert all(line.endswith("('a', 1)") for line in inits), inits


def test_initializer_runs_for_every_replacement_worker(tmp_path):
    log = tmp_path / "init.log"
    with pool(
        max_workers=1, max_tasks_per_child=1, initializer=tasks.init_record, initargs=(str(log),)
    ) as exe:
        pids = [exe.submit(tasks.init_state).result(timeout=30)[0] for _ in range(3)]
    init_pids = [int(line.split()[1]) for line in read_lines(log)]
    assert set(pids) <= set(init_pids)
    assert len(init_pids) == len(set(init_pids))


def test_raising_initializer_is_logged_and_the_worker_still_serves(tmp_path, caplog):
    # The initializer routes the worker's 'deadpool' logger to a file, then raises.
    # The failure must be logged (in the worker, or forwarded to this process) and
    # the pool must go on serving tasks.
    caplog.set_level(logging.WARNING, logger="deadpool")
    worker_log = tmp_path / "worker-log.txt"
    message = "initializer exploded 5521"
    with pool(
        max_workers=2,
        max_backlog=10,
        initializer=tasks.init_raise_with_log_file,
        initargs=(str(worker_log), message),
    ) as exe:
        assert [exe.submit(tasks.square, i).result(timeout=30) for i in range(6)] == [
            0,
            1,
            4,
            9,
            16,
            25,
        ]
        wait_until(
            lambda: (
                message in (worker_log.read_text() if worker_log.exists() else "")
                or message in caplog.text
            ),
            message="the initializer's exception was not logged on the 'deadpool' logger",
        )


# ---------------------------------------------------------------- finalizer + atexit


def _graceful_kwargs(log):
    return dict(
        initializer=tasks.init_register_atexit,
        initargs=(str(log),),
        finalizer=tasks.final_record,
        finalargs=(str(log), "finalargs-ok"),
    )


def _assert_graceful_exit(log, pid):
    wait_until(
        lambda: len(_lines_for(log, pid)) == 2,
        message=lambda: f"finalizer/atexit lines for {pid}: {read_lines(log)}",
    )
    assert _lines_for(log, pid) == [f"final {pid} finalargs-ok", f"atexit {pid}"]


def test_finalizer_then_atexit_on_max_tasks_per_child_retirement(tmp_path):
    log = tmp_path / "final.log"
    with pool(max_workers=1, max_tasks_per_child=1, **_graceful_kwargs(log)) as exe:
        pid1 = exe.submit(tasks.get_pid).result(timeout=30)
        # The worker retires after its one task while the pool is still open.
        _assert_graceful_exit(log, pid1)
        pid2 = exe.submit(tasks.get_pid).result(timeout=30)
        assert pid2 != pid1
        _assert_graceful_exit(log, pid2)


def test_finalizer_then_atexit_on_shrink_to_min_workers(tmp_path):
    log = tmp_path / "final.log"
    with pool(max_workers=1, min_workers=0, **_graceful_kwargs(log)) as exe:
        pid = exe.submit(tasks.get_pid).result(timeout=30)
        # Scale to zero while the pool is open: a graceful retirement.
        _assert_graceful_exit(log, pid)
        wait_until(lambda: not is_alive(pid))
        # The pool learns of the exit from the zygote, a moment after the kernel.
        stats_settle(exe, worker_processes_still_alive=0)


def test_finalizer_then_atexit_on_shutdown(tmp_path):
    log = tmp_path / "final.log"
    with pool(max_workers=2, **_graceful_kwargs(log)) as exe:
        pids = {exe.submit(tasks.get_pid).result(timeout=30) for _ in range(3)}
    for pid in pids:
        _assert_graceful_exit(log, pid)


def test_finalizer_then_atexit_on_clear_workers(tmp_path):
    log = tmp_path / "final.log"
    with pool(max_workers=1, **_graceful_kwargs(log)) as exe:
        pid = exe.submit(tasks.get_pid).result(timeout=30)
        exe.clear_workers()
        _assert_graceful_exit(log, pid)
        assert exe.submit(tasks.get_pid).result(timeout=30) != pid


def _kill_by_timeout(exe, gate):
    fut = gate.submit(exe, deadpool_timeout=0.5)
    pid = gate.wait_started(fut)
    assert isinstance(fut.exception(timeout=30), deadpool.TimeoutError)
    return pid


def _kill_by_cancel(exe, gate):
    fut = gate.submit(exe)
    pid = gate.wait_started(fut)
    wait_until(fut.running)
    assert fut.cancel()
    return pid


def _kill_from_outside(exe, gate):
    fut = gate.submit(exe)
    pid = gate.wait_started(fut)
    os.kill(pid, signal.SIGKILL)
    assert isinstance(fut.exception(timeout=30), deadpool.ProcessError)
    return pid


@pytest.mark.parametrize(
    "kill", [_kill_by_timeout, _kill_by_cancel, _kill_from_outside], ids=lambda f: f.__name__
)
def test_no_finalizer_and_no_atexit_when_a_worker_is_killed(tmp_path, kill):
    log = tmp_path / "final.log"
    gate = Gate(tmp_path)
    with pool(max_workers=1, **_graceful_kwargs(log)) as exe:
        pid = kill(exe, gate)
        wait_until(lambda: not is_alive(pid), message=f"worker {pid} not killed")
        # Once the process is dead it can write nothing more: the check is final.
        assert _lines_for(log, pid) == []
        assert exe.submit(tasks.square, 3).result(timeout=30) == 9
    gate.open()


def test_raising_finalizer_is_logged_and_does_not_stop_the_pool(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="deadpool")
    worker_log = tmp_path / "worker-log.txt"
    with pool(
        max_workers=1,
        max_tasks_per_child=1,
        initializer=tasks.init_log_to_file,
        initargs=(str(worker_log),),
        finalizer=tasks.final_raise,
    ) as exe:
        pids = [exe.submit(tasks.get_pid).result(timeout=30) for _ in range(4)]
        assert len(set(pids)) == 4
        wait_until(
            lambda: (
                "finalizer failed on purpose"
                in (worker_log.read_text() if worker_log.exists() else "")
                or "finalizer failed on purpose" in caplog.text
            ),
            message="the finalizer's exception was not logged on the 'deadpool' logger",
        )
