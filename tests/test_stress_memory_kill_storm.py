"""Stress: a kill storm over memory-limited tasks, some of which go past
their limits. Every future resolves; a task fails only if its worker was
killed by the storm or by its own limit; the statistics add up exactly.

Limits are 32 MiB and a growing task caps itself at ten times that, with
four workers: the storm never holds more than about 1.3 GiB."""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import threading

import deadpool
import pytest

from tests import limit_tasks
from tests.helpers import core_testing, descendants, is_spare, pool, stats_settle

pytestmark = pytest.mark.stress

MiB = limit_tasks.MiB
LIMIT = 32 * MiB
TASKS = 600
HOG_EVERY = 10  # every tenth task grows past its limit
WORKERS = 4
KILL_INTERVAL = 0.02
RESOLVE_DEADLINE = 240.0


class Storm(threading.Thread):
    """SIGKILLs a random worker of the shared zygote every `interval` seconds,
    recording each pid before the signal goes."""

    def __init__(self, zygote: int, interval: float) -> None:
        super().__init__(name="memory-storm", daemon=True)
        self.zygote = zygote
        self.interval = interval
        self.killed: set[int] = set()
        self.stop = threading.Event()
        self.rng = random.Random(13)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            workers = [
                pid
                for pid, (ppid, state) in descendants(self.zygote).items()
                if ppid == self.zygote and state not in ("Z", "X") and not is_spare(pid)
            ]
            if workers:
                pid = self.rng.choice(workers)
                self.killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _submit(exe, i: int):
    if i % HOG_EVERY == 0:
        return exe.submit(limit_tasks.grow_python, 10 * LIMIT, deadpool_memory_limit=LIMIT)
    return exe.submit(limit_tasks.allocate, MiB, deadpool_memory_limit=LIMIT)


def test_a_kill_storm_over_memory_limited_tasks_loses_nothing():
    with pool(max_workers=WORKERS, max_backlog=20) as exe:
        assert exe.submit(limit_tasks.pid).result(timeout=60) > 0
        zygote = core_testing().shared_zygote_pid()
        assert zygote is not None
        storm = Storm(zygote, KILL_INTERVAL)
        storm.start()
        try:
            futures = [_submit(exe, i) for i in range(TASKS)]
            _, not_done = concurrent.futures.wait(futures, timeout=RESOLVE_DEADLINE)
        finally:
            storm.stop.set()
            storm.join(30)
        assert not not_done, f"{len(not_done)} of {TASKS} futures never resolved"
        ok = over = lost = 0
        innocent = []
        for i, fut in enumerate(futures):
            exc = fut.exception(timeout=0)
            if exc is None:
                pid, size = fut.result(timeout=0)
                assert (pid, size) == (fut.pid, MiB), i
                ok += 1
            elif isinstance(exc, deadpool.MemoryLimitError) and i % HOG_EVERY == 0:
                assert exc.reason == "memory" and exc.memory_used > LIMIT
                over += 1
            elif isinstance(exc, deadpool.ProcessError) and fut.pid in storm.killed:
                assert exc.reason == "killed", repr(exc)
                lost += 1
            else:
                innocent.append((i, fut.pid, repr(exc)))
        print(
            f"\nmemory storm: {len(storm.killed)} workers killed, {ok} ok, {over} over their "
            f"limit, {lost} lost to the storm, {len(innocent)} innocent"
        )
        assert not innocent, innocent[:5]
        assert ok + over + lost == TASKS
        assert over > 0, "no task reached its limit; the test proves little"
        assert len(storm.killed) >= 10, "the storm hardly killed anything"
        assert exe.submit(limit_tasks.allocate, MiB).result(timeout=60)[1] == MiB
        stats = stats_settle(exe, timeout=30, worker_processes_busy=0)
        assert stats["tasks_received"] == TASKS + 2
        assert stats["tasks_failed"] == over + lost
        assert stats["tasks_over_memory_limit"] == over
