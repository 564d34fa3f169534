"""deadpool_timeout: kept by the parent, counted from the task's start on a worker."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, stats_settle, wait_until


def test_timeout_raises_deadpool_timeout_error(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        fut = gate.submit(exe, deadpool_timeout=0.5)
        exc = fut.exception(timeout=30)
        assert isinstance(exc, deadpool.TimeoutError)
        assert isinstance(exc, concurrent.futures.TimeoutError)
        with pytest.raises(deadpool.TimeoutError):
            fut.result(timeout=1)
        gate.open()


def test_timeout_kills_the_worker_and_a_replacement_serves_tasks(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        fut = gate.submit(exe, deadpool_timeout=0.5)
        pid = gate.wait_started(fut)
        assert isinstance(fut.exception(timeout=30), deadpool.TimeoutError)
        wait_until(lambda: not is_alive(pid), message=f"timed-out worker {pid} still alive")
        new_pid = exe.submit(tasks.get_pid).result(timeout=30)
        assert new_pid != pid
        stats = stats_settle(exe, worker_processes_still_alive=1)
        assert stats["worker_processes_created"] == 2
        gate.open()


def test_task_finishing_before_its_timeout_succeeds():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.add, 1, 2, deadpool_timeout=30)
        assert fut.result(timeout=30) == 3


def test_timeout_kills_a_task_holding_the_gil_in_c_code():
    # The timeout is enforced by the parent: a worker stuck in C code with the GIL
    # held (no Python-level timer could fire) must still be killed on time.
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.hold_gil_sleep, 300, deadpool_timeout=0.5)
        exc = fut.exception(timeout=30)
        assert isinstance(exc, deadpool.TimeoutError)
        assert exe.submit(tasks.return_value, "ok").result(timeout=30) == "ok"


def test_timeout_clock_starts_when_the_task_starts_on_a_worker(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        waiting = exe.submit(tasks.return_value, "ran", deadpool_timeout=1.0)
        # Let more than the timeout pass while the task is still in the backlog; a
        # clock started at submit time would expire it here. (This wait is the
        # point of the test, not a synchronisation.)
        time.sleep(1.5)
        assert not waiting.done()
        gate.open()
        assert blocker.result(timeout=30) is None
        assert waiting.result(timeout=30) == "ran"


def test_workers_lead_their_own_process_group():
    with pool(max_workers=2) as exe:
        for pid, pgid in (exe.submit(tasks.pid_and_pgid).result(timeout=30) for _ in range(4)):
            assert pgid == pid
            assert pgid != os.getpgid(0)


def test_timeout_kills_the_whole_process_tree(tmp_path):
    pids_path = tmp_path / "pids"
    release = tmp_path / "release"
    grandchildren: list[int] = []
    try:
        with pool(max_workers=1) as exe:
            fut = exe.submit(
                tasks.spawn_grandchildren_and_block,
                str(pids_path),
                str(release),
                deadpool_timeout=3.0,
            )
            exc = fut.exception(timeout=30)
            assert pids_path.exists(), f"task did not get to start its children: {exc!r}"
            worker, *grandchildren = (int(p) for p in pids_path.read_text().split())
            assert isinstance(exc, deadpool.TimeoutError)
            for pid in [worker, *grandchildren]:
                wait_until(
                    lambda pid=pid: not is_alive(pid),
                    message=f"pid {pid} of the timed-out task's process tree is still alive",
                )
    finally:
        release.touch()
        for pid in grandchildren:  # never leak them, even when the test fails
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_other_tasks_unaffected_by_a_timeout(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=2) as exe:
        survivor = gate.submit(exe, "survived")
        gate.wait_started(survivor)
        doomed = exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.5)
        assert isinstance(doomed.exception(timeout=30), deadpool.TimeoutError)
        gate.open()
        assert survivor.result(timeout=30) == "survived"
        assert [exe.submit(tasks.square, i).result(timeout=30) for i in range(4)] == [0, 1, 4, 9]


def test_timeout_is_counted_as_a_failed_task():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.3)
        assert isinstance(fut.exception(timeout=30), deadpool.TimeoutError)
        stats = stats_settle(exe, worker_processes_still_alive=1)
        assert stats["tasks_failed"] == 1
        assert stats["tasks_launched"] == 1
