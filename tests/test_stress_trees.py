"""Stress: a task's whole process tree dies with it (timeout, cancel), and
nothing a task started survives the pool's shutdown.

The tree (tests/stress_tasks.spawn_tree): a child; a middle child with a plain
grandchild and a grandchild in its own session (setsid); an orphan whose parent
has already exited; and a ``sleep`` exec'd in a new session.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import deadpool
import pytest

from tests import stress_tasks
from tests.helpers import describe, is_alive, pool, wait_until

pytestmark = pytest.mark.stress

DEATH_DEADLINE = 10.0
# Must outlast building a tree (a few forks and one exec, ~10-50 ms); if it does
# not, `_tree_pids` reports an incomplete tree.
TREE_TIMEOUT = 2.0


def _tree_dir(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return directory


def _tree_pids(directory: Path) -> list[int]:
    text = (directory / "ready").read_text()
    pids = [int(line) for line in text.split()]
    assert len(pids) == len(stress_tasks.TREE_NAMES), text
    return pids


def _wait_ready(directory: Path, fut) -> list[int]:
    def ready():
        if fut.done() and not (directory / "ready").exists():
            pytest.fail(f"tree task ended before its tree was ready: {fut.exception(timeout=0)!r}")
        return (directory / "ready").exists()

    wait_until(ready, timeout=60, message=f"{directory}/ready never appeared")
    pids = _tree_pids(directory)
    assert all(is_alive(p) for p in pids), describe(pids)
    return pids


def _assert_all_die(pids: list[int], what: str) -> None:
    wait_until(
        lambda: not any(is_alive(p) for p in pids),
        timeout=DEATH_DEADLINE,
        message=lambda: f"{what}: survivors " + describe([p for p in pids if is_alive(p)]),
    )


def test_timeout_kills_the_whole_tree(tmp_path):
    directory = _tree_dir(tmp_path, "t")
    with pool(max_workers=1) as exe:
        fut = exe.submit(stress_tasks.spawn_tree, str(directory), deadpool_timeout=TREE_TIMEOUT)
        exc = fut.exception(timeout=60)
        assert isinstance(exc, deadpool.TimeoutError), repr(exc)
        pids = _tree_pids(directory)
        _assert_all_die([fut.pid, *pids], "after the timeout")
        assert exe.submit(stress_tasks.ident, 1).result(timeout=60) == 1


@pytest.mark.parametrize("cancel", ["cancel", "cancel_and_kill_if_running"])
def test_cancel_kills_the_whole_tree(tmp_path, cancel):
    directory = _tree_dir(tmp_path, cancel)
    with pool(max_workers=1) as exe:
        fut = exe.submit(stress_tasks.spawn_tree, str(directory))
        pids = _wait_ready(directory, fut)
        assert fut.running()
        assert getattr(fut, cancel)()
        assert fut.cancelled()
        _assert_all_die([fut.pid, *pids], f"after {cancel}()")
        assert exe.submit(stress_tasks.ident, 2).result(timeout=60) == 2


def test_many_trees_timed_out_at_once(tmp_path):
    """Four trees on two workers; every task times out; every process dies."""
    with pool(max_workers=2, max_backlog=10) as exe:
        dirs = [_tree_dir(tmp_path, f"m{i}") for i in range(4)]
        futs = [
            exe.submit(stress_tasks.spawn_tree, str(d), deadpool_timeout=TREE_TIMEOUT) for d in dirs
        ]
        for fut in futs:
            assert isinstance(fut.exception(timeout=120), deadpool.TimeoutError)
        everything = [f.pid for f in futs] + [p for d in dirs for p in _tree_pids(d)]
        _assert_all_die(everything, "after four timeouts")
        assert exe.submit(stress_tasks.ident, 4).result(timeout=60) == 4


def test_nothing_a_finished_task_left_running_survives_shutdown(tmp_path):
    """The task returns and leaves its tree running in an idle worker;
    shutdown(wait=True) retires the worker, and the tree goes with it."""
    directory = _tree_dir(tmp_path, "s")
    with pool(max_workers=1) as exe:
        fut = exe.submit(stress_tasks.spawn_tree, str(directory), False)
        names = fut.result(timeout=60)
        pids = list(names.values())
        worker = fut.pid
        assert all(is_alive(p) for p in pids), describe(pids)
        # Still alive while the pool runs: the worker is merely idle.
        assert exe.submit(stress_tasks.pid_of_worker).result(timeout=60) == worker
        assert all(is_alive(p) for p in pids), describe(pids)
    _assert_all_die([worker, *pids], "after shutdown(wait=True)")


def test_nothing_survives_shutdown_that_kills_running_tasks(tmp_path):
    dirs = [_tree_dir(tmp_path, f"r{i}") for i in range(2)]
    with pool(max_workers=2) as exe:
        futs = [exe.submit(stress_tasks.spawn_tree, str(d)) for d in dirs]
        pids = [p for d, f in zip(dirs, futs, strict=True) for p in _wait_ready(d, f)]
        exe.shutdown(wait=False, cancel_futures=True)
        # The kills are asynchronous: the futures end CANCELLED shortly after.
        _done, not_done = concurrent.futures.wait(futs, timeout=60)
        assert not not_done
        assert all(f.cancelled() for f in futs), futs
        _assert_all_die([*(f.pid for f in futs), *pids], "after shutdown(cancel_futures=True)")


def test_trees_left_by_many_tasks_die_with_retired_workers(tmp_path):
    """max_tasks_per_child=1: each worker retires after one task that leaves a
    tree behind; by the end every one of those processes is gone."""
    dirs = [_tree_dir(tmp_path, f"p{i}") for i in range(6)]
    with pool(max_workers=2, max_tasks_per_child=1, max_backlog=10) as exe:
        futs = [exe.submit(stress_tasks.spawn_tree, str(d), False) for d in dirs]
        pids = [p for f in futs for p in f.result(timeout=120).values()]
        workers = [f.pid for f in futs]
        assert len(set(workers)) == len(dirs)
        # Each worker retires right after its one task and takes its tree
        # with it, while the pool still runs.
        _assert_all_die(workers + pids, "after max_tasks_per_child retirements")


# A descendant that re-forks itself as fast as it can (its parent exiting each
# time) is not pinned here: the kill passes in src/os/process_tree.rs catch it on
# an idle machine, but under load it can still outrun a /proc scan. Killing it
# for certain needs the kernel's help (a cgroup's cgroup.kill); see the README.
