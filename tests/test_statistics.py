"""get_statistics(): the original's 8 keys, exact figures, then ours."""

from __future__ import annotations

import os
import signal

import deadpool
import pytest

from tests import limit_tasks, tasks
from tests.helpers import Gate, pool, stats_settle

ORIGINAL_KEYS = [
    "tasks_received",
    "tasks_launched",
    "tasks_failed",
    "worker_processes_created",
    "max_workers_busy_concurrently",
    "worker_processes_still_alive",
    "worker_processes_idle",
    "worker_processes_busy",
]
NEW_KEYS = [
    "tasks_timed_out",
    "tasks_over_memory_limit",
    "worker_processes_killed_by_signal",
    "bytes_through_shared_memory",
]
NEW_ZEROS = dict.fromkeys(NEW_KEYS, 0)


def test_the_original_eight_keys_come_first_then_ours():
    with pool(max_workers=1) as exe:
        stats = exe.get_statistics()
        assert list(stats) == ORIGINAL_KEYS + NEW_KEYS
        assert all(isinstance(v, int) for v in stats.values()), stats


def test_fresh_pool_statistics():
    with pool(max_workers=2) as exe:
        stats = stats_settle(exe, worker_processes_still_alive=2)
        assert stats == {
            "tasks_received": 0,
            "tasks_launched": 0,
            "tasks_failed": 0,
            "worker_processes_created": 2,
            "max_workers_busy_concurrently": 0,
            "worker_processes_still_alive": 2,
            "worker_processes_idle": 2,
            "worker_processes_busy": 0,
            **NEW_ZEROS,
        }


def test_original_readme_statistics_example():
    # The original README's example, figure for figure, with two robustness changes
    # that leave the expected figures untouched:
    # - the ok tasks sleep 0.2 s instead of 0.05 s, so all ten workers are surely
    #   busy at once on a small, loaded machine;
    # - max_backlog=100 instead of the default 5: a worker above min_workers retires
    #   the moment it finds the backlog empty, so a submitting thread that is starved
    #   of CPU for an instant (backlog drained mid-run) makes the pool retire and
    #   re-create workers, and worker_processes_created ends above 10.
    with deadpool.Deadpool(min_workers=5, max_workers=10, max_backlog=100) as exe:
        futs = []
        for _ in range(50):
            futs.append(exe.submit(tasks.t, 0.2))
            futs.append(exe.submit(tasks.f_err, Exception))

        results = []
        for fut in deadpool.as_completed(futs, timeout=120):
            try:
                results.append(fut.result())
            except Exception:
                pass

        # Instead of the original's sleep(0.5): poll until the surplus workers retired.
        stats = stats_settle(exe, timeout=30, worker_processes_still_alive=5)

    assert results == [0.2] * 50
    assert stats == {
        "tasks_received": 100,
        "tasks_launched": 100,
        "tasks_failed": 50,
        "worker_processes_created": 10,
        "max_workers_busy_concurrently": 10,
        "worker_processes_still_alive": 5,
        "worker_processes_idle": 5,
        "worker_processes_busy": 0,
        **NEW_ZEROS,
    }


def test_busy_idle_and_max_busy_describe_the_moment(tmp_path):
    gates = [Gate(tmp_path, f"g{i}") for i in range(2)]
    with pool(max_workers=3, max_backlog=10) as exe:
        stats_settle(exe, worker_processes_still_alive=3)
        futs = [g.submit(exe, i) for i, g in enumerate(gates)]
        for g, f in zip(gates, futs, strict=True):
            g.wait_started(f)
        stats = stats_settle(exe, worker_processes_busy=2)
        assert stats["worker_processes_idle"] == 1
        assert stats["worker_processes_still_alive"] == 3
        assert stats["max_workers_busy_concurrently"] == 2
        assert stats["tasks_launched"] == 2
        for g in gates:
            g.open()
        assert [f.result(timeout=30) for f in futs] == [0, 1]
        stats = stats_settle(exe, worker_processes_busy=0)
        assert stats["worker_processes_idle"] == 3
        assert stats["max_workers_busy_concurrently"] == 2  # a maximum, not a snapshot
        # One at a time never raises the maximum.
        for i in range(5):
            exe.submit(tasks.square, i).result(timeout=30)
        assert exe.get_statistics()["max_workers_busy_concurrently"] == 2


def test_exact_counts_across_successes_failures_timeouts_and_deaths():
    with pool(max_workers=2, max_backlog=20) as exe:
        futs = [exe.submit(tasks.square, i) for i in range(6)]
        futs += [exe.submit(tasks.raise_value_error, i) for i in range(4)]
        futs.append(exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.3))
        futs.append(exe.submit(tasks.exit_with, 5))
        for f in futs:
            f.exception(timeout=60)
        stats = stats_settle(exe, worker_processes_still_alive=2, worker_processes_busy=0)
        assert stats["tasks_received"] == 12
        assert stats["tasks_launched"] == 12
        assert stats["tasks_failed"] == 6  # 4 exceptions + 1 timeout + 1 death, once each
        assert stats["worker_processes_created"] == 4  # 2 + a replacement per kill/death
        assert stats["worker_processes_idle"] == 2
        assert stats["tasks_timed_out"] == 1
        assert stats["tasks_over_memory_limit"] == 0
        assert stats["worker_processes_killed_by_signal"] == 0, "the timeout's kill is ours"


def test_timeouts_memory_limits_and_signals_each_count_once():
    with pool(max_workers=2, max_backlog=20) as exe:
        limit = 32 * limit_tasks.MiB
        futs = [
            exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.2),
            exe.submit(limit_tasks.grow_python, 10 * limit, deadpool_memory_limit=limit),
            exe.submit(limit_tasks.impossible_allocation, deadpool_memory_limit=limit),
            exe.submit(tasks.kill_self, signal.SIGKILL),
            exe.submit(tasks.kill_self, signal.SIGSEGV),
            exe.submit(tasks.exit_with, 3),
            exe.submit(limit_tasks.allocate, limit // 2, deadpool_memory_limit=limit),
        ]
        for f in futs:
            f.exception(timeout=60)
        stats = stats_settle(exe, worker_processes_still_alive=2, worker_processes_busy=0)
        assert stats["tasks_timed_out"] == 1
        assert stats["tasks_over_memory_limit"] == 2, "killed, and MemoryError inside"
        assert stats["worker_processes_killed_by_signal"] == 2, "SIGKILL and SIGSEGV from inside"
        assert stats["tasks_failed"] == 6
        assert futs[-1].result(timeout=0)[1] == limit // 2


def test_cancelled_pending_task_is_received_but_not_launched(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=10) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        victim = exe.submit(tasks.square, 1)
        assert victim.cancel()
        gate.open()
        blocker.result(timeout=30)
        stats = stats_settle(exe, worker_processes_busy=0)
        assert stats["tasks_received"] == 2
        assert stats["tasks_launched"] == 1


def test_rejected_submissions_are_not_received():
    with pool(max_workers=1) as exe:
        for bad in (dict(deadpool_priority=-1), dict(deadpool_timeout=-1)):
            with pytest.raises((TypeError, ValueError)):
                exe.submit(tasks.square, 1, **bad)
        exe.submit(tasks.square, 2).result(timeout=30)
        assert exe.get_statistics()["tasks_received"] == 1


def test_alive_idle_busy_count_only_live_processes(tmp_path):
    # The original kept reporting dead workers as alive until garbage collection.
    gates = [Gate(tmp_path, f"g{i}") for i in range(2)]
    with pool(max_workers=2, min_workers=0, max_backlog=10) as exe:
        futs = [g.submit(exe, i) for i, g in enumerate(gates)]
        pids = [g.wait_started(f) for g, f in zip(gates, futs, strict=True)]
        stats_settle(exe, worker_processes_busy=2, worker_processes_still_alive=2)
        os.kill(pids[0], signal.SIGKILL)
        assert isinstance(futs[0].exception(timeout=30), deadpool.ProcessError)
        # Nothing waits in the backlog and min_workers=0: no replacement is due, so
        # the dead worker must simply vanish from the figures.
        stats = stats_settle(exe, worker_processes_still_alive=1)
        assert stats["worker_processes_busy"] == 1
        assert stats["worker_processes_idle"] == 0
        gates[1].open()
        assert futs[1].result(timeout=30) == 1
        stats = stats_settle(exe, worker_processes_still_alive=0)
        assert stats["worker_processes_busy"] == 0
