"""deadpool.Future: states, pid and pid callbacks, cancel, as_completed / wait."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import signal
import threading
import weakref

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, wait_until


def test_pending_in_backlog_then_running_with_pid(tmp_path):
    first, second = Gate(tmp_path, "first"), Gate(tmp_path, "second")
    with pool(max_workers=1, max_backlog=10) as exe:
        fut1 = first.submit(exe, 1)
        pid1 = first.wait_started(fut1)
        fut2 = second.submit(exe, 2)
        # fut1 is on a worker: RUNNING with its pid. fut2 waits in the backlog: PENDING.
        wait_until(fut1.running, message="running() never became true")
        assert fut1.pid == pid1
        assert not fut1.done()
        assert not fut2.running()
        assert not fut2.done()
        assert fut2.pid is None
        first.open()
        assert fut1.result(timeout=30) == 1
        pid2 = second.wait_started(fut2)
        wait_until(fut2.running)
        assert fut2.pid == pid2
        second.open()
        assert fut2.result(timeout=30) == 2
        assert not fut2.running()
        assert fut2.done()
        assert fut2.pid == pid2  # the pid that ran it stays known


def test_pid_callbacks_fire_when_added_before_and_after_start(tmp_path):
    first, second = Gate(tmp_path, "first"), Gate(tmp_path, "second")
    seen: list[tuple[str, int | None]] = []
    lock = threading.Lock()

    def record(tag):
        def cb(fut):
            with lock:
                seen.append((tag, fut.pid))

        return cb

    with pool(max_workers=1, max_backlog=10) as exe:
        fut1 = first.submit(exe)
        pid1 = first.wait_started(fut1)
        fut2 = second.submit(exe)
        fut2.add_pid_callback(record("before-start"))  # fut2 is still pending
        assert ("before-start", None) not in seen
        wait_until(lambda: fut1.pid is not None)
        fut1.add_pid_callback(record("after-start"))  # fut1 already running: fires now
        wait_until(lambda: ("after-start", pid1) in seen, message=lambda: f"seen={seen}")
        assert all(tag != "before-start" for tag, _ in seen), "fired before the task started"
        first.open()
        pid2 = second.wait_started(fut2)
        wait_until(lambda: ("before-start", pid2) in seen, message=lambda: f"seen={seen}")
        second.open()
        fut1.result(timeout=30)
        fut2.result(timeout=30)
    assert sorted(seen) == sorted([("after-start", pid1), ("before-start", pid2)])


def test_quick_tasks_know_their_pid_and_run_pid_callbacks_before_done_callbacks():
    # Tasks this short usually start and finish between two deliveries, which
    # the core reports together; the pid and the callback order must not change.
    order: list[tuple[str, int, int | None]] = []
    lock = threading.Lock()

    def note(tag, i):
        def cb(fut):
            with lock:
                order.append((tag, i, fut.pid))

        return cb

    with pool(max_workers=2, max_backlog=0) as exe:
        futures = []
        for i in range(300):
            fut = exe.submit(tasks.get_pid)
            fut.add_pid_callback(note("pid", i))
            fut.add_done_callback(note("done", i))
            futures.append(fut)
        for fut in futures:
            assert fut.result(timeout=60) == fut.pid  # the worker that ran it
    for i, fut in enumerate(futures):
        mine = [(tag, pid) for tag, j, pid in order if j == i]
        assert mine == [("pid", fut.pid), ("done", fut.pid)], (i, mine)


def test_done_callback_fires_with_the_result():
    done = threading.Event()
    got = []
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.square, 7)
        fut.add_done_callback(lambda f: (got.append(f.result()), done.set()))
        assert done.wait(30)
    assert got == [49]


def test_cancel_pending_task_removes_it_and_it_never_runs(tmp_path):
    gate = Gate(tmp_path)
    marker = tmp_path / "cancelled-task-ran"
    with pool(max_workers=1, max_backlog=10) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        victim = exe.submit(tasks.touch_then_return, str(marker), "victim")
        after = exe.submit(tasks.return_value, "after")  # would run after the victim (FIFO)
        assert victim.cancel() is True
        assert victim.cancelled()
        assert victim.done()
        with pytest.raises(concurrent.futures.CancelledError):
            victim.result(timeout=1)
        gate.open()
        assert after.result(timeout=30) == "after"
        assert not marker.exists(), "a cancelled pending task ran anyway"
        stats = exe.get_statistics()
        assert stats["tasks_launched"] == 2  # blocker and 'after', not the victim


def test_the_pool_keeps_no_reference_to_a_cancelled_pending_future(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=0) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        victims = [exe.submit(tasks.return_value, i) for i in range(20)]
        assert all(victim.cancel() for victim in victims)
        alive = [weakref.ref(victim) for victim in victims]
        del victims
        gc.collect()
        assert [ref for ref in alive if ref() is not None] == []
        gate.open()
        assert blocker.result(timeout=30) is None


@pytest.mark.parametrize("method", ["cancel", "cancel_and_kill_if_running"])
def test_cancel_running_task_kills_its_worker_and_ends_cancelled(tmp_path, method):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        fut = gate.submit(exe)
        pid = gate.wait_started(fut)
        wait_until(fut.running)
        assert getattr(fut, method)() is True
        wait_until(fut.done, timeout=30)
        assert fut.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(timeout=1)
        wait_until(lambda: not is_alive(pid), message=f"worker {pid} was not killed")
        assert not gate.release_path.exists()
        # The pool is not broken: a replacement runs the next task.
        assert exe.submit(tasks.get_pid).result(timeout=30) != pid


def test_cancel_and_kill_if_running_on_a_pending_task(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=10) as exe:
        blocker = gate.submit(exe)
        blocker_pid = gate.wait_started(blocker)
        victim = exe.submit(tasks.return_value, "victim")
        assert victim.cancel_and_kill_if_running() is True
        assert victim.cancelled()
        gate.open()
        assert blocker.result(timeout=30) is None
        assert is_alive(blocker_pid)  # cancelling a pending task kills nobody


def test_cancel_after_done_returns_false():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.square, 3)
        assert fut.result(timeout=30) == 9
        assert fut.cancel() is False
        assert not fut.cancelled()
        assert fut.result(timeout=1) == 9


def test_as_completed_yields_every_future_including_failures_and_cancels(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=2, max_backlog=20) as exe:
        blocker = gate.submit(exe, "blocker")
        gate.wait_started(blocker)
        ok = exe.submit(tasks.square, 4)
        err = exe.submit(tasks.raise_value_error, "boom")
        timed_out = exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.3)
        died = exe.submit(tasks.exit_with, 3)
        slow = exe.submit(tasks.sleep_then_return, 300)
        all_futs = {blocker, ok, err, timed_out, died, slow}
        seen = []
        for fut in deadpool.as_completed(all_futs, timeout=60):
            seen.append(fut)
            if len(seen) == 4:  # all but blocker and 'slow' (running or queued)
                assert slow.cancel()
                gate.open()
        assert set(seen) == all_futs
        assert len(seen) == len(all_futs)
        assert ok.result() == 16
        assert isinstance(err.exception(), ValueError)
        assert isinstance(timed_out.exception(), deadpool.TimeoutError)
        assert isinstance(died.exception(), deadpool.ProcessError)
        assert slow.cancelled()
        assert blocker.result() == "blocker"


def _kill_worker(fut, pid, gate):
    os.kill(pid, signal.SIGKILL)


def _waiter_installed(*futs):
    # Synchronise with the stdlib's waiter registration (Future._waiters), so the
    # transition really happens while wait() is blocked, not before it starts.
    return all(f._waiters for f in futs)


TRANSITIONS = {
    "result": lambda fut, pid, gate: gate.open(),
    "cancel-running": lambda fut, pid, gate: fut.cancel(),
    "killed-externally": _kill_worker,
}


@pytest.mark.parametrize("transition", sorted(TRANSITIONS))
def test_wait_sees_the_transition_of_a_running_future(tmp_path, transition):
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        fut = gate.submit(exe, "done")
        pid = gate.wait_started(fut)
        waited = {}
        waiter_ready = threading.Event()

        def waiter():
            waiter_ready.set()
            waited["result"] = concurrent.futures.wait(
                [fut], timeout=30, return_when=concurrent.futures.FIRST_COMPLETED
            )

        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        assert waiter_ready.wait(10)
        wait_until(lambda: _waiter_installed(fut))
        wait_until(fut.running)
        TRANSITIONS[transition](fut, pid, gate)
        thread.join(40)
        done, not_done = waited["result"]
        assert done == {fut} and not not_done, f"wait() missed the {transition} transition"
        gate.open()


def test_wait_sees_a_pending_future_cancelled_and_a_timeout(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=10) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        pending = exe.submit(tasks.return_value, 1)
        timing_out = exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.3)
        result = {}

        def waiter():
            result["wait"] = concurrent.futures.wait(
                [pending, timing_out], timeout=30, return_when=concurrent.futures.ALL_COMPLETED
            )

        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        wait_until(lambda: _waiter_installed(pending, timing_out))
        assert not timing_out.done()
        assert pending.cancel()
        gate.open()
        thread.join(40)
        done, not_done = result["wait"]
        assert done == {pending, timing_out} and not not_done
        assert pending.cancelled()
        assert isinstance(timing_out.exception(), deadpool.TimeoutError)
        assert blocker.result(timeout=30) is None


def test_stdlib_as_completed_works_with_deadpool_futures():
    with pool(max_workers=2, max_backlog=10) as exe:
        futs = [exe.submit(tasks.square, i) for i in range(10)]
        results = sorted(f.result() for f in concurrent.futures.as_completed(futs, timeout=60))
    assert results == [i * i for i in range(10)]


def test_future_has_every_attribute_of_the_stdlib_future():
    # deadpool.Future sets the stdlib's attributes itself (with a leaner
    # condition): a Python that adds one must fail here, not in production.
    ours, theirs = vars(deadpool.Future()), vars(concurrent.futures.Future())
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert isinstance(ours["_condition"], threading.Condition)


def test_result_waits_across_threads_and_times_out():
    fut = deadpool.Future()
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.01)
    setter = threading.Timer(0.05, fut.set_result, args=(7,))
    setter.start()
    try:
        assert fut.result(timeout=30) == 7
        assert concurrent.futures.wait([fut], timeout=0).done == {fut}
    finally:
        setter.join(30)
