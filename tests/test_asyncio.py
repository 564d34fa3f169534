"""The asyncio API: ``asubmit``, ``amap`` and ``async with``, none of which may
block the event loop.

Each test runs its coroutine with ``run()``: a fresh loop, and a deadline
past which the coroutine is cancelled, so that a test fails rather than hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures.process import _RemoteTraceback
from pathlib import Path

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, stats_settle

DEADLINE = 60.0


def run(main, timeout: float = DEADLINE):
    """Run the coroutine ``main`` on a new event loop, cancelled after ``timeout`` s."""

    async def bounded():
        return await asyncio.wait_for(main, timeout)

    return asyncio.run(bounded())


async def until(predicate, timeout: float = 30.0, message: str | None = None):
    """``wait_until`` for coroutines: polls without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout}s: {message or predicate}")
        await asyncio.sleep(0.01)
    return value


async def asubmit_gate(exe, gate: Gate, value=None, **kwargs):
    return await exe.asubmit(
        tasks.block_until_released, str(gate.started), str(gate.release_path), value, **kwargs
    )


async def started(gate: Gate) -> int:
    """The pid of the worker running the gate's task, once it runs."""
    await until(gate.is_started, message=f"{gate.started} never appeared")
    return int(gate.started.read_text())


async def turns(n: int = 20) -> None:
    """Lets the loop run everything that is ready, ``n`` times over."""
    for _ in range(n):
        await asyncio.sleep(0)


class CountingInput:
    """An input that counts how many items have been taken from it."""

    def __init__(self, items):
        self.items = iter(items)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        self.taken += 1
        return item


# ---------------------------------------------------------------- asubmit


def test_asubmit_returns_an_asyncio_future_of_the_running_loop():
    async def main():
        with pool(max_workers=1) as exe:
            fut = await exe.asubmit(tasks.echo_args, 1, 2, key="v", fn="not ours")
            assert isinstance(fut, asyncio.Future)
            assert fut.get_loop() is asyncio.get_running_loop()
            assert await fut == ((1, 2), {"key": "v", "fn": "not ours"})

    run(main())


BAD_ARGUMENTS = [
    ((42,), {}, TypeError, "fn must be callable"),
    ((tasks.square, 1), {"deadpool_timeout": "1"}, TypeError, "deadpool_timeout"),
    ((tasks.square, 1), {"deadpool_timeout": -1}, ValueError, "deadpool_timeout"),
    ((tasks.square, 1), {"deadpool_timeout": float("nan")}, ValueError, "deadpool_timeout"),
    ((tasks.square, 1), {"deadpool_timeout": 1e30}, ValueError, "deadpool_timeout"),
    ((tasks.square, 1), {"deadpool_priority": -1}, ValueError, "deadpool_priority"),
    ((tasks.square, 1), {"deadpool_priority": 1.5}, TypeError, "deadpool_priority"),
    ((tasks.square, 1), {"deadpool_priority": True}, TypeError, "deadpool_priority"),
    ((tasks.square, 1), {"deadpool_priority": 2**64}, ValueError, "deadpool_priority"),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "name"), BAD_ARGUMENTS)
def test_asubmit_refuses_bad_arguments_as_submit_does(args, kwargs, error, name):
    async def main():
        with pool(max_workers=1) as exe:
            with pytest.raises(error, match=name) as refused:
                await exe.asubmit(*args, **kwargs)
            with pytest.raises(error) as refused_by_submit:
                exe.submit(*args, **kwargs)
            assert str(refused.value) == str(refused_by_submit.value)
            assert exe.get_statistics()["tasks_received"] == 0
            assert exe._dispatcher.futures == {}

    run(main())


def test_an_asubmit_that_will_not_pickle_fails_its_own_future_only():
    async def main():
        with pool(max_workers=1) as exe:
            fut = await exe.asubmit(tasks.return_value, threading.Lock())
            with pytest.raises(TypeError, match="pickle"):
                await fut
            assert await (await exe.asubmit(tasks.square, 4)) == 16

    run(main())


def test_asubmit_delivers_exceptions_timeouts_and_lost_workers_as_submit_does():
    async def main():
        with pool(max_workers=2) as exe:
            raised = await exe.asubmit(tasks.raise_value_error, "bad", 7)
            timed_out = await exe.asubmit(tasks.sleep_then_return, 60, deadpool_timeout=0.2)
            lost = await exe.asubmit(tasks.kill_self, signal.SIGKILL)
            with pytest.raises(ValueError) as info:
                await raised
            assert info.value.args == ("bad", 7)
            assert isinstance(info.value.__cause__, _RemoteTraceback)
            assert "raise_value_error" in str(info.value.__cause__)
            with pytest.raises(deadpool.TimeoutError, match="timed out"):
                await timed_out
            with pytest.raises(deadpool.ProcessError, match="exitcode -9"):
                await lost
            assert await (await exe.asubmit(tasks.square, 3)) == 9

    run(main())


def test_asubmit_waits_for_room_and_never_admits_past_max_backlog(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        with pool(max_workers=1, max_backlog=2) as exe:
            try:
                running = await asubmit_gate(exe, gate, "ran")
                await started(gate)
                first = await exe.asubmit(tasks.return_value, "first")
                second = await exe.asubmit(tasks.return_value, "second")
                third = asyncio.ensure_future(exe.asubmit(tasks.return_value, "third"))
                await turns()
                assert not third.done(), "admitted past max_backlog=2"
                assert exe.get_statistics()["tasks_received"] == 3
                first.cancel()  # a pending task leaves: room for the third
                third = await third
                assert exe.get_statistics()["tasks_received"] == 4
                gate.open()
                assert [await running, await second, await third] == ["ran", "second", "third"]
                with pytest.raises(asyncio.CancelledError):
                    await first
            finally:
                gate.open()

    run(main())


def test_waiting_asubmits_are_let_in_in_arrival_order_as_tasks_start(tmp_path):
    gate = Gate(tmp_path)
    order_file = tmp_path / "order"

    async def main():
        with pool(max_workers=1, max_backlog=1) as exe:
            try:
                running = await asubmit_gate(exe, gate)
                await started(gate)
                filler = await exe.asubmit(tasks.append_tag, str(order_file), "filler")
                admitted = []

                async def submit(tag):
                    fut = await exe.asubmit(tasks.append_tag, str(order_file), tag)
                    admitted.append(tag)
                    return await fut

                tags = [f"t{i}" for i in range(8)]
                waiting = [asyncio.ensure_future(submit(tag)) for tag in tags]
                await turns()
                assert admitted == []
                assert exe.get_statistics()["tasks_received"] == 2
                # Each start on the one worker leaves room for exactly one.
                gate.open()
                assert await asyncio.gather(*waiting) == tags
                assert admitted == tags
                assert await filler == "filler"
                await running
                assert order_file.read_text().split() == ["filler", *tags]
                assert exe._admissions == {}, "nobody waits: the loop watches nothing"
            finally:
                gate.open()

    run(main())


def test_cancelling_a_waiting_asubmit_leaves_no_task_behind(tmp_path):
    gate = Gate(tmp_path)

    def marker(i):
        return tmp_path / f"ran-{i}"

    async def main():
        with pool(max_workers=1, max_backlog=1) as exe:
            try:
                running = await asubmit_gate(exe, gate)
                await started(gate)
                await exe.asubmit(tasks.return_value, "filler")
                waiting = [
                    asyncio.ensure_future(exe.asubmit(tasks.touch_then_return, str(marker(i)), i))
                    for i in range(3)
                ]
                await turns()
                waiting[1].cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting[1]
                gate.open()
                assert [await (await waiting[0]), await (await waiting[2])] == [0, 2]
                await running
                assert not marker(1).exists()
                assert exe.get_statistics()["tasks_received"] == 4  # gate, filler, 0, 2

                # The only waiter cancelled: the loop stops watching for room.
                gate.release_path.unlink()
                gate.started.unlink()
                running = await asubmit_gate(exe, gate)
                await started(gate)
                filler = await exe.asubmit(tasks.return_value, "filler")
                alone = asyncio.ensure_future(exe.asubmit(tasks.touch_then_return, marker(9), 9))
                await turns()
                assert list(exe._admissions) == [asyncio.get_running_loop()]
                alone.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await alone
                assert exe._admissions == {}
                gate.open()
                assert [await running, await filler] == [None, "filler"]
                assert exe.get_statistics()["tasks_received"] == 6
                assert not marker(9).exists()
                assert exe._dispatcher.futures == {}
            finally:
                gate.open()

    run(main())


def test_an_asubmit_cancelled_as_it_is_let_in_takes_its_task_out_again(tmp_path):
    # The race: room frees and the signal's callback lets the waiter in, then
    # its coroutine is cancelled before it resumes. The task must not run.
    gate = Gate(tmp_path)
    ran = tmp_path / "ran"

    async def main():
        with pool(max_workers=1, max_backlog=1) as exe:
            try:
                running = await asubmit_gate(exe, gate)
                await started(gate)
                filler = exe.submit(tasks.return_value, "filler")
                waiter = asyncio.ensure_future(exe.asubmit(tasks.touch_then_return, str(ran)))
                await turns()
                assert filler.cancel()  # room now
                exe._admissions[asyncio.get_running_loop()]._let_in()  # the signal's callback
                assert exe.get_statistics()["tasks_received"] == 3, "let in"
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                gate.open()
                await running
                assert await (await exe.asubmit(tasks.square, 2)) == 4
                assert not ran.exists(), "the cancelled task ran"
                assert exe._dispatcher.futures == {}
            finally:
                gate.open()

    run(main())


def test_an_asubmit_cancelled_just_before_room_frees_is_not_let_in(tmp_path):
    # The other order: the waiter is cancelled, then the signal's callback
    # runs before the cancelled coroutine has resumed. It must be skipped.
    gate = Gate(tmp_path)
    ran = tmp_path / "ran"

    async def main():
        with pool(max_workers=1, max_backlog=1) as exe:
            try:
                running = await asubmit_gate(exe, gate)
                await started(gate)
                filler = exe.submit(tasks.return_value, "filler")
                cancelled = asyncio.ensure_future(exe.asubmit(tasks.touch_then_return, str(ran)))
                behind = asyncio.ensure_future(exe.asubmit(tasks.return_value, "behind"))
                await turns()
                cancelled.cancel()
                assert filler.cancel()  # room now
                exe._admissions[asyncio.get_running_loop()]._let_in()  # the signal's callback
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                behind = await behind
                assert exe.get_statistics()["tasks_received"] == 3, "gate, filler, behind"
                gate.open()
                assert [await running, await behind] == [None, "behind"]
                assert not ran.exists(), "the cancelled task ran"
                assert exe._admissions == {}
            finally:
                gate.open()

    run(main())


@pytest.mark.parametrize("how", ["kill now, from the loop", "wait, from a thread"])
def test_shutdown_while_asubmit_waits_raises_pool_closed(tmp_path, how):
    gate = Gate(tmp_path)

    async def main():
        with pool(max_workers=1, max_backlog=1) as exe:
            try:
                running = await asubmit_gate(exe, gate, "ran")
                await started(gate)
                await exe.asubmit(tasks.return_value, 1)
                waiter = asyncio.ensure_future(exe.asubmit(tasks.return_value, 2))
                await turns()
                if how == "kill now, from the loop":
                    exe.shutdown(wait=False, cancel_futures=True)
                else:
                    stopper = threading.Thread(target=exe.shutdown, daemon=True)
                    stopper.start()
                with pytest.raises(deadpool.PoolClosed) as closed:
                    await waiter
                with pytest.raises(deadpool.PoolClosed) as closed_later:
                    await exe.asubmit(tasks.return_value, 3)
                with pytest.raises(deadpool.PoolClosed) as closed_sync:
                    exe.submit(tasks.return_value, 3)
                assert str(closed.value) == str(closed_later.value) == str(closed_sync.value)
                if how == "kill now, from the loop":
                    with pytest.raises(asyncio.CancelledError):
                        await running
                else:
                    gate.open()
                    assert await running == "ran"
                    stopper.join(30)
                assert exe.get_statistics()["tasks_received"] == 2
            finally:
                gate.open()

    run(main())


def test_cancelling_an_asubmit_future_kills_its_running_task(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        with pool(max_workers=1) as exe:
            try:
                fut = await asubmit_gate(exe, gate)
                pid = await started(gate)
                assert fut.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await fut
                await until(lambda: not is_alive(pid), message=f"worker {pid} not killed")
                assert await (await exe.asubmit(tasks.get_pid)) != pid
                assert exe.get_statistics()["tasks_failed"] == 0
            finally:
                gate.open()

    run(main())


def test_a_timeout_on_awaiting_an_asubmit_future_kills_the_task(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        with pool(max_workers=1) as exe:
            try:
                fut = await asubmit_gate(exe, gate)
                pid = await started(gate)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, 0.05)
                assert fut.cancelled()
                await until(lambda: not is_alive(pid), message=f"worker {pid} not killed")
            finally:
                gate.open()

    run(main())


def test_shutdown_cancelling_the_work_cancels_the_asyncio_futures(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        with pool(max_workers=1, max_backlog=5) as exe:
            try:
                running = await asubmit_gate(exe, gate)
                pid = await started(gate)
                pending = await exe.asubmit(tasks.return_value, 1)
                exe.shutdown(wait=False, cancel_futures=True)
                for fut in (running, pending):
                    with pytest.raises(asyncio.CancelledError):
                        await fut
                await until(lambda: not is_alive(pid), message=f"worker {pid} not killed")
            finally:
                gate.open()

    run(main())


def test_sixty_asubmits_into_a_small_backlog_never_stall_the_loop():
    # The first two tasks hold both workers for half a second, so the 56
    # behind the backlog of 2 wait that long for room. Waiting by blocking
    # would stop the heartbeat for about that long.
    async def main():
        with pool(max_workers=2, max_backlog=2) as exe:
            gaps: list[float] = []
            stop = asyncio.Event()

            async def heartbeat():
                last = time.monotonic()
                while not stop.is_set():
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            beat = asyncio.ensure_future(heartbeat())
            futs = await asyncio.gather(
                *(exe.asubmit(tasks.sleep_then_return, 0.5 if i < 2 else 0, i) for i in range(60))
            )
            results = await asyncio.gather(*futs)
            stop.set()
            await beat
            assert results == list(range(60))
            assert len(gaps) >= 20, "the heartbeat barely ran"
            assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.3f} s"

    run(main())


def test_asubmit_waits_on_several_loops_at_once(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=1) as exe:
        try:
            running = gate.submit(exe)
            gate.wait_started(running)
            exe.submit(tasks.return_value, "filler")
            results: dict[int, list] = {}
            waiting = threading.Barrier(3)

            async def submit_from_this_loop(n):
                submitted = [asyncio.ensure_future(exe.asubmit(tasks.add, n, i)) for i in range(3)]
                await turns()
                await asyncio.get_running_loop().run_in_executor(None, waiting.wait, 30)
                return [await (await fut) for fut in submitted]

            def loop_thread(n):
                results[n] = run(submit_from_this_loop(n))

            threads = [threading.Thread(target=loop_thread, args=(n,)) for n in (100, 200)]
            for thread in threads:
                thread.start()
            waiting.wait(30)  # both loops wait for room
            assert exe.get_statistics()["tasks_received"] == 2
            gate.open()
            for thread in threads:
                thread.join(DEADLINE)
            assert results == {100: [100, 101, 102], 200: [200, 201, 202]}
        finally:
            gate.open()


# ---------------------------------------------------------------- async with


def test_async_with_gives_the_pool_and_shuts_it_down():
    async def main():
        async with deadpool.Deadpool(max_workers=1) as exe:
            assert isinstance(exe, deadpool.Deadpool)
            assert await (await exe.asubmit(tasks.square, 5)) == 25
        with pytest.raises(deadpool.PoolClosed):
            await exe.asubmit(tasks.square, 5)
        assert exe.get_statistics()["worker_processes_still_alive"] == 0

    run(main())


def test_leaving_async_with_waits_for_a_running_task_without_blocking_the_loop(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        exe = deadpool.Deadpool(max_workers=1)
        try:

            async def block():
                async with exe:
                    fut = await asubmit_gate(exe, gate, "done")
                    await started(gate)
                return fut

            leaving = asyncio.ensure_future(block())
            await until(lambda: exe._closed, message="__aexit__ never began")
            beats = 0
            while beats < 10:  # the loop runs on while __aexit__ waits
                await asyncio.sleep(0.01)
                beats += 1
            assert not leaving.done(), "__aexit__ did not wait for the running task"
            gate.open()
            fut = await leaving
            assert fut.done(), "the outcome arrived before __aexit__ returned"
            assert await fut == "done"
            assert exe.get_statistics()["worker_processes_still_alive"] == 0
        finally:
            gate.open()
            exe.shutdown(wait=False, cancel_futures=True)

    run(main())


@pytest.mark.parametrize(
    ("shutdown_wait", "shutdown_cancel_futures", "running_ends", "pending_ends"),
    [
        (None, None, "finished", "finished"),
        (True, False, "finished", "finished"),
        (True, True, "finished", "cancelled"),
        (False, True, "killed", "cancelled"),
        (False, False, "finished", "cancelled"),
    ],
)
def test_leaving_async_with_honours_the_shutdown_flags(
    tmp_path, shutdown_wait, shutdown_cancel_futures, running_ends, pending_ends
):
    gate = Gate(tmp_path)

    async def main():
        exe = deadpool.Deadpool(
            max_workers=1,
            shutdown_wait=shutdown_wait,
            shutdown_cancel_futures=shutdown_cancel_futures,
        )
        futures = {}
        try:

            async def block():
                async with exe:
                    futures["running"] = await asubmit_gate(exe, gate, "running")
                    futures["pid"] = await started(gate)
                    futures["pending"] = await exe.asubmit(tasks.return_value, "pending")

            leaving = asyncio.ensure_future(block())
            if shutdown_wait is False:
                await leaving  # at once, with the gate still shut
                if running_ends == "killed":
                    # shutdown(wait=False) returns before the supervisor acts on
                    # it: opening the gate first could let the task finish first.
                    await until(lambda: not is_alive(futures["pid"]), message="not killed")
            else:
                await until(lambda: exe._closed, message="__aexit__ never began")
                await turns()
                assert not leaving.done(), "__aexit__ did not wait"
                gate.open()
                await leaving
            gate.open()
            for name, ends in (("running", running_ends), ("pending", pending_ends)):
                if ends == "finished":
                    assert await futures[name] == name
                else:
                    with pytest.raises(asyncio.CancelledError):
                        await futures[name]
            if running_ends == "killed":
                await until(lambda: not is_alive(futures["pid"]), message="not killed")
        finally:
            gate.open()
            exe.shutdown(wait=False, cancel_futures=True)

    run(main())


def test_an_async_with_block_left_by_cancellation_kills_its_work(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        exe = deadpool.Deadpool(max_workers=1, max_backlog=5)
        futures = []
        try:

            async def block():
                async with exe:
                    futures.append(await asubmit_gate(exe, gate))
                    futures.append(await exe.asubmit(tasks.return_value, "pending"))
                    await asyncio.Event().wait()  # until cancelled

            inside = asyncio.ensure_future(block())
            pid = await started(gate)
            await until(lambda: len(futures) == 2)
            inside.cancel()
            with pytest.raises(asyncio.CancelledError):
                await inside
            for fut in futures:
                with pytest.raises(asyncio.CancelledError):
                    await fut
            assert not is_alive(pid), "__aexit__ returned before the worker was gone"
            with pytest.raises(deadpool.PoolClosed):
                exe.submit(tasks.square, 1)
        finally:
            gate.open()
            exe.shutdown(wait=False, cancel_futures=True)

    run(main())


def test_cancelling_the_wait_of_aexit_kills_the_work(tmp_path):
    gate = Gate(tmp_path)

    async def main():
        exe = deadpool.Deadpool(max_workers=1)
        try:

            async def block():
                async with exe:
                    fut = await asubmit_gate(exe, gate)
                    await started(gate)
                return fut

            leaving = asyncio.ensure_future(block())
            pid = await started(gate)
            await until(lambda: exe._closed, message="__aexit__ never began")
            await turns()
            assert not leaving.done()
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            await until(lambda: not is_alive(pid), message=f"worker {pid} not killed")
        finally:
            gate.open()
            exe.shutdown(wait=False, cancel_futures=True)

    run(main())


# ---------------------------------------------------------------- amap


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("buffersize", [None, 1, 4, 50])
def test_amap_yields_results_in_input_order(chunksize, buffersize):
    async def main():
        with pool(max_workers=2, max_backlog=2) as exe:
            results = exe.amap(
                tasks.add, range(20), range(100, 130), chunksize=chunksize, buffersize=buffersize
            )
            assert [r async for r in results] == [i + 100 + i for i in range(20)]
            # The first finishes last.
            delays = [0.3] + [0] * 5
            results = exe.amap(tasks.sleep_then_return, delays, range(6), chunksize=chunksize)
            assert [r async for r in results] == list(range(6))
            assert [r async for r in exe.amap(tasks.square, [])] == []

    run(main())


AMAP_BAD_ARGUMENTS = [
    ({"chunksize": 0}, ValueError, "chunksize must be >= 1."),
    ({"chunksize": "2"}, TypeError, "chunksize"),
    ({"buffersize": "x"}, TypeError, "buffersize must be an integer or None"),
    ({"buffersize": 2.0}, TypeError, "buffersize must be an integer or None"),
    ({"buffersize": 0}, ValueError, "buffersize must be None or > 0"),
    ({"chunksize": 0, "buffersize": 0}, ValueError, "chunksize must be >= 1."),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), AMAP_BAD_ARGUMENTS)
def test_amap_refuses_bad_arguments_at_the_call_as_map_does(kwargs, error, message):
    with pool(max_workers=1) as exe:
        with pytest.raises(error) as refused:
            exe.amap(tasks.square, range(3), **kwargs)  # no loop needed to refuse
        with pytest.raises(error) as refused_by_map:
            exe.map(tasks.square, range(3), **kwargs)
        assert str(refused.value) == str(refused_by_map.value)
        assert message in str(refused.value)
        with pytest.raises(TypeError, match="fn must be callable"):
            exe.amap(42, range(3))
        with pytest.raises(TypeError):
            exe.amap(tasks.square, 42)
        assert exe.get_statistics()["tasks_received"] == 0
    with pytest.raises(deadpool.PoolClosed):
        exe.amap(tasks.square, range(3))


@pytest.mark.parametrize(
    ("max_backlog", "buffersize", "taken", "received"),
    [
        (2, None, 3, 3),  # max_workers + max_backlog
        (0, None, 2, 2),  # no bound on the backlog: max_workers twice
        (2, 5, 4, 3),  # the backlog's bound holds: one more read waits for room
        (5, 1, 1, 1),
    ],
)
def test_amap_reads_its_input_lazily_and_keeps_a_bounded_number_in_flight(
    tmp_path, max_backlog, buffersize, taken, received
):
    # Item 0 holds the only worker. Meanwhile amap reads `taken` items and no
    # more, and `received` of them enter the pool.
    source = CountingInput(range(30))
    release = tmp_path / "release"

    async def main():
        with pool(max_workers=1, max_backlog=max_backlog) as exe:
            try:
                results = exe.amap(
                    tasks.chunk_item,
                    source,
                    itertools.repeat(str(tmp_path)),
                    itertools.repeat(0),
                    buffersize=buffersize,
                )
                await turns()
                assert source.taken == 0, "read before the iteration began"
                first = asyncio.ensure_future(results.__anext__())
                await until(lambda: (tmp_path / "started-0").exists())
                await until(lambda: source.taken == taken)
                await turns()
                assert source.taken == taken
                assert exe.get_statistics()["tasks_received"] == received
                release.touch()
                assert (await first)[0] == 0
                assert [i async for i, _, _ in results] == list(range(1, 30))
            finally:
                release.touch()

    run(main())


def test_amap_hands_over_results_while_it_waits_for_room_in_the_backlog(tmp_path):
    # One worker, a backlog of 1, a buffer of 5: item 1 runs until the caller
    # has taken item 0's result, so amap must yield while its next tasks wait.
    release = tmp_path / "release"

    async def main():
        with pool(max_workers=1, max_backlog=1) as exe:
            try:
                results = exe.amap(
                    tasks.chunk_item, range(8), [str(tmp_path)] * 8, [1] * 8, buffersize=5
                )
                got = [(await results.__anext__())[0]]
                release.touch()
                got.extend([i async for i, _, _ in results])
                assert got == list(range(8))
            finally:
                release.touch()

    run(main(), timeout=30)


@pytest.mark.parametrize("how", ["break", "aclose", "raise"])
def test_leaving_amap_early_cancels_what_it_has_not_yielded(tmp_path, how):
    # Item 0 returns; items from 1 on block. Leaving after item 0 kills item 1
    # (running) and cancels the items waiting behind it.
    def started_pid(i):
        path = tmp_path / f"started-{i}"
        return path.exists() and int(path.read_text())

    async def main():
        with pool(max_workers=1, max_backlog=10) as exe:
            try:

                def results():
                    return exe.amap(
                        tasks.block_from, range(10), [str(tmp_path)] * 10, [1] * 10, buffersize=3
                    )

                if how == "break":
                    async for value in results():
                        assert value == 0
                        await until(lambda: started_pid(1))
                        break
                elif how == "aclose":
                    iterator = results()
                    assert await iterator.__anext__() == 0
                    await until(lambda: started_pid(1))
                    await iterator.aclose()
                else:
                    with pytest.raises(RuntimeError, match="enough"):
                        async for _ in results():
                            await until(lambda: started_pid(1))
                            raise RuntimeError("enough")
                pid = started_pid(1)
                await until(lambda: not is_alive(pid), message="item 1 was not killed")
                assert await (await exe.asubmit(tasks.square, 6)) == 36
                stats = stats_settle(exe, worker_processes_busy=0)
                assert stats["tasks_launched"] == 3, stats  # items 0 and 1, then square
                assert not (tmp_path / "started-2").exists()
            finally:
                (tmp_path / "release").touch()

    run(main())


def test_cancelling_a_coroutine_inside_amap_kills_the_running_task(tmp_path):
    async def main():
        with pool(max_workers=1) as exe:
            try:

                async def consume():
                    results = exe.amap(tasks.block_from, range(4), [str(tmp_path)] * 4, [0] * 4)
                    return [r async for r in results]

                consumer = asyncio.ensure_future(consume())
                path = tmp_path / "started-0"
                await until(path.exists)
                pid = int(path.read_text())
                consumer.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await consumer
                await until(lambda: not is_alive(pid), message="item 0 was not killed")
                stats = stats_settle(exe, worker_processes_busy=0)
                assert stats["tasks_launched"] == 1, stats
            finally:
                (tmp_path / "release").touch()

    run(main())


@pytest.mark.parametrize("chunksize", [1, 2])
def test_amap_raises_a_task_exception_after_the_results_before_it(chunksize):
    async def main():
        with pool(max_workers=2) as exe:
            got = []
            with pytest.raises(ValueError, match="three") as info:
                async for r in exe.amap(
                    tasks.raise_value_error_if_three, range(20), chunksize=chunksize
                ):
                    got.append(r)
            assert got == [0, 1, 2]
            assert isinstance(info.value.__cause__, _RemoteTraceback)

    run(main())


def _broken_input(n):
    yield from range(n)
    raise RuntimeError("the input broke")


def test_amap_raises_an_input_error_after_the_results_before_it():
    async def main():
        with pool(max_workers=2) as exe:
            got = []
            with pytest.raises(RuntimeError, match="the input broke"):
                async for r in exe.amap(tasks.square, _broken_input(6)):
                    got.append(r)
            assert got == [0, 1, 4, 9, 16, 25]

    run(main())


def test_amap_after_shutdown_yields_what_was_submitted_then_pool_closed():
    async def main():
        with pool(max_workers=1) as exe:
            results = exe.amap(tasks.square, range(10), buffersize=2)
            got = [await results.__anext__()]
            exe.shutdown(wait=True)
            with pytest.raises(deadpool.PoolClosed):
                async for r in results:
                    got.append(r)
            assert 2 <= len(got) <= 3
            assert got == [i * i for i in range(len(got))]

    run(main())


# ---------------------------------------------------------------- import cost


def test_the_executor_does_not_import_asyncio_until_it_is_used():
    code = "import sys, deadpool; deadpool.Deadpool; print('asyncio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False"]


def test_the_asyncio_example_runs():
    example = Path(__file__).parent.parent / "examples" / "asyncio_example.py"
    out = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith("20 tasks through a backlog of 2; the loop ticked")
    assert lines[1] == f"squares: {[i * i for i in range(20)]}"
    assert lines[2].startswith("ran too long, killed: the task timed out")
    assert lines[3].endswith("cancelled and killed: True")
    assert lines[4] == "amap, in order: 0 1 4 9 16 25 36 49"
