"""Priorities (lower first, FIFO among equals) and the bounded submit backlog."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, pool, wait_until

# ---------------------------------------------------------------- priorities


def _run_order(tmp_path, submissions, max_backlog=100):
    """Block the single worker, submit (tag, priority) pairs, release; return run order."""
    order_file = tmp_path / "order"
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=max_backlog) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        futs = [
            exe.submit(tasks.append_tag, str(order_file), tag, deadpool_priority=priority)
            for tag, priority in submissions
        ]
        gate.open()
        assert [fut.result(timeout=30) for fut in futs] == [tag for tag, _ in submissions]
    return order_file.read_text().split()


def test_lower_priority_value_runs_first_fifo_among_equals(tmp_path):
    submissions = [
        ("a10", 10),
        ("b0", 0),
        ("c5", 5),
        ("d0", 0),
        ("e10", 10),
        ("f5", 5),
        ("g1", 1),
        ("h0", 0),
        ("i1000000", 1_000_000),
        ("j1", 1),
    ]
    expected = [tag for tag, _ in sorted(submissions, key=lambda s: s[1])]  # stable sort
    assert _run_order(tmp_path, submissions) == expected


def test_equal_priorities_run_in_submit_order(tmp_path):
    submissions = [(f"t{i}", 3) for i in range(25)]
    assert _run_order(tmp_path, submissions) == [tag for tag, _ in submissions]


def test_default_priority_is_zero(tmp_path):
    order_file = tmp_path / "order"
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=10) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        later = exe.submit(tasks.append_tag, str(order_file), "p1", deadpool_priority=1)
        default = exe.submit(tasks.append_tag, str(order_file), "default")
        gate.open()
        later.result(timeout=30)
        default.result(timeout=30)
    assert order_file.read_text().split() == ["default", "p1"]


# ---------------------------------------------------------------- backlog


class _Submitter(threading.Thread):
    """Calls exe.submit from another thread and records whether it returned or raised."""

    def __init__(self, exe, *args, **kwargs):
        super().__init__(daemon=True)
        self.exe, self.args, self.kwargs = exe, args, kwargs
        self.entering = threading.Event()
        self.finished = threading.Event()
        self.future = None
        self.error: BaseException | None = None

    def run(self):
        self.entering.set()
        try:
            self.future = self.exe.submit(*self.args, **self.kwargs)
        except BaseException as e:
            self.error = e
        finally:
            self.finished.set()


def test_submit_blocks_while_backlog_is_full_and_resumes_when_a_slot_frees(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=1) as exe:
        blocker = gate.submit(exe, "blocker")
        gate.wait_started(blocker)
        queued = exe.submit(tasks.return_value, "queued")  # fills the backlog
        submitter = _Submitter(exe, tasks.return_value, "third")
        submitter.start()
        assert submitter.entering.wait(10)
        # Still blocked a while later: the backlog is full and nothing can leave it.
        assert not submitter.finished.wait(0.5), "submit() returned with the backlog full"
        assert not queued.done()
        gate.open()
        assert submitter.finished.wait(30), "submit() never returned after a slot freed"
        assert submitter.error is None, submitter.error
        assert blocker.result(timeout=30) == "blocker"
        assert queued.result(timeout=30) == "queued"
        assert submitter.future.result(timeout=30) == "third"
        submitter.join(10)


def test_blocked_submit_does_not_hold_the_gil(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=1) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        exe.submit(tasks.return_value, 1)
        submitter = _Submitter(exe, tasks.return_value, 2)
        submitter.start()
        assert submitter.entering.wait(10)
        # While the other thread is blocked in submit(), this thread keeps running Python.
        counter = 0
        for _ in range(200_000):
            counter += 1
        assert counter == 200_000
        assert not submitter.finished.is_set()
        gate.open()
        assert submitter.finished.wait(30)
        assert submitter.future.result(timeout=30) == 2


@pytest.mark.parametrize("cancel_futures", [True, False])
def test_shutdown_wakes_a_blocked_submit_with_pool_closed(tmp_path, cancel_futures):
    gate = Gate(tmp_path)
    exe = deadpool.Deadpool(max_workers=1, max_backlog=1)
    try:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        exe.submit(tasks.return_value, 1)
        submitter = _Submitter(exe, tasks.return_value, 2)
        submitter.start()
        assert submitter.entering.wait(10)
        assert not submitter.finished.wait(0.3)
        exe.shutdown(wait=False, cancel_futures=cancel_futures)
        assert submitter.finished.wait(30), "blocked submit() was not woken by shutdown()"
        assert isinstance(submitter.error, deadpool.PoolClosed), submitter.error
        assert submitter.future is None
    finally:
        gate.open()
        exe.shutdown(wait=True)


def test_max_backlog_zero_means_unbounded(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=0) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        futs = []
        done = threading.Event()

        def submit_many():
            futs.extend(exe.submit(tasks.square, i) for i in range(50))
            done.set()

        thread = threading.Thread(target=submit_many, daemon=True)
        thread.start()
        # 50 submits while the only worker is blocked: none of them may block.
        problem = _watchdog(done, gate, "submit() with max_backlog=0")
        assert problem is None, problem
        assert not any(f.done() for f in futs)
        gate.open()
        assert [f.result(timeout=30) for f in futs] == [i * i for i in range(50)]
        thread.join(10)


def _watchdog(done: threading.Event, gate: Gate, what: str):
    """If `done` is not set in time, release the worker so the test fails instead of hanging."""
    if not done.wait(20):
        gate.open()
        return f"{what} blocked the event loop thread"
    return None


def test_submit_from_a_coroutine_never_blocks_the_event_loop(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=1) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        submitted = threading.Event()
        futs = []

        async def main():
            for i in range(5):  # far past max_backlog=1 while the worker is blocked
                futs.append(exe.submit(tasks.square, i))
            submitted.set()

        runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        runner.start()
        problem = _watchdog(submitted, gate, "submit() inside a running event loop")
        assert problem is None, problem
        runner.join(10)
        assert not any(f.done() for f in futs)
        gate.open()
        assert [f.result(timeout=30) for f in futs] == [0, 1, 4, 9, 16]


def test_run_in_executor_never_blocks_the_event_loop(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=1) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        submitted = threading.Event()
        results = []

        async def main():
            loop = asyncio.get_running_loop()
            pending = [loop.run_in_executor(exe, tasks.square, i) for i in range(5)]
            submitted.set()
            await asyncio.sleep(0)
            gate.open()
            results.extend(await asyncio.wait_for(asyncio.gather(*pending), 30))

        runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        runner.start()
        problem = _watchdog(submitted, gate, "loop.run_in_executor()")
        assert problem is None, problem
        runner.join(40)
        assert not runner.is_alive()
        assert results == [0, 1, 4, 9, 16]


def _main_thread_in_submit(main_ident: int) -> bool:
    frame = sys._current_frames().get(main_ident)
    while frame is not None:
        if frame.f_code.co_name == "submit" and "deadpool" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_keyboard_interrupt_interrupts_a_blocked_submit(tmp_path):
    gate = Gate(tmp_path)
    main_ident = threading.get_ident()
    returned = threading.Event()
    outcome = {}

    def interrupter():
        # Wait until the main thread is really inside deadpool's submit(), then SIGINT.
        try:
            wait_until(lambda: _main_thread_in_submit(main_ident), timeout=10)
        except BaseException as e:  # pytest.fail raises Failed (a BaseException)
            outcome["error"] = repr(e)
            gate.open()
            return
        os.kill(os.getpid(), signal.SIGINT)
        if not returned.wait(10):
            outcome["error"] = "submit() ignored KeyboardInterrupt"
            gate.open()  # unblock it so the test fails instead of hanging

    with pool(max_workers=1, max_backlog=1) as exe:
        blocker = gate.submit(exe)
        gate.wait_started(blocker)
        exe.submit(tasks.return_value, 1)
        thread = threading.Thread(target=interrupter, daemon=True)
        thread.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                exe.submit(tasks.return_value, 2)
        finally:
            returned.set()
            thread.join(20)
        assert "error" not in outcome, outcome
        gate.open()
        assert blocker.result(timeout=30) is None
        assert exe.submit(tasks.return_value, 3).result(timeout=30) == 3
