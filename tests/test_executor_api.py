"""Python 3.14's executor API on every Python: ``map(..., buffersize=)``,
``terminate_workers()``, ``kill_workers()``, and the stdlib's wording for
the argument errors it has words for."""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import sys
import threading
import weakref

import deadpool
import pytest

from tests import tasks
from tests.helpers import (
    Gate,
    is_alive,
    pool,
    read_lines,
    returns_in_forked_child,
    stats_settle,
    wait_until,
)

# ---------------------------------------------------------------- map(buffersize=)


class CountingInput:
    """An input that counts how many items map() has taken from it."""

    def __init__(self, items, log=None):
        self.items = iter(items)
        self.taken = 0
        self.log = log

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        if self.log is not None:
            tasks.append_line(self.log, f"pull {item}")
        self.taken += 1
        return item


@pytest.mark.parametrize("buffersize", ["foo", 2.0, 1j])
def test_map_rejects_a_buffersize_that_is_not_an_integer(buffersize):
    with pool(max_workers=1) as exe:
        with pytest.raises(TypeError) as info:
            exe.map(tasks.square, range(4), buffersize=buffersize)  # at the call
        assert str(info.value) == "buffersize must be an integer or None"
        assert exe.get_statistics()["tasks_received"] == 0


@pytest.mark.parametrize("buffersize", [0, -1, False])
def test_map_rejects_a_buffersize_below_one(buffersize):
    with pool(max_workers=1) as exe:
        with pytest.raises(ValueError) as info:
            exe.map(tasks.square, range(4), buffersize=buffersize)
        assert str(info.value) == "buffersize must be None or > 0"
        assert exe.get_statistics()["tasks_received"] == 0


def test_map_checks_chunksize_then_buffersize_then_timeout_as_the_stdlib():
    with pool(max_workers=1) as exe:
        with pytest.raises(ValueError, match=r"^chunksize must be >= 1\.$"):
            exe.map(tasks.square, range(4), chunksize=0, buffersize="x", timeout="y")
        with pytest.raises(TypeError, match=r"^buffersize must be an integer or None$"):
            exe.map(tasks.square, range(4), buffersize="x", timeout="y")
        with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
            exe.map(tasks.square, range(4), buffersize=0, timeout="y")
        with pytest.raises(TypeError, match="timeout"):
            exe.map(tasks.square, range(4), buffersize=1, timeout="y")


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("buffersize", [1, 2, 7, 14, 100])
def test_map_with_buffersize_gives_every_result_in_order(buffersize, chunksize):
    with pool(max_workers=2) as exe:
        out = exe.map(
            tasks.add, range(14), range(100, 120), buffersize=buffersize, chunksize=chunksize
        )
        assert list(out) == [i + 100 + i for i in range(14)]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_with_buffersize_reads_its_input_only_as_results_are_taken(chunksize):
    source = CountingInput(range(40))
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.square, source, buffersize=4, chunksize=chunksize)
        # At the call: the first 4 tasks (chunks), nothing more.
        assert source.taken == 4 * chunksize
        for n in range(40):
            assert next(results) == n * n
            # One more task each time a task's results are taken.
            assert source.taken == min(40, (n // chunksize + 1 + 4) * chunksize)
        assert list(results) == []


def test_map_with_buffersize_takes_from_an_endless_iterator():
    source = CountingInput(itertools.count())
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.square, source, buffersize=3)
        assert list(itertools.islice(results, 25)) == [i * i for i in range(25)]
        results.close()
        assert source.taken == 25 + 3
        assert exe.get_statistics()["tasks_received"] == 28


def test_map_with_buffersize_never_has_more_unfinished_tasks_than_that(tmp_path):
    # More workers than the buffer: only map() itself can hold the count down.
    # The next input is read after the oldest task has ended, so in the shared
    # log every "pull n" follows "end n-2".
    log = str(tmp_path / "log")
    source = CountingInput(range(30), log=log)
    with pool(max_workers=4) as exe:
        assert list(exe.map(tasks.log_start_end, source, [log] * 30, buffersize=2)) == list(
            range(30)
        )
    lines = read_lines(log)
    ended: set[int] = set()
    started = 0
    for line in lines:
        kind, n = line.split()
        if kind == "end":
            ended.add(int(n))
        elif kind == "start":
            started += 1
            assert started - len(ended) <= 2, f"more than 2 tasks unfinished at {line!r}: {lines}"
        elif int(n) >= 2:
            assert int(n) - 2 in ended, f"{line!r} before end {int(n) - 2}: {lines}"


def test_map_with_buffersize_does_not_wait_for_room_in_a_small_backlog(tmp_path):
    # One worker, a backlog of 1, a buffer of 5: item 1 runs until the caller
    # has taken item 0's result. If map() waited for room in the backlog while
    # filling its buffer, it would never hand over that result.
    release = tmp_path / "release"
    outcome: list = []

    def consume(exe):
        try:
            results = exe.map(
                tasks.chunk_item, range(8), [str(tmp_path)] * 8, [1] * 8, buffersize=5
            )
            outcome.append(next(results)[0])
            release.touch()
            outcome.extend(i for i, _, _ in results)
        except BaseException as exc:
            outcome.append(exc)

    with pool(max_workers=1, max_backlog=1) as exe:
        consumer = threading.Thread(target=consume, args=(exe,), daemon=True)
        consumer.start()
        consumer.join(30)
        if consumer.is_alive():
            release.touch()
            consumer.join(30)
            pytest.fail("map(buffersize=5) blocked on max_backlog=1 before yielding")
    assert outcome == list(range(8))


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_with_buffersize_honours_timeout(tmp_path, chunksize):
    release = tmp_path / "release"
    with pool(max_workers=1, max_backlog=1) as exe:
        try:
            results = exe.map(
                tasks.block_from,
                range(10),
                [str(tmp_path)] * 10,
                [0] * 10,
                timeout=0.2,
                buffersize=2,
                chunksize=chunksize,
            )
            with pytest.raises(concurrent.futures.TimeoutError):
                list(results)
        finally:
            release.touch()
        assert exe.submit(tasks.square, 5).result(timeout=30) == 25


def test_leaving_a_buffered_map_early_cancels_what_it_has_not_yielded(tmp_path):
    # Item 0 returns; items 1 on block. Closing the iterator after item 0
    # kills item 1 (running) and cancels items 2 and 3 (waiting).
    with pool(max_workers=1, max_backlog=10) as exe:
        try:
            results = exe.map(
                tasks.block_from, range(10), [str(tmp_path)] * 10, [1] * 10, buffersize=3
            )
            assert next(results) == 0
            wait_until((tmp_path / "started-1").exists, timeout=30)
            pid = int((tmp_path / "started-1").read_text())
            results.close()
            wait_until(lambda: not is_alive(pid), timeout=30, message="item 1 was not killed")
            assert exe.get_statistics()["tasks_received"] == 4
            # Nothing else runs: items 2 and 3 were cancelled, not started.
            assert exe.submit(tasks.square, 6).result(timeout=30) == 36
            stats = stats_settle(exe, worker_processes_busy=0)
            assert stats["tasks_launched"] == 3, stats
            assert not (tmp_path / "started-2").exists()
        finally:
            (tmp_path / "release").touch()


def test_a_buffered_chunked_map_yields_the_results_before_a_failing_item():
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.raise_value_error_if_three, range(20), chunksize=2, buffersize=2)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(results)
        with pytest.raises(StopIteration):
            next(results)


def _broken_input(n):
    yield from range(n)
    raise RuntimeError("the input broke")


def test_a_buffered_map_yields_the_results_before_an_input_that_raises():
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.square, _broken_input(6), buffersize=2)
        assert [next(results) for _ in range(6)] == [0, 1, 4, 9, 16, 25]
        with pytest.raises(RuntimeError, match="the input broke"):
            next(results)
        # Without buffersize the input is read at the call, as the stdlib does.
        with pytest.raises(RuntimeError, match="the input broke"):
            exe.map(tasks.square, _broken_input(3))


def test_a_buffered_map_after_shutdown_yields_what_was_submitted_then_pool_closed():
    with pool(max_workers=1) as exe:
        results = exe.map(tasks.square, range(10), buffersize=2)
        assert next(results) == 0  # items 1 and 2 are submitted now
        exe.shutdown(wait=True)
        assert next(results) == 1
        assert next(results) == 4
        with pytest.raises(deadpool.PoolClosed):
            next(results)
        with pytest.raises(deadpool.PoolClosed):
            exe.map(tasks.square, range(3), buffersize=2)


def test_map_without_buffersize_still_submits_everything_at_the_call():
    source = CountingInput(range(12))
    with pool(max_workers=2, max_backlog=0) as exe:
        results = exe.map(tasks.square, source)
        assert source.taken == 12
        assert exe.get_statistics()["tasks_received"] == 12
        assert list(results) == [i * i for i in range(12)]


# ---------------------------------------------------------------- terminate_workers / kill_workers

SIGNALS = [
    pytest.param("terminate_workers", -15, "Terminated", id="terminate_workers"),
    pytest.param("kill_workers", -9, "Killed", id="kill_workers"),
]


@pytest.mark.parametrize(("method", "exitcode", "name"), SIGNALS)
def test_signalling_the_workers_fails_running_tasks_and_cancels_waiting_ones(
    tmp_path, method, exitcode, name
):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=10) as exe:
        try:
            running = gate.submit(exe, "running")
            pid = gate.wait_started(running)
            waiting = [exe.submit(tasks.square, i) for i in range(3)]
            assert getattr(exe, method)() is None
            error = running.exception(timeout=30)
            assert isinstance(error, deadpool.ProcessError), repr(error)
            assert str(error) == (
                f"Subprocess {pid} completed unexpectedly with exitcode {exitcode} ({name})"
            )
            assert all(f.cancelled() for f in waiting)
            with pytest.raises(deadpool.PoolClosed):
                exe.submit(tasks.square, 1)
            wait_until(lambda: not is_alive(pid), timeout=30)
        finally:
            gate.open()


@pytest.mark.parametrize(("method", "exitcode", "name"), SIGNALS)
def test_signalling_the_workers_reaches_their_whole_process_trees(tmp_path, method, exitcode, name):
    pids_path, release = tmp_path / "pids", tmp_path / "release"
    with pool(max_workers=1) as exe:
        try:
            fut = exe.submit(tasks.spawn_grandchildren_and_block, str(pids_path), str(release))
            wait_until(pids_path.exists, timeout=30)
            pids = [int(p) for p in pids_path.read_text().split()]
            getattr(exe, method)()
            assert f"exitcode {exitcode} ({name})" in str(fut.exception(timeout=30))
            for pid in pids:
                wait_until(lambda pid=pid: not is_alive(pid), timeout=30, message=f"{pid} lives")
        finally:
            release.touch()


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_signalling_idle_workers_ends_them_quietly(method):
    with pool(max_workers=2) as exe:
        pids = {exe.submit(tasks.get_pid).result(timeout=30) for _ in range(4)}
        done = exe.submit(tasks.square, 7)
        assert done.result(timeout=30) == 49
        getattr(exe, method)()
        for pid in pids:
            wait_until(lambda pid=pid: not is_alive(pid), timeout=30, message=f"{pid} lives")
        assert done.result() == 49
        assert exe.get_statistics()["tasks_failed"] == 0


def test_terminate_workers_does_not_wait_and_kill_workers_may_follow(tmp_path):
    # The task ignores SIGTERM: terminate_workers() returns at once all the
    # same, and kill_workers() afterwards ends it.
    started, release = tmp_path / "started", tmp_path / "release"
    with pool(max_workers=1) as exe:
        try:
            fut = exe.submit(tasks.ignore_sigterm_then_block, str(started), str(release))
            wait_until(started.exists, timeout=30)
            pid = int(started.read_text())
            exe.terminate_workers()
            assert not fut.done()
            exe.kill_workers()
            assert "exitcode -9 (Killed)" in str(fut.exception(timeout=30))
            wait_until(lambda: not is_alive(pid), timeout=30)
        finally:
            release.touch()


def test_terminate_and_kill_after_shutdown_or_twice_are_harmless():
    exe = deadpool.Deadpool(max_workers=1)
    try:
        assert exe.submit(tasks.square, 3).result(timeout=30) == 9
        exe.kill_workers()
        exe.kill_workers()
        exe.terminate_workers()
        exe.shutdown()
        exe.terminate_workers()
        with pytest.raises(deadpool.PoolClosed):
            exe.submit(tasks.square, 1)
    finally:
        exe.shutdown(wait=True)


def test_a_forked_child_does_not_signal_the_parents_workers(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        try:
            running = gate.submit(exe, "running")
            gate.wait_started(running)
            assert returns_in_forked_child(lambda: (exe.terminate_workers(), exe.kill_workers()))
            assert not running.done()
            gate.open()
            assert running.result(timeout=30) == "running"
            assert exe.submit(tasks.square, 2).result(timeout=30) == 4
        finally:
            gate.open()


# ---------------------------------------------------------------- the stdlib's words


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_below_one_is_the_stdlib_value_error(max_workers):
    with pytest.raises(ValueError) as info:
        deadpool.Deadpool(max_workers=max_workers)
    assert str(info.value) == "max_workers must be greater than 0"
    with pytest.raises(ValueError) as info:
        concurrent.futures.ProcessPoolExecutor(max_workers=max_workers)
    assert str(info.value) == "max_workers must be greater than 0"


def test_max_workers_that_is_not_an_integer_is_still_a_type_error():
    with pytest.raises(TypeError, match="max_workers must be an int, not str"):
        deadpool.Deadpool(max_workers="2")


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "message"),
    [
        (dict(max_tasks_per_child=0), ValueError, "max_tasks_per_child must be >= 1"),
        (dict(max_tasks_per_child=-2), ValueError, "max_tasks_per_child must be >= 1"),
        (dict(max_tasks_per_child="1"), TypeError, "max_tasks_per_child must be an integer"),
        (dict(initializer=5), TypeError, "initializer must be a callable"),
    ],
)
def test_constructor_errors_the_stdlib_has_words_for(kwargs, exc_type, message):
    with pytest.raises(exc_type) as info:
        deadpool.Deadpool(max_workers=1, **kwargs)
    assert str(info.value) == message
    if "max_tasks_per_child" in kwargs and sys.version_info < (3, 11):
        return  # the stdlib has it from 3.11
    with pytest.raises(exc_type) as info:
        concurrent.futures.ProcessPoolExecutor(max_workers=1, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("chunksize", [0, -5])
def test_map_chunksize_below_one_is_the_stdlib_value_error(chunksize):
    with pool(max_workers=1) as exe:
        with pytest.raises(ValueError) as info:
            exe.map(tasks.square, range(3), chunksize=chunksize)
    assert str(info.value) == "chunksize must be >= 1."
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as stdlib:
        with pytest.raises(ValueError) as info:
            stdlib.map(tasks.square, range(3), chunksize=chunksize)
    assert str(info.value) == "chunksize must be >= 1."


@pytest.mark.parametrize("options", [{}, {"chunksize": 3}, {"buffersize": 2}])
def test_map_keeps_no_reference_to_a_result_it_has_yielded(options):
    # CPython issue 14406: the result iterator must not keep results alive.
    with pool(max_workers=2) as exe:
        for result in exe.map(tasks.make_collectable, range(6), **options):
            ref = weakref.ref(result)
            del result
            gc.collect()
            assert ref() is None
