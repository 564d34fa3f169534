"""Per-task memory limits: `Deadpool(task_memory_limit_bytes=...)` and
`submit(..., deadpool_memory_limit=...)`.

Limits are tens of MiB and every growing task caps itself at ten times its
limit (tests/limit_tasks.py), so a limit that failed costs 320 MiB at most.
Each test prints how far past the limit the task got (run with -s)."""

from __future__ import annotations

import asyncio
import signal

import deadpool
import pytest

from tests import limit_tasks
from tests.helpers import Gate, pool

MiB = limit_tasks.MiB
LIMIT = 32 * MiB
CAP = 10 * LIMIT
DEADLINE = 60


def _stopped(fut) -> deadpool.MemoryLimitError:
    exc = fut.exception(timeout=DEADLINE)
    assert isinstance(exc, deadpool.MemoryLimitError), repr(exc)
    return exc


def _report(kind: str, exc: deadpool.MemoryLimitError) -> None:
    over = exc.memory_used - exc.memory_limit
    print(
        f"\n{kind} growth: stopped at +{exc.memory_used / MiB:.1f} MiB for a "
        f"{exc.memory_limit / MiB:.0f} MiB limit ({over / MiB:.1f} MiB past it); "
        f"worker peak RSS {exc.max_rss / MiB:.1f} MiB"
    )


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("Python", limit_tasks.grow_python),
        ("C (malloc)", limit_tasks.grow_c),
        ("child process", limit_tasks.grow_in_child),
    ],
)
def test_growth_past_the_limit_kills_the_tree_and_fails_only_that_task(kind, task):
    with pool(max_workers=1) as exe:
        fut = exe.submit(task, CAP, deadpool_memory_limit=LIMIT)
        exc = _stopped(fut)
        _report(kind, exc)
        assert isinstance(exc, deadpool.ProcessError)
        assert exc.reason == "memory"
        assert exc.memory_limit == LIMIT
        assert LIMIT < exc.memory_used < CAP
        assert (exc.pid, exc.exitcode, exc.signal) == (fut.pid, -signal.SIGKILL, signal.SIGKILL)
        assert exc.max_rss > 0
        assert f"worker {fut.pid} was killed" in str(exc)
        # The worker was replaced, and the next task runs as ever.
        assert exe.submit(limit_tasks.pid).result(timeout=DEADLINE) != fut.pid


def test_memory_error_inside_a_limited_task_is_a_memory_limit_error():
    with pool(max_workers=1) as exe:
        fut = exe.submit(limit_tasks.impossible_allocation, deadpool_memory_limit=LIMIT)
        exc = _stopped(fut)
        assert isinstance(exc.__cause__, MemoryError)
        assert (exc.reason, exc.memory_limit, exc.pid) == ("memory", LIMIT, fut.pid)
        assert exc.memory_used is None
        assert exe.submit(limit_tasks.pid).result(timeout=DEADLINE) != fut.pid, "replaced"


def test_memory_error_without_a_limit_stays_a_memory_error():
    with pool(max_workers=1) as exe:
        with pytest.raises(MemoryError):
            exe.submit(limit_tasks.impossible_allocation).result(timeout=DEADLINE)


def test_a_task_under_its_limit_returns_and_keeps_its_worker():
    with pool(max_workers=1) as exe:
        pid, size = exe.submit(
            limit_tasks.allocate, LIMIT // 2, deadpool_memory_limit=LIMIT
        ).result(timeout=DEADLINE)
        assert size == LIMIT // 2
        assert exe.submit(limit_tasks.pid).result(timeout=DEADLINE) == pid


def test_the_pool_limit_applies_and_the_task_limit_wins():
    with pool(max_workers=1, task_memory_limit_bytes=LIMIT) as exe:
        _stopped(exe.submit(limit_tasks.grow_python, CAP))
        big = 3 * LIMIT
        allowed = exe.submit(limit_tasks.allocate, LIMIT * 2, deadpool_memory_limit=big)
        assert allowed.result(timeout=DEADLINE)[1] == LIMIT * 2
        exc = _stopped(exe.submit(limit_tasks.grow_python, CAP, deadpool_memory_limit=LIMIT // 2))
        assert exc.memory_limit == LIMIT // 2


def test_map_obeys_the_pool_limit():
    with pool(max_workers=1, task_memory_limit_bytes=LIMIT) as exe:
        results = exe.map(limit_tasks.allocate, [MiB, CAP], buffersize=1)
        assert next(results)[1] == MiB
        with pytest.raises(deadpool.MemoryLimitError):
            next(results)


def test_other_tasks_and_workers_are_untouched(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=2) as exe:
        bystander = gate.submit(exe, "still here")
        bystander_pid = gate.wait_started(bystander)
        _stopped(exe.submit(limit_tasks.grow_python, CAP, deadpool_memory_limit=LIMIT))
        assert not bystander.done()
        gate.open()
        assert bystander.result(timeout=DEADLINE) == "still here"
        assert bystander.pid == bystander_pid


def test_asubmit_takes_a_memory_limit():
    async def main():
        async with deadpool.Deadpool(max_workers=1) as exe:
            with pytest.raises(deadpool.MemoryLimitError) as raised:
                await asyncio.wait_for(
                    await exe.asubmit(limit_tasks.grow_python, CAP, deadpool_memory_limit=LIMIT),
                    DEADLINE,
                )
            return raised.value.reason

    assert asyncio.run(main()) == "memory"
