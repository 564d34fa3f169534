"""What strictly typed user code sees of deadpool: ``nox -s lint`` checks this
file with ``mypy --strict``; nothing runs it.

Each annotation below is a claim about our public types. Each ``type: ignore``
is a claim that mypy rejects that line; ``--strict`` warns about an ignore that
is not needed, so this file fails both when a type gets too loose (``Any``) and
when a correct use stops type-checking.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import AsyncIterator, Iterator

import deadpool


def square(x: int) -> int:
    return x * x


def on_start(future: deadpool.Future[int]) -> None:
    pid: int | None = future.pid
    print(pid)


def use_a_pool() -> list[int]:
    with deadpool.Deadpool(
        max_workers=2,
        min_workers=1,
        max_backlog=10,
        max_tasks_per_child=100,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=print,
        initargs=("worker ready",),
        propagate_environ={"LANG": "C.UTF-8"},
        task_memory_limit_bytes=64 << 20,
    ) as exe:
        future: deadpool.Future[int] = exe.submit(
            square, 3, deadpool_timeout=1.5, deadpool_priority=2
        )
        future.add_pid_callback(on_start)
        future.add_done_callback(lambda done: print(done.exception()))
        value: int = future.result(timeout=10)
        squares: Iterator[int] = exe.map(square, range(4), chunksize=2, buffersize=4)
        finished = [f.result() for f in deadpool.as_completed([future])]
        statistics: dict[str, int] = exe.get_statistics()
        print(statistics["tasks_received"], future.cancel_and_kill_if_running())
        limited: deadpool.Future[int] = exe.submit(
            square, 4, deadpool_timeout=2, deadpool_soft_timeout=1.5, deadpool_memory_limit=1 << 25
        )
        print(limited)
        exe.submit(square, 1, deadpool_timeout="soon")  # type: ignore[arg-type]
        exe.submit(square, 1, deadpool_memory_limit="1G")  # type: ignore[arg-type]
        wrong: deadpool.Future[str] = exe.submit(square, 2)  # type: ignore[arg-type]
        print(wrong)
        return [value, *squares, *finished]


def handle_failures(future: deadpool.Future[int]) -> str:
    try:
        future.result()
    except deadpool.SoftTimeoutError:
        return "cleaned up too late"
    except deadpool.TimeoutError as late:
        peak: int | None = late.max_rss
        return f"too slow (worker peak {peak})"
    except deadpool.MemoryLimitError as big:
        used: int | None = big.memory_used
        limit: int | None = big.memory_limit
        return f"too big: {used} of {limit}"
    except deadpool.ProcessError as exc:
        pid: int | None = exc.pid
        code: int | None = exc.exitcode
        sig: signal.Signals | None = exc.signal
        reason: str | None = exc.reason
        return f"worker {pid} died: {exc} ({code}, {sig}, {reason})"
    except deadpool.CancelledError:
        return "cancelled"
    return "fine"


def shut_down(exe: deadpool.Deadpool) -> None:
    exe.shutdown(wait=False, cancel_futures=True)
    exe.terminate_workers()
    exe.kill_workers()
    exe.clear_workers()
    print(deadpool.trim_memory(), deadpool.__version__)


async def use_a_pool_from_a_coroutine() -> list[int]:
    async with deadpool.Deadpool(max_workers=2, max_backlog=2) as exe:
        future: asyncio.Future[int] = await exe.asubmit(
            square,
            3,
            deadpool_timeout=1.5,
            deadpool_priority=2,
            deadpool_soft_timeout=1.0,
            deadpool_memory_limit=1 << 25,
        )
        value: int = await future
        squares: AsyncIterator[int] = exe.amap(square, range(4), chunksize=2, buffersize=4)
        wrong: asyncio.Future[str] = await exe.asubmit(square, 2)  # type: ignore[arg-type]
        print(wrong)
        return [value, *[s async for s in squares]]
