"""Worker lifecycle: min_workers, max_tasks_per_child, memory bounds, malloc trim,
zygote loss and parent death."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import deadpool
import pytest

from tests import tasks
from tests.helpers import (
    Gate,
    core_testing,
    describe,
    is_alive,
    is_spare,
    pool,
    process_name,
    process_table,
    processes_with_env_token,
    stats_settle,
    wait_until,
    zygote_pids,
)

MB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _busy_all(exe, tmp_path, n, tag="g"):
    """Occupy n workers at once; returns (gates, futures, pids)."""
    gates = [Gate(tmp_path, f"{tag}{i}") for i in range(n)]
    futs = [g.submit(exe, i) for i, g in enumerate(gates)]
    pids = [g.wait_started(f) for g, f in zip(gates, futs, strict=True)]
    assert len(set(pids)) == n
    return gates, futs, pids


# ---------------------------------------------------------------- min_workers


def test_min_workers_zero_scales_to_zero_and_grows_back(tmp_path):
    with pool(max_workers=2, min_workers=0, max_backlog=10) as exe:
        gates, futs, pids = _busy_all(exe, tmp_path, 2)
        for g in gates:
            g.open()
        assert [f.result(timeout=30) for f in futs] == [0, 1]
        stats = stats_settle(exe, worker_processes_still_alive=0)
        assert stats["worker_processes_idle"] == 0
        for pid in pids:
            wait_until(lambda pid=pid: not is_alive(pid), message=f"{pid} did not retire")
        # Grows back on demand.
        assert exe.submit(tasks.square, 5).result(timeout=30) == 25
        stats = exe.get_statistics()
        assert stats["worker_processes_created"] >= 3
        gates2, futs2, pids2 = _busy_all(exe, tmp_path, 2, tag="h")
        assert not set(pids2) & set(pids)
        for g in gates2:
            g.open()
        assert [f.result(timeout=30) for f in futs2] == [0, 1]


def test_min_workers_shrinks_to_min_after_a_burst(tmp_path):
    with pool(max_workers=3, min_workers=1, max_backlog=10) as exe:
        gates, futs, pids = _busy_all(exe, tmp_path, 3)
        assert exe.get_statistics()["worker_processes_busy"] == 3
        for g in gates:
            g.open()
        for f in futs:
            f.result(timeout=30)
        stats = stats_settle(exe, worker_processes_still_alive=1)
        assert stats["worker_processes_idle"] == 1
        assert stats["worker_processes_created"] == 3
        wait_until(lambda: sum(is_alive(pid) for pid in pids) == 1)


def test_min_workers_defaults_to_max_workers(tmp_path):
    with pool(max_workers=2, max_backlog=10) as exe:
        gates, futs, pids = _busy_all(exe, tmp_path, 2)
        for g in gates:
            g.open()
        for f in futs:
            f.result(timeout=30)
        # Nothing retires: the same two workers serve the next tasks.
        gates2, futs2, pids2 = _busy_all(exe, tmp_path, 2, tag="h")
        assert set(pids2) == set(pids)
        for g in gates2:
            g.open()
        for f in futs2:
            f.result(timeout=30)
        assert exe.get_statistics()["worker_processes_created"] == 2


# ---------------------------------------------------------------- max_tasks_per_child


def test_max_tasks_per_child_replaces_the_worker():
    with pool(max_workers=1, max_tasks_per_child=2) as exe:
        pids = [exe.submit(tasks.get_pid).result(timeout=30) for _ in range(6)]
        a, b, c = pids[0], pids[2], pids[4]
        assert pids == [a, a, b, b, c, c], pids
        assert len({a, b, c}) == 3
        for pid in (a, b):
            wait_until(lambda pid=pid: not is_alive(pid), message=f"{pid} did not retire")
        stats = stats_settle(exe, worker_processes_still_alive=1)
        assert stats["worker_processes_created"] >= 3


def test_max_tasks_per_child_one():
    with pool(max_workers=1, max_tasks_per_child=1) as exe:
        pids = [exe.submit(tasks.get_pid).result(timeout=30) for _ in range(4)]
    assert len(set(pids)) == 4


# ---------------------------------------------------------------- memory


def test_max_worker_memory_bytes_replaces_a_bloated_worker():
    with pool(max_workers=1) as exe:
        _pid, baseline = exe.submit(tasks.pid_and_rss).result(timeout=30)
    bound = baseline + 64 * MB
    with pool(max_workers=1, max_worker_memory_bytes=bound) as exe:
        pid1, rss1 = exe.submit(tasks.pid_and_rss).result(timeout=30)
        assert rss1 < bound
        # Below the bound: the worker stays.
        assert exe.submit(tasks.get_pid).result(timeout=30) == pid1
        # A task that keeps 128 MB alive pushes the worker over the bound...
        pid2, rss2 = exe.submit(tasks.allocate_and_keep, 128 * MB).result(timeout=30)
        assert pid2 == pid1
        assert rss2 >= bound
        # ...so the next task runs on a fresh worker.
        pid3 = exe.submit(tasks.get_pid).result(timeout=30)
        assert pid3 != pid1
        wait_until(lambda: not is_alive(pid1), message=f"bloated worker {pid1} still alive")
        assert exe.submit(tasks.get_pid).result(timeout=30) == pid3


def test_malloc_trim_threshold_returns_memory_after_a_task():
    # fragment_heap leaves ~60 MB of free-but-resident glibc heap behind; only
    # malloc_trim gives it back. With a 1-byte threshold the worker trims after
    # every task, so the next task on the same worker sees a much smaller RSS.
    with pool(max_workers=1, malloc_trim_rss_memory_threshold_bytes=1) as exe:
        pid1, rss_fragmented = exe.submit(tasks.fragment_heap).result(timeout=60)
        pid2, rss_next = exe.submit(tasks.pid_and_rss).result(timeout=30)
    assert pid1 == pid2
    assert rss_next < rss_fragmented - 30 * MB, (rss_fragmented // MB, rss_next // MB)


def test_without_trim_threshold_fragmented_memory_stays_resident():
    # Control for the test above: without the option, the RSS does not drop by itself.
    with pool(max_workers=1) as exe:
        pid1, rss_fragmented = exe.submit(tasks.fragment_heap).result(timeout=60)
        pid2, rss_next = exe.submit(tasks.pid_and_rss).result(timeout=30)
    assert pid1 == pid2
    assert rss_next > rss_fragmented - 30 * MB, (rss_fragmented // MB, rss_next // MB)


def test_trim_threshold_above_rss_does_not_trim():
    with pool(max_workers=1, malloc_trim_rss_memory_threshold_bytes=1 << 40) as exe:
        _pid, rss_fragmented = exe.submit(tasks.fragment_heap).result(timeout=60)
        _pid, rss_next = exe.submit(tasks.pid_and_rss).result(timeout=30)
    assert rss_next > rss_fragmented - 30 * MB, (rss_fragmented // MB, rss_next // MB)


def test_trim_memory_inside_a_task_returns_memory():
    with pool(max_workers=1) as exe:
        before, after = exe.submit(tasks.fragment_then_trim_memory).result(timeout=60)
    assert after < before - 30 * MB, (before // MB, after // MB)


# ---------------------------------------------------------------- zygote and parent death


def test_losing_the_zygote_breaks_no_pool():
    with pool(max_workers=1) as exe:
        exe.submit(tasks.square, 1).result(timeout=30)
    zygotes = zygote_pids()
    assert zygotes, "no zygote (a child of this process whose cmdline contains 'zygote')"
    for pid in zygotes:
        os.kill(pid, signal.SIGKILL)
    for pid in zygotes:
        wait_until(lambda pid=pid: not is_alive(pid))
    with pool(max_workers=2, max_tasks_per_child=1) as exe:
        assert [exe.submit(tasks.square, i).result(timeout=60) for i in range(4)] == [
            0,
            1,
            4,
            9,
        ]


def test_zygote_loss_under_a_live_pool_is_survived():
    with pool(max_workers=1, max_tasks_per_child=1) as exe:
        exe.submit(tasks.square, 1).result(timeout=30)
        zygotes = zygote_pids()
        assert zygotes, "no zygote (a child of this process whose cmdline contains 'zygote')"
        for pid in zygotes:
            os.kill(pid, signal.SIGKILL)
        for pid in zygotes:
            wait_until(lambda pid=pid: not is_alive(pid), message=f"zygote {pid} survived SIGKILL")
        # The idle worker outlives its zygote and serves the next task; every
        # task after that needs a new worker, hence a new zygote.
        assert [exe.submit(tasks.square, i).result(timeout=60) for i in range(4)] == [0, 1, 4, 9]
        assert set(zygote_pids()).isdisjoint(zygotes)


def test_task_submitted_right_after_zygote_loss_succeeds():
    # No waiting for the dying idle worker: a task that was never running when the
    # zygote (and with it the idle worker) died must not be lost.
    with pool(max_workers=1) as exe:
        for i in range(8):
            assert exe.submit(tasks.square, i).result(timeout=60) == i * i
            for pid in zygote_pids():
                os.kill(pid, signal.SIGKILL)
            assert exe.submit(tasks.square, i + 1).result(timeout=60) == (i + 1) ** 2


def _spare_of_the_zygote() -> int | None:
    """The shared zygote's waiting spare, if it has one."""
    zygote = core_testing().shared_zygote_pid()
    spares = [
        pid
        for pid, (ppid, state) in process_table().items()
        if ppid == zygote and state not in ("Z", "X") and is_spare(pid)
    ]
    assert len(spares) <= 1, f"more than one spare: {spares}"
    return spares[0] if spares else None


def _lose_a_worker(exe) -> None:
    died = exe.submit(tasks.exit_with, 3)
    assert isinstance(died.exception(timeout=30), deadpool.ProcessError)


def test_a_lost_worker_is_replaced_by_the_waiting_spare():
    with pool(max_workers=1) as exe:
        _lose_a_worker(exe)  # from now on the zygote keeps a spare
        first = exe.submit(tasks.get_pid).result(timeout=30)
        spare = wait_until(_spare_of_the_zygote, message="the zygote made no spare")
        assert spare != first
        _lose_a_worker(exe)
        assert exe.submit(tasks.get_pid).result(timeout=30) == spare
        assert process_name(spare) != "deadpool-spare", "a worker keeps a spare's name"
        refill = wait_until(_spare_of_the_zygote, message="the spare was not replaced")
        assert refill not in (first, spare)
        assert exe.submit(tasks.square, 4).result(timeout=30) == 16


def test_nothing_but_the_zygote_outlives_the_last_pool():
    for _ in range(2):
        with pool(max_workers=1) as exe:
            _lose_a_worker(exe)
            wait_until(_spare_of_the_zygote, message="the zygote made no spare")
        wait_until(
            lambda: _spare_of_the_zygote() is None,
            message="the spare outlived the last pool",
        )


def test_no_spare_while_no_worker_has_died(tmp_path):
    # A fresh interpreter: this test process's zygote may have lost workers.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            import deadpool
            from tests import tasks

            if __name__ == "__main__":
                from tests.helpers import core_testing

                testing = core_testing()
                with deadpool.Deadpool(max_workers=2, max_tasks_per_child=1) as exe:
                    for i in range(6):
                        assert exe.submit(tasks.square, i).result(timeout=60) == i * i
                    # Watch for 40 refill delays: a spare would show up.
                    zygote = testing.shared_zygote_pid()
                    names = set()
                    until = time.monotonic() + 0.2
                    while time.monotonic() < until:
                        for pid in testing.descendants(zygote):
                            try:
                                with open(f"/proc/{pid}/comm") as f:
                                    names.add(f.read().strip())
                            except OSError:
                                pass
                    print("NAMES", sorted(names), flush=True)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("NAMES"))
    assert "deadpool-spare" not in line, line


def test_a_killed_spare_costs_nothing_and_is_replaced():
    with pool(max_workers=1, max_tasks_per_child=1) as exe:  # a new worker per task
        _lose_a_worker(exe)
        spare = wait_until(_spare_of_the_zygote, message="the zygote made no spare")
        os.kill(spare, signal.SIGKILL)
        wait_until(lambda: not is_alive(spare), message="the spare survived SIGKILL")
        assert [exe.submit(tasks.square, i).result(timeout=30) for i in range(3)] == [0, 1, 4]
        wait_until(lambda: _spare_of_the_zygote() not in (None, spare), message="no new spare")


def test_the_spare_dies_with_its_zygote():
    with pool(max_workers=1) as exe:
        _lose_a_worker(exe)
        spare = wait_until(_spare_of_the_zygote, message="the zygote made no spare")
        for pid in zygote_pids():
            os.kill(pid, signal.SIGKILL)
        # Orphaned, it would no longer be our descendant: check it by pid.
        wait_until(lambda: not is_alive(spare), message="the spare outlived its zygote")
        assert exe.submit(tasks.square, 3).result(timeout=60) == 9


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import deadpool
    from tests import tasks

    exe = deadpool.Deadpool(max_workers=2, mp_context=sys.argv[1])
    busy = exe.submit(tasks.sleep_then_return, 600)
    pid = exe.submit(tasks.get_pid).result(timeout=60)
    print("READY", pid, flush=True)
    time.sleep(600)
    """
)


def _read_line(proc, deadline_s):
    """Read one line from proc.stdout, giving up after deadline_s seconds."""
    deadline = time.monotonic() + deadline_s
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode()


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_workers_and_zygote_die_with_a_sigkilled_parent(tmp_path, method):
    token = f"DP_PARENT_DEATH_{uuid.uuid4().hex}"
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, **{token: "1"})
    proc = subprocess.Popen(
        [sys.executable, str(script), method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )
    try:
        line = _read_line(proc, 60)
        if not line.startswith("READY"):
            proc.kill()
            _out, err = proc.communicate(timeout=30)
            pytest.fail(f"script said {line!r}; stderr:\n{err.decode(errors='replace')}")
        worker_pid = int(line.split()[1])
        # Wait for both workers (one busy, one idle) to exist.
        wait_until(lambda: len(set(processes_with_env_token(token)) - {proc.pid}) >= 2)
        others = set(processes_with_env_token(token)) - {proc.pid}
        assert worker_pid in others
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        wait_until(
            lambda: not processes_with_env_token(token),
            timeout=10,
            message=lambda: "survivors: " + describe(processes_with_env_token(token)),
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
        for pid in processes_with_env_token(token):  # never leak, even on failure
            os.kill(pid, signal.SIGKILL)
