"""Stress: hostile callbacks, and many threads submitting and cancelling at once.

No deadlock, no lost future, no task run twice.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
from collections import Counter

import deadpool
import pytest

from tests import stress_tasks
from tests.helpers import pool, wait_until

pytestmark = pytest.mark.stress

RESOLVE_DEADLINE = 120.0


def _all_resolve(futures, timeout=RESOLVE_DEADLINE):
    _done, not_done = concurrent.futures.wait(futures, timeout=timeout)
    assert not not_done, f"{len(not_done)} of {len(futures)} futures never resolved"


# ---------------------------------------------------------------- callbacks


def test_raising_done_and_pid_callbacks_change_nothing(caplog):
    n = 300
    seen_done, seen_pid = [], []
    with pool(max_workers=2, max_backlog=1) as exe:
        futures = []
        for i in range(n):
            fut = exe.submit(stress_tasks.tagged, i)
            fut.add_pid_callback(lambda f: 1 / 0)
            fut.add_pid_callback(lambda f: seen_pid.append(f.pid))
            fut.add_done_callback(lambda f: 1 / 0)
            fut.add_done_callback(lambda f: seen_done.append(f.result(timeout=0)[0]))
            futures.append(fut)
        _all_resolve(futures)
        assert [f.result(timeout=0)[0] for f in futures] == list(range(n))
        # The callbacks after the raising ones still ran, once each.
        wait_until(lambda: len(seen_done) == n and len(seen_pid) == n, timeout=30)
        assert sorted(seen_done) == list(range(n))
        assert exe.submit(stress_tasks.ident, "after").result(timeout=60) == "after"


class _Boom(BaseException):
    """Not an Exception: ``except Exception`` around a callback does not stop it."""


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, _Boom])
@pytest.mark.parametrize("kind", ["done", "pid"])
def test_callbacks_raising_base_exceptions_lose_no_future(kind, exc_type):
    """Every 10th future's callback raises a BaseException (as a Ctrl-C or
    sys.exit() inside a callback would). All 200 futures still resolve."""
    n = 200

    def explode(_fut):
        raise exc_type("from a callback")

    with pool(max_workers=2, max_backlog=n) as exe:
        futures = []
        for i in range(n):
            fut = exe.submit(stress_tasks.tagged, i)
            if i % 10 == 0:
                if kind == "done":
                    fut.add_done_callback(explode)
                else:
                    fut.add_pid_callback(explode)
            futures.append(fut)
        # 200 tasks of microseconds: 30 s is ample, and a lost future never comes.
        _all_resolve(futures, timeout=30)
        assert [f.result(timeout=0)[0] for f in futures] == list(range(n))
        assert exe.submit(stress_tasks.ident, "after").result(timeout=60) == "after"


@pytest.mark.parametrize("kind", ["done", "pid"])
def test_a_blocking_callback_does_not_stall_the_workers(kind):
    """While a callback blocks (the thread that delivers outcomes with it),
    submit() keeps working and the workers keep running tasks; once it
    returns, everything resolves."""
    release = threading.Event()
    entered = threading.Event()

    def block(_fut):
        entered.set()
        release.wait(60)

    with pool(max_workers=2, max_backlog=1) as exe:
        first = exe.submit(stress_tasks.ident, "first")
        if kind == "done":
            first.add_done_callback(block)
        else:
            first.add_pid_callback(block)
        assert entered.wait(60), "the callback never ran"
        more = [exe.submit(stress_tasks.tagged, i) for i in range(50)]  # max_backlog=1
        # All but the last few have been handed to workers while the callback blocks.
        wait_until(lambda: exe.get_statistics()["tasks_launched"] >= 50, timeout=60)
        release.set()
        _all_resolve([first, *more])
        assert first.result(timeout=0) == "first"
        assert [f.result(timeout=0)[0] for f in more] == list(range(50))


@pytest.mark.parametrize("kind", ["done", "pid"])
def test_callbacks_that_submit_to_the_same_pool_with_a_backlog_of_one(kind):
    """Every finished (or started) task submits two more, down to depth 7:
    255 tasks, all from callbacks but the first, through a backlog of 1."""
    depth = 7
    expected = 2**depth - 1
    lock = threading.Lock()
    futures = []
    errors = []

    def spawn(level, exe):
        fut = exe.submit(stress_tasks.ident, level)
        with lock:
            futures.append(fut)
        if level + 1 < depth:

            def children(_fut, level=level):
                try:
                    spawn(level + 1, exe)
                    spawn(level + 1, exe)
                except BaseException as exc:
                    errors.append(repr(exc))
                    raise

            if kind == "done":
                fut.add_done_callback(children)
            else:
                fut.add_pid_callback(children)

    with pool(max_workers=2, max_backlog=1) as exe:
        spawn(0, exe)
        wait_until(
            lambda: len(futures) == expected or errors,
            timeout=RESOLVE_DEADLINE,
            message=lambda: f"{len(futures)} of {expected} submitted; errors {errors}",
        )
        assert not errors
        with lock:
            snapshot = list(futures)
        _all_resolve(snapshot)
        levels = Counter(f.result(timeout=0) for f in snapshot)
        assert levels == {level: 2**level for level in range(depth)}


@pytest.mark.parametrize(
    ("wait", "cancel_futures"), [(True, False), (False, False), (False, True), (True, True)]
)
@pytest.mark.parametrize("kind", ["done", "pid"])
def test_a_callback_that_shuts_the_pool_down(kind, wait, cancel_futures):
    n = 30
    called = threading.Event()
    errors = []

    def shut(_fut):
        try:
            exe.shutdown(wait=wait, cancel_futures=cancel_futures)
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            called.set()

    with pool(max_workers=2, max_backlog=n) as exe:
        futures = [exe.submit(stress_tasks.tagged, i, 0.005) for i in range(n)]
        if kind == "done":
            futures[0].add_done_callback(shut)
        else:
            futures[0].add_pid_callback(shut)
        assert called.wait(60), "the callback never ran"
        assert errors == [], errors
        _all_resolve(futures)
        outcomes = Counter(
            "cancelled" if f.cancelled() else type(f.exception(timeout=0)).__name__ for f in futures
        )
        print(f"\nshutdown({wait=}, {cancel_futures=}) in a {kind} callback: {dict(outcomes)}")
        for i, f in enumerate(futures):
            if not f.cancelled():
                assert f.exception(timeout=0) is None, (i, f.exception(timeout=0))
                assert f.result(timeout=0)[0] == i
        if not (cancel_futures or not wait):
            assert outcomes == {"NoneType": n}, outcomes  # wait=True: all pending run
        with pytest.raises(deadpool.PoolClosed):
            exe.submit(stress_tasks.ident, 1)


# ---------------------------------------------------------------- concurrency

# The numbers, unscaled: 20,000 tasks run at ~10,000/s here.
N_THREADS = 16
N_TASKS = 20_000


def test_sixteen_threads_submit_twenty_thousand_tasks(tmp_path):
    record = tmp_path / "ran.txt"
    per_thread = N_TASKS // N_THREADS
    results: dict[int, list] = {}
    errors = []
    start = threading.Barrier(N_THREADS)

    def submitter(t):
        try:
            start.wait(60)
            ids = range(t * per_thread, (t + 1) * per_thread)
            results[t] = [(i, exe.submit(stress_tasks.record_once, str(record), i)) for i in ids]
        except BaseException as exc:
            errors.append(repr(exc))

    with pool(max_workers=2) as exe:
        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(RESOLVE_DEADLINE)
        assert not any(th.is_alive() for th in threads), "a submitting thread hung"
        assert errors == []
        pairs = [pair for t in range(N_THREADS) for pair in results[t]]
        assert len(pairs) == N_TASKS
        _all_resolve([f for _i, f in pairs])
        wrong = [(i, f.result(timeout=0)) for i, f in pairs if f.result(timeout=0) != i]
        assert not wrong, wrong[:10]
        ran = Counter(int(x) for x in record.read_text().split())
        assert set(ran) == set(range(N_TASKS)), "some tasks never ran"
        duplicated = [i for i, c in ran.items() if c > 1]
        assert not duplicated, f"tasks run more than once: {duplicated[:10]}"
        stats = exe.get_statistics()
        assert stats["tasks_received"] == stats["tasks_launched"] == N_TASKS, stats
        assert stats["tasks_failed"] == 0, stats


def test_submitters_racing_a_canceller(tmp_path):
    """8 threads submit 4,000 short tasks while another thread cancels a random
    future every millisecond. Every future ends CANCELLED or with its own
    result; nothing fails; no task runs twice; a future whose cancel() said
    True is cancelled."""
    record = tmp_path / "ran.txt"
    n_threads, per_thread = 8, 500
    futures: list = []
    lock = threading.Lock()
    stop = threading.Event()
    cancelled_true = []

    def submitter(t):
        for i in range(t * per_thread, (t + 1) * per_thread):
            fut = exe.submit(stress_tasks.record_once, str(record), i)
            with lock:
                futures.append((i, fut))

    def canceller():
        rng = random.Random(7)
        while not stop.wait(0.001):
            with lock:
                if not futures:
                    continue
                _i, fut = rng.choice(futures[-50:])
            if fut.cancel():
                cancelled_true.append(fut)

    with pool(max_workers=2, max_backlog=20) as exe:
        killer = threading.Thread(target=canceller)
        killer.start()
        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(RESOLVE_DEADLINE)
        stop.set()
        killer.join(60)
        assert not any(th.is_alive() for th in threads), "a submitting thread hung"
        assert len(futures) == n_threads * per_thread
        _all_resolve([f for _i, f in futures])
        n_cancelled = 0
        for i, fut in futures:
            if fut.cancelled():
                n_cancelled += 1
                continue
            assert fut.exception(timeout=0) is None, (i, fut.exception(timeout=0))
            assert fut.result(timeout=0) == i
        assert all(f.cancelled() for f in cancelled_true)
        ran = Counter(int(x) for x in record.read_text().split())
        assert not [i for i, c in ran.items() if c > 1], "a task ran twice"
        finished = {i for i, f in futures if not f.cancelled()}
        assert finished <= set(ran)
        print(f"\ncancel race: {len(futures)} futures, {n_cancelled} cancelled, all resolved")
        assert exe.submit(stress_tasks.ident, "after").result(timeout=60) == "after"
