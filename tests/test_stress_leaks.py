"""Stress: hundreds of create/submit/shutdown cycles leak nothing.

After the cycles: no extra child process, no zombie, the parent's fd and
thread counts back to their baseline, and RSS growth under 20 MB (the issue's
bound).
"""

from __future__ import annotations

import gc
import os
import threading

import deadpool
import pytest

from tests import stress_tasks
from tests.helpers import core_testing, descendants, describe, is_spare, wait_until

pytestmark = pytest.mark.stress

MB = 1024 * 1024
RSS_GROWTH_BOUND = 20 * MB
# The 500 cycles, unscaled: ~15 ms per plain cycle here. One cycle in
# five ends a different way (timeout, crash, cancel, shutdown that kills).
CYCLES = 500
WARMUP = 25


def _fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _family(before: frozenset[int] = frozenset()) -> dict[int, tuple[int, str]]:
    """Our descendants (zombies included) other than the shared zygote, its
    spare, and those in `before` (left by earlier tests: theirs to report)."""
    zygote = core_testing().shared_zygote_pid()
    return {
        pid: info
        for pid, info in descendants(os.getpid()).items()
        if pid != zygote and pid not in before and not _live_spare_of(zygote, pid, info)
    }


def _live_spare_of(zygote: int | None, pid: int, info: tuple[int, str]) -> bool:
    ppid, state = info
    return ppid == zygote and state not in ("Z", "X") and is_spare(pid)


def _cycle(k: int, directory: str) -> None:
    variant = k % 5
    if variant == 0:  # plain, with the context manager and map
        with deadpool.Deadpool(max_workers=1) as exe:
            assert list(exe.map(stress_tasks.ident, [k, k + 1])) == [k, k + 1]
        return
    started_file = os.path.join(directory, f"started-{k}")
    never = os.path.join(directory, "never")  # blocked tasks are always killed
    exe = deadpool.Deadpool(max_workers=1)
    try:
        if variant == 1:  # the worker killed on timeout
            fut = exe.submit(stress_tasks.block_until, started_file, never, deadpool_timeout=0.05)
            assert isinstance(fut.exception(timeout=60), deadpool.TimeoutError)
        elif variant == 2:  # the worker dies
            fut = exe.submit(stress_tasks.os_exit, 5)
            assert isinstance(fut.exception(timeout=60), deadpool.ProcessError)
        elif variant in (3, 4):  # cancel a running task / shutdown that kills it
            started = threading.Event()
            fut = exe.submit(stress_tasks.block_until, started_file, never)
            fut.add_pid_callback(lambda _f: started.set())
            assert started.wait(60)
            if variant == 3:
                assert fut.cancel()
            else:
                exe.shutdown(wait=False, cancel_futures=True)
                wait_until(fut.done, timeout=60)
                return
        assert exe.submit(stress_tasks.ident, k).result(timeout=60) == k
    finally:
        exe.shutdown(wait=True)


def test_create_submit_shutdown_cycles_leak_nothing(tmp_path):
    directory = str(tmp_path)
    before = frozenset(_family())
    for k in range(WARMUP):
        _cycle(k, directory)
    gc.collect()
    wait_until(lambda: not _family(before), timeout=30, message=lambda: describe(_family(before)))
    fds, threads, rss = _fds(), _threads(), _rss()

    for k in range(CYCLES):
        _cycle(k, directory)

    gc.collect()
    wait_until(
        lambda: not _family(before),
        timeout=30,
        message=lambda: f"left after {CYCLES} cycles: {describe(_family(before))}",
    )
    wait_until(
        lambda: _threads() == threads,
        timeout=30,
        message=lambda: f"threads: {threads} before, {_threads()} after",
    )
    wait_until(
        lambda: _fds() == fds,
        timeout=30,
        message=lambda: (
            f"fds: {len(fds)} before, {len(_fds())} after: {sorted(set(_fds()) - set(fds))}"
        ),
    )
    growth = _rss() - rss
    print(
        f"\nleaks: {CYCLES} cycles, RSS growth {growth / MB:.1f} MB, "
        f"fds {len(fds)}, threads {threads}"
    )
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / MB:.1f} MB over {CYCLES} cycles"


DROPPED_POOLS = 50


def test_pools_dropped_without_shutdown_finish_their_work_and_leave_nothing():
    """Pools that go out of scope with work in flight (no shutdown, no with):
    the work still completes and the workers and threads go away."""
    threads = _threads()
    before = frozenset(_family())
    kept = []
    for k in range(DROPPED_POOLS):
        exe = deadpool.Deadpool(max_workers=1)
        kept += [exe.submit(stress_tasks.tagged, (k, i), 0.002) for i in range(3)]
        del exe
    gc.collect()
    for k in range(DROPPED_POOLS):
        for i in range(3):
            assert kept[3 * k + i].result(timeout=60)[0] == (k, i)
    del kept
    gc.collect()
    wait_until(lambda: not _family(before), timeout=30, message=lambda: describe(_family(before)))
    wait_until(
        lambda: _threads() == threads,
        timeout=30,
        message=lambda: f"threads: {threads} before, {_threads()} after",
    )
