"""shutdown(wait, cancel_futures): the original's four-way table, idempotence, threads."""

from __future__ import annotations

import threading

import deadpool
import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, returns_in_forked_child, wait_until


class _Shutdown(threading.Thread):
    def __init__(self, exe, **kwargs):
        super().__init__(daemon=True)
        self.exe, self.kwargs = exe, kwargs
        self.returned = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            self.exe.shutdown(**self.kwargs)
        except BaseException as e:
            self.error = e
        finally:
            self.returned.set()


def _running_and_pending(exe, tmp_path, n_pending=3):
    gate = Gate(tmp_path)
    running = gate.submit(exe, "running")
    pid = gate.wait_started(running)
    wait_until(running.running)
    pending = [exe.submit(tasks.return_value, i) for i in range(n_pending)]
    return gate, running, pid, pending


def test_wait_true_cancel_true_waits_for_running_and_cancels_pending(tmp_path):
    exe = deadpool.Deadpool(max_workers=1, max_backlog=10)
    gate, running, _pid, pending = _running_and_pending(exe, tmp_path)
    stopper = _Shutdown(exe, wait=True, cancel_futures=True)
    try:
        stopper.start()
        wait_until(lambda: all(f.cancelled() for f in pending), message="pending not cancelled")
        assert not stopper.returned.wait(0.3), "shutdown(wait=True) returned before the task"
        assert not running.done()
        gate.open()
        assert stopper.returned.wait(30)
        assert stopper.error is None, stopper.error
        # When shutdown(wait=True) returns, the running task has completed.
        assert running.done()
        assert running.result() == "running"
        assert all(f.cancelled() for f in pending)
    finally:
        gate.open()
        exe.shutdown(wait=False, cancel_futures=True)


def test_wait_true_cancel_false_runs_everything_before_returning(tmp_path):
    exe = deadpool.Deadpool(max_workers=1, max_backlog=10)
    gate, running, _pid, pending = _running_and_pending(exe, tmp_path)
    stopper = _Shutdown(exe, wait=True, cancel_futures=False)
    try:
        stopper.start()
        assert not stopper.returned.wait(0.3), "shutdown(wait=True) returned early"
        assert not any(f.cancelled() for f in pending)
        gate.open()
        assert stopper.returned.wait(30)
        assert stopper.error is None, stopper.error
        # All submitted tasks have completed by the time shutdown returns.
        assert all(f.done() for f in [running, *pending])
        assert running.result() == "running"
        assert [f.result() for f in pending] == [0, 1, 2]
    finally:
        gate.open()
        exe.shutdown(wait=False, cancel_futures=True)


def test_wait_false_cancel_true_kills_running_and_cancels_pending(tmp_path):
    exe = deadpool.Deadpool(max_workers=1, max_backlog=10)
    gate, running, pid, pending = _running_and_pending(exe, tmp_path)
    stopper = _Shutdown(exe, wait=False, cancel_futures=True)
    try:
        stopper.start()
        # Returns without the running task ever being released.
        assert stopper.returned.wait(30), "shutdown(wait=False) blocked"
        assert stopper.error is None, stopper.error
        wait_until(running.done, timeout=30, message="running task not ended")
        assert running.cancelled(), f"running task ended as {running!r}"
        assert all(f.cancelled() for f in pending)
        wait_until(lambda: not is_alive(pid), message=f"worker {pid} not killed")
        assert not gate.release_path.exists()
    finally:
        gate.open()


def test_wait_false_cancel_false_lets_running_finish_and_cancels_pending(tmp_path):
    exe = deadpool.Deadpool(max_workers=1, max_backlog=10)
    gate, running, pid, pending = _running_and_pending(exe, tmp_path)
    stopper = _Shutdown(exe, wait=False, cancel_futures=False)
    try:
        stopper.start()
        assert stopper.returned.wait(30), "shutdown(wait=False) blocked"
        assert stopper.error is None, stopper.error
        wait_until(lambda: all(f.cancelled() for f in pending), message="pending not cancelled")
        assert not running.done(), "running task was not allowed to continue"
        assert is_alive(pid)
        gate.open()
        assert running.result(timeout=30) == "running"
    finally:
        gate.open()


def test_pending_tasks_stay_cancelled_while_shutdown_runs_callbacks(tmp_path):
    # shutdown() resolves the pending tasks it removed one by one, running
    # their done callbacks; meanwhile the pool can finish (here: the first
    # callback waits until it has). Those not yet reached must still end
    # cancelled, not failed as "stopped before this task finished". On a
    # free-threaded Python the pool's last moments and the callbacks run in
    # parallel, so this needs no slow callback to happen.
    exe = deadpool.Deadpool(max_workers=1, max_backlog=10)
    gate, running, _pid, pending = _running_and_pending(exe, tmp_path, n_pending=4)
    pending[0].add_done_callback(lambda _: exe.shutdown(wait=True))
    try:
        exe.shutdown(wait=False, cancel_futures=True)
        assert running.cancelled(), f"running task ended as {running!r}"
        assert all(f.cancelled() for f in pending), [
            f.exception() for f in pending if not f.cancelled()
        ]
    finally:
        gate.open()


def test_exit_uses_shutdown_wait_false_and_cancel_futures_true(tmp_path):
    gate = Gate(tmp_path)
    try:
        with deadpool.Deadpool(
            max_workers=1, max_backlog=10, shutdown_wait=False, shutdown_cancel_futures=True
        ) as exe:
            running = gate.submit(exe)
            pid = gate.wait_started(running)
            pending = [exe.submit(tasks.return_value, i) for i in range(3)]
        # __exit__ returned without the task being released: it was killed.
        wait_until(running.done, timeout=30)
        assert running.cancelled()
        assert all(f.cancelled() for f in pending)
        wait_until(lambda: not is_alive(pid))
    finally:
        gate.open()


def test_exit_uses_shutdown_wait_true_and_cancel_futures_true(tmp_path):
    gate = Gate(tmp_path)
    result = {}

    def body():
        with deadpool.Deadpool(
            max_workers=1, max_backlog=10, shutdown_wait=True, shutdown_cancel_futures=True
        ) as exe:
            result["running"] = gate.submit(exe, "ran")
            gate.wait_started(result["running"])
            result["pending"] = [exe.submit(tasks.return_value, i) for i in range(3)]
        result["exited"] = True

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "pending" in result and all(f.cancelled() for f in result["pending"]))
        assert "exited" not in result
        gate.open()
        thread.join(30)
        assert result.get("exited")
        assert result["running"].result(timeout=1) == "ran"
    finally:
        gate.open()


def test_exit_default_waits_for_all_tasks():
    with deadpool.Deadpool(max_workers=1, max_backlog=10) as exe:
        futs = [exe.submit(tasks.sleep_then_return, 0.05, i) for i in range(6)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(6))


def test_shutdown_is_idempotent():
    exe = deadpool.Deadpool(max_workers=1)
    assert exe.submit(tasks.square, 3).result(timeout=30) == 9
    exe.shutdown()
    exe.shutdown()
    exe.shutdown(wait=False, cancel_futures=True)
    exe.shutdown(wait=True, cancel_futures=False)
    with exe:  # entering and exiting a closed pool must not raise either
        pass


def test_shutdown_from_another_thread_and_concurrently():
    exe = deadpool.Deadpool(max_workers=2)
    assert exe.submit(tasks.square, 3).result(timeout=30) == 9
    stoppers = [_Shutdown(exe, wait=bool(i % 2)) for i in range(4)]
    for s in stoppers:
        s.start()
    for s in stoppers:
        assert s.returned.wait(30)
        assert s.error is None, s.error
    with pytest.raises(deadpool.PoolClosed):
        exe.submit(tasks.square, 1)


def test_submit_after_shutdown_raises_pool_closed():
    exe = deadpool.Deadpool(max_workers=1)
    exe.shutdown()
    with pytest.raises(deadpool.PoolClosed):
        exe.submit(tasks.square, 1)
    with pytest.raises(RuntimeError):  # what stdlib-style callers catch
        exe.submit(tasks.square, 1)


def test_submit_after_context_exit_raises_pool_closed():
    with deadpool.Deadpool(max_workers=1) as exe:
        exe.submit(tasks.square, 1).result(timeout=30)
    with pytest.raises(deadpool.PoolClosed):
        exe.submit(tasks.square, 2)


def test_shutdown_ends_every_worker():
    exe = deadpool.Deadpool(max_workers=2)
    futs = [exe.submit(tasks.get_pid) for _ in range(4)]
    pids = {f.result(timeout=30) for f in futs}
    exe.shutdown(wait=True)
    for pid in pids:
        wait_until(lambda pid=pid: not is_alive(pid), message=f"worker {pid} outlived shutdown")


def test_get_statistics_after_shutdown():
    exe = deadpool.Deadpool(max_workers=1)
    exe.submit(tasks.square, 2).result(timeout=30)
    exe.shutdown()
    stats = exe.get_statistics()
    assert stats["tasks_received"] == 1
    assert stats["tasks_launched"] == 1


def test_ctrl_c_in_a_with_block_of_a_forked_child_leaves_the_parents_pool_alone(tmp_path):
    # The child inherits the parent's pool object, not its workers: leaving the
    # block by KeyboardInterrupt there must neither stop nor wait for them.
    gate = Gate(tmp_path)
    with pool(max_workers=1) as exe:
        running = gate.submit(exe, "running")
        gate.wait_started(running)
        assert returns_in_forked_child(
            lambda: exe.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
        )
        assert not running.done()
        gate.open()
        assert running.result(timeout=30) == "running"
