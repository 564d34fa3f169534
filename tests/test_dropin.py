"""Code written for ProcessPoolExecutor or the original deadpool works unchanged:
multiprocessing objects reach workers as they reach the stdlib's."""

from __future__ import annotations

import multiprocessing
import sys

import deadpool
import pytest

from tests import tasks
from tests.helpers import pool

DEADLINE = 60

START_METHODS = ["forkserver", "spawn", "fork"]


@pytest.mark.parametrize("method", START_METHODS)
def test_manager_proxies_passed_to_a_task_authenticate_in_the_worker(method):
    with multiprocessing.Manager() as manager:
        queue, mapping, event = manager.Queue(), manager.dict(), manager.Event()
        with pool(max_workers=1, mp_context=method) as exe:
            assert exe.submit(tasks.put_on, queue, "hello").result(timeout=60) is None
            pid = exe.submit(tasks.set_in, mapping, "k", 42, event).result(timeout=60)
        assert queue.get(timeout=30) == "hello"
        assert event.wait(timeout=30)
        assert dict(mapping) == {"k": 42}
        assert pid != multiprocessing.current_process().pid


def shared_objects(ctx):
    return (
        ctx.Queue(),
        ctx.Lock(),
        ctx.Event(),
        ctx.Semaphore(2),
        ctx.Condition(),
        ctx.Value("i", 0),
        ctx.Array("i", 3),
    )


def drain(queue, count):
    return [queue.get(timeout=DEADLINE) for _ in range(count)]


def pool_given(ctx, objects, **options):
    """A pool whose initializer keeps `objects` for the tasks (tasks.use_inherited)."""
    return pool(mp_context=ctx, initializer=tasks.keep_initargs, initargs=objects, **options)


def assert_every_task_reported(queue, count, pids):
    """Each of `count` tasks put (its number, its worker's pid) on the queue."""
    seen = drain(queue, count)
    assert sorted(item for item, _ in seen) == list(range(count))
    assert {pid for _, pid in seen} == pids


@pytest.mark.parametrize("method", START_METHODS)
def test_multiprocessing_objects_in_initargs_reach_every_worker(method):
    """The stdlib's way: objects shared "through inheritance" go in initargs.
    Every worker gets them: the first ones, replacements after
    max_tasks_per_child, after a kill and after clear_workers()."""
    ctx = multiprocessing.get_context(method)
    objects = shared_objects(ctx)
    queue, _lock, event, _sem, _cond, value, array = objects
    with pool_given(ctx, objects, max_workers=2, max_tasks_per_child=2) as exe:
        pids = {exe.submit(tasks.use_inherited, i).result(timeout=DEADLINE) for i in range(6)}
        lost = exe.submit(tasks.kill_self, 9)
        assert isinstance(lost.exception(timeout=DEADLINE), deadpool.ProcessError)
        exe.clear_workers()
        pids.add(exe.submit(tasks.use_inherited, 6).result(timeout=DEADLINE))
    assert len(pids) >= 3, "replacement workers were used"
    assert_every_task_reported(queue, 7, pids)
    assert event.is_set()
    assert value.value == 7
    assert array[0] == 7


@pytest.mark.parametrize("method", START_METHODS)
def test_a_queue_handler_initializer_sends_worker_logs_to_the_parent(method):
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    with pool(
        max_workers=1,
        mp_context=ctx,
        initializer=tasks.log_through_queue_handler,
        initargs=(queue,),
    ) as exe:
        pid = exe.submit(tasks.log_info, "from the worker").result(timeout=DEADLINE)
    record = queue.get(timeout=DEADLINE)
    assert (record.getMessage(), record.process) == ("from the worker", pid)


@pytest.mark.parametrize("method", START_METHODS)
def test_multiprocessing_objects_in_finalargs_reach_the_finalizer(method):
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    report_retirement = {"finalizer": tasks.put_pid_on, "finalargs": (queue, "retired")}
    with pool(max_workers=1, max_tasks_per_child=1, mp_context=ctx, **report_retirement) as exe:
        first = exe.submit(tasks.get_pid).result(timeout=DEADLINE)
        second = exe.submit(tasks.get_pid).result(timeout=DEADLINE)
    # Every worker retires gracefully: after its task, or at shutdown.
    created = exe.get_statistics()["worker_processes_created"]
    reports = drain(queue, created)
    assert {tag for tag, _ in reports} == {"retired"}
    assert {first, second} <= {pid for _, pid in reports}
    assert queue.empty()


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="the refusal is SemLock's own check, which CPython 3.10 lacks",
)
def test_a_lock_from_a_fork_context_is_refused_by_spawned_workers_as_by_the_stdlib():
    lock = multiprocessing.get_context("fork").Lock()
    with pytest.raises(TypeError, match="fork context"):
        deadpool.Deadpool(
            max_workers=1, mp_context="spawn", initializer=tasks.keep_initargs, initargs=(lock,)
        )


@pytest.mark.parametrize("method", START_METHODS)
def test_workers_grown_from_min_workers_get_the_initargs_too(method):
    ctx = multiprocessing.get_context(method)
    objects = shared_objects(ctx)
    with pool_given(ctx, objects, max_workers=2, min_workers=0) as exe:
        # Nothing runs until tasks arrive; then workers start on demand.
        pids = {exe.submit(tasks.use_inherited, i).result(timeout=DEADLINE) for i in range(4)}
    assert_every_task_reported(objects[0], 4, pids)
    assert objects[5].value == 4
