"""Stress: tasks that destroy their own worker, and tasks that exhaust memory.

Each costs at most its own future; the pool goes on.
"""

from __future__ import annotations

import json
import os
import re
import signal

import deadpool
import pytest

from tests import stress_tasks
from tests.helpers import is_alive, pool, wait_until

pytestmark = pytest.mark.stress

MiB = 1024 * 1024
FLOOD_CHUNK = 64 * 1024  # stress_tasks.flood_output's line length


def _assert_pool_works(exe, n=5):
    futures = [exe.submit(stress_tasks.tagged, i) for i in range(n)]
    assert [f.result(timeout=60)[0] for f in futures] == list(range(n))


def _assert_death(exc, fut, exitcode):
    assert isinstance(exc, deadpool.ProcessError), repr(exc)
    message = str(exc)
    assert fut.pid is not None
    assert re.search(rf"\b{fut.pid}\b", message), message
    assert f"exitcode {exitcode}" in message, message


@pytest.mark.parametrize(
    ("fn", "args", "exitcode"),
    [
        pytest.param(stress_tasks.os_exit, (3,), "3", id="os._exit(3)"),
        pytest.param(stress_tasks.segfault, (), "-11", id="segfault"),
        pytest.param(stress_tasks.abort, (), "-6", id="os.abort"),
        pytest.param(stress_tasks.kill_self, (signal.SIGKILL,), "-9", id="SIGKILL-self"),
        pytest.param(stress_tasks.kill_self, (signal.SIGTERM,), "-15", id="SIGTERM-self"),
    ],
)
def test_worker_death_fails_only_its_future(fn, args, exitcode):
    with pool(max_workers=2) as exe:
        before = [exe.submit(stress_tasks.tagged, i, 0.01) for i in range(10)]
        doomed = exe.submit(fn, *args)
        after = [exe.submit(stress_tasks.tagged, i, 0.01) for i in range(10, 20)]
        exc = doomed.exception(timeout=60)
        _assert_death(exc, doomed, exitcode)
        assert [f.result(timeout=60)[0] for f in before + after] == list(range(20))
        _assert_pool_works(exe)
        assert exe.get_statistics()["tasks_failed"] == 1


@pytest.mark.parametrize(
    ("fn", "args", "exc_type", "exc_args"),
    [
        pytest.param(stress_tasks.sys_exit, (1,), SystemExit, (1,), id="sys.exit(1)"),
        pytest.param(
            stress_tasks.raise_base_exception,
            ("SystemExit", 7),
            SystemExit,
            (7,),
            id="raise-SystemExit",
        ),
        pytest.param(
            stress_tasks.raise_base_exception,
            ("KeyboardInterrupt",),
            KeyboardInterrupt,
            (),
            id="raise-KeyboardInterrupt",
        ),
        pytest.param(
            stress_tasks.raise_base_exception,
            ("GeneratorExit", "bye"),
            GeneratorExit,
            ("bye",),
            id="raise-GeneratorExit",
        ),
    ],
)
def test_base_exceptions_arrive_as_themselves_and_the_worker_survives(fn, args, exc_type, exc_args):
    with pool(max_workers=1) as exe:
        pid = exe.submit(stress_tasks.pid_of_worker).result(timeout=60)
        fut = exe.submit(fn, *args)
        exc = fut.exception(timeout=60)
        assert type(exc) is exc_type, repr(exc)
        assert exc.args == exc_args
        # Like the stdlib: the exception is the task's outcome, not the worker's end.
        assert fut.pid == pid
        assert exe.submit(stress_tasks.pid_of_worker).result(timeout=60) == pid
        _assert_pool_works(exe)


def test_a_frozen_worker_is_killed_by_its_timeout_and_by_cancel(tmp_path):
    """SIGSTOP freezes the worker mid-task: the parent's timeout (and a cancel)
    must still end the task, and the pool carries on."""
    with pool(max_workers=2) as exe:
        for how in ("timeout", "cancel"):
            started = tmp_path / f"{how}.started"
            fut = exe.submit(
                stress_tasks.block_until,
                str(started),
                str(tmp_path / "never"),
                deadpool_timeout=2 if how == "timeout" else None,
            )
            wait_until(started.exists, timeout=60)
            pid = int(started.read_text())
            os.kill(pid, signal.SIGSTOP)
            if how == "timeout":
                assert isinstance(fut.exception(timeout=60), deadpool.TimeoutError)
            else:
                assert fut.cancel()
            wait_until(lambda pid=pid: not is_alive(pid), timeout=10, message=f"{pid} survived")
            _assert_pool_works(exe)


def test_closing_every_fd_then_returning_fails_only_that_task():
    with pool(max_workers=1) as exe:
        fut = exe.submit(stress_tasks.close_all_fds_then_return, "value")
        exc = fut.exception(timeout=60)
        assert isinstance(exc, deadpool.ProcessError), repr(exc)
        assert re.search(rf"\b{fut.pid}\b", str(exc)), str(exc)
        _assert_pool_works(exe)
        assert exe.submit(stress_tasks.pid_of_worker).result(timeout=60) != fut.pid


def test_closing_every_fd_while_still_running_fails_the_task_without_waiting_for_it(tmp_path):
    release = tmp_path / "release"
    with pool(max_workers=1) as exe:
        fut = exe.submit(stress_tasks.close_all_fds_then_block, str(release))
        # The task keeps running (until `release`, which never appears), but its
        # pipes are gone: the pool must notice, kill it and fail the future.
        exc = fut.exception(timeout=45)
        assert isinstance(exc, deadpool.ProcessError), repr(exc)
        assert not release.exists()
        _assert_pool_works(exe)


@pytest.mark.parametrize("then", ["return", "wait_next"])
@pytest.mark.parametrize("kind", sorted(stress_tasks.GARBAGE))
def test_garbage_in_the_result_pipe_fails_one_future_and_replaces_the_worker(kind, then):
    """`wait_next`: the task returns only once the pool has handed its worker
    the next task, so a stale frame still in the pipe would be taken for that
    task's result."""
    with pool(max_workers=1, max_backlog=40) as exe:
        before = exe.submit(stress_tasks.tagged, 0).result(timeout=60)
        fut = exe.submit(stress_tasks.garbage_into_result_pipe, kind, then)
        futures = [exe.submit(stress_tasks.tagged, i) for i in range(1, 30)]
        exc = fut.exception(timeout=60)
        assert isinstance(exc, deadpool.ProcessError), repr(exc)
        # The next tasks must get their own, correct results: nothing of the
        # corrupted stream may leak into them.
        outcomes = [f.exception(timeout=60) or f.result(timeout=0) for f in futures]
        wrong = [
            (i, outcome)
            for i, (f, outcome) in enumerate(zip(futures, outcomes, strict=True), start=1)
            if outcome != (i, f.pid)
        ]
        assert not wrong, f"innocent tasks got foreign outcomes (task, outcome): {wrong[:5]}"
        if kind != "forged_frame":
            # A broken protocol means that worker is replaced.
            assert before[1] not in {o[1] for o in outcomes}, (before, outcomes)
        assert exe.get_statistics()["tasks_failed"] == 1


def test_truncated_frame_then_death_fails_one_future():
    with pool(max_workers=1) as exe:
        fut = exe.submit(stress_tasks.garbage_into_result_pipe, "unknown_tag", "exit")
        exc = fut.exception(timeout=60)
        assert isinstance(exc, deadpool.ProcessError), repr(exc)
        _assert_pool_works(exe)


FLOOD_SCRIPT = """
import json, sys
import deadpool
from tests import stress_tasks

if __name__ == "__main__":
    nbytes = int(sys.argv[1])
    with deadpool.Deadpool(max_workers=2) as exe:
        floods = [exe.submit(stress_tasks.flood_output, nbytes) for _ in range(2)]
        others = [exe.submit(stress_tasks.tagged, i) for i in range(20)]
        totals = [f.result(timeout=120) for f in floods]
        values = [f.result(timeout=60)[0] for f in others]
        after = [exe.submit(stress_tasks.tagged, i).result(timeout=60)[0] for i in range(5)]
    print("\\nDONE " + json.dumps([totals, values, after]), flush=True)
"""


def test_flooding_stdout_and_stderr_does_not_break_anything(tmp_path):
    """In a script whose stdout and stderr are pipes (as under a CI runner or
    a pager), two tasks write 4 MiB to each of sys.stdout, sys.stderr, fd 1 and
    fd 2 while other tasks run. Everything arrives and every future resolves."""
    nbytes = 4 * MiB
    script = tmp_path / "flood.py"
    script.write_text(FLOOD_SCRIPT)
    code, out, err = stress_tasks.run_script(
        script, nbytes, env=stress_tasks.script_env(), cwd=str(tmp_path)
    )
    assert code == 0, err[-4000:].decode(errors="replace")
    done = [line for line in out.splitlines() if line.startswith(b"DONE ")]
    assert done, out[-2000:]
    totals, values, after = json.loads(done[-1][5:])
    assert totals == [4 * nbytes] * 2
    assert values == list(range(20)) and after == list(range(5))
    # Two floods, each writing nbytes twice to stdout (sys.stdout and fd 1) and
    # twice to stderr, in lines of 64 KiB ending in a newline. Concurrent writes
    # may interleave, so count the bytes.
    expected_x = 2 * 2 * (nbytes // FLOOD_CHUNK) * (FLOOD_CHUNK - 1)
    assert out.count(b"x") == expected_x, (out.count(b"x"), expected_x)
    assert err.count(b"x") >= expected_x, (err.count(b"x"), expected_x)


# ---------------------------------------------------------------- memory

RLIMIT_HEADROOM = 256 * MiB
RSS_BOUND = 300 * MiB


def test_memory_exhaustion_mixed_with_normal_tasks_on_one_worker():
    """Per round: 2 normal tasks, one that trips RLIMIT_AS (and restores it), a
    normal one, one that trips RLIMIT_AS and leaves the limit lowered, and one
    that SIGKILLs itself past an RSS bound (the OOM killer's way). Exact counts."""
    rounds = 6
    plan = []
    for r in range(rounds):
        plan += [
            ("ok", stress_tasks.tagged, (r * 10 + 0,)),
            ("ok", stress_tasks.tagged, (r * 10 + 1,)),
            ("memerr", stress_tasks.allocate_until_rlimit, (RLIMIT_HEADROOM, True)),
            ("ok", stress_tasks.tagged, (r * 10 + 2,)),
            ("memerr", stress_tasks.allocate_until_rlimit, (RLIMIT_HEADROOM, False)),
            ("ok", stress_tasks.tagged, (r * 10 + 3,)),
            ("killed", stress_tasks.rss_bomb, (RSS_BOUND,)),
            ("ok", stress_tasks.tagged, (r * 10 + 4,)),
        ]
    with pool(max_workers=1, max_backlog=len(plan)) as exe:
        futures = [(kind, args, exe.submit(fn, *args)) for kind, fn, args in plan]
        counts = {"ok": 0, "memerr": 0, "killed": 0}
        for kind, args, fut in futures:
            exc = fut.exception(timeout=120)
            if kind == "ok":
                assert exc is None, f"normal task {args} failed: {exc!r}"
                assert fut.result(timeout=0)[0] == args[0]
            elif kind == "memerr":
                assert isinstance(exc, MemoryError), repr(exc)
            else:
                _assert_death(exc, fut, "-9")
            counts[kind] += 1
        print(f"\nmemory: {counts}")
        assert counts == {"ok": 5 * rounds, "memerr": 2 * rounds, "killed": rounds}
        stats = exe.get_statistics()
        assert stats["tasks_failed"] == 3 * rounds, stats
        # One worker at a time; each RSS kill costs exactly one replacement.
        assert stats["worker_processes_created"] == 1 + rounds, stats
        _assert_pool_works(exe)
