"""deadpool.dask: a Deadpool in every Dask worker, on a real LocalCluster
(loopback only). One cluster serves the module: a worker process with two
threads, so one Dask process and its pool of two."""

from __future__ import annotations

import math
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import types
from concurrent.futures import Future as PlainFuture
from concurrent.futures import ThreadPoolExecutor

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import deadpool  # noqa: E402
import deadpool.dask as dpd  # noqa: E402
from distributed import Client, LocalCluster, Reschedule  # noqa: E402
from distributed.worker import _run_task_simple  # noqa: E402

from tests import helpers, tasks  # noqa: E402
from tests.helpers import Gate, describe, is_alive, wait_until  # noqa: E402

THREADS = 2
DEADLINE = 60.0


def _cluster(**kwargs) -> LocalCluster:
    # Any free port for the scheduler's web server: its default, 8787, may be
    # taken (by the other cluster here, or anyone on this machine), and Dask
    # warns when it falls back.
    return LocalCluster(host="127.0.0.1", dashboard_address="127.0.0.1:0", processes=True, **kwargs)


def _cluster_processes(cluster: LocalCluster) -> set[int]:
    """The cluster's Dask worker processes and everything below them (their
    pools): these belong to the cluster, which outlives single tests and
    replaces what they kill."""
    pids = set()
    for nanny in list(cluster.workers.values()):
        pid = nanny.pid  # None while the nanny restarts its worker
        if pid:
            pids.add(pid)
            pids.update(helpers.descendants(pid))
    return pids


@pytest.fixture(scope="module", autouse=True)
def no_leftover_threads():
    """Leave this process with no more threads than it had. Dask's servers
    here (the scheduler, the nannies, the client) start a profiler that
    watches their event loop, and the pool Dask offloads serialisation to
    keeps its thread; Python 3.15 warns (an error here) at any os.fork() in
    a process with threads, so the "fork" tests after these would fail. So:
    no profiler, and a fresh offload pool, threadless until used, in place
    of the used one."""
    before = {thread.ident for thread in threading.enumerate()}
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        yield
    used = distributed.utils._offload_executor
    distributed.utils._offload_executor = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="Dask-Offload"
    )
    used.shutdown(wait=True)

    def extra():
        return [t.name for t in threading.enumerate() if t.ident not in before]

    wait_until(lambda: not extra(), message=lambda: f"threads left: {extra()}")


@pytest.fixture(scope="module")
def dask_cluster():
    before = set(helpers.descendants(os.getpid()))
    with _cluster(n_workers=1, threads_per_worker=THREADS) as cluster, Client(cluster) as client:
        client.register_plugin(dpd.DeadpoolPlugin())
        yield types.SimpleNamespace(cluster=cluster, client=client)
        # Orphans would leave our process tree: note them by pid now.
        owned = _cluster_processes(cluster)
    wait_until(
        lambda: not any(is_alive(pid) for pid in owned),
        timeout=DEADLINE,
        message=lambda: f"outlived the cluster: {describe(p for p in owned if is_alive(p))}",
    )
    helpers.assert_no_leftovers(before)


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    """conftest's check, but the cluster's own processes may stay (they are
    checked when the cluster goes). Tests that kill a pool's worker or a
    Dask worker check those pids themselves: orphans leave our tree."""
    before = set(helpers.descendants(os.getpid()))
    yield
    exempt = frozenset
    if "dask_cluster" in request.fixturenames:
        cluster = request.getfixturevalue("dask_cluster").cluster

        def exempt():
            return _cluster_processes(cluster)

    helpers.assert_no_leftovers(before, exempt)


def _pool_ready(client: Client) -> bool:
    ready = client.run(lambda dask_worker: dpd.EXECUTOR in dask_worker.executors, on_error="return")
    return len(ready) == 1 and all(value is True for value in ready.values())


@pytest.fixture
def client(dask_cluster):
    """The module's client, once its worker is up with its pool (a test may
    have killed the last one)."""
    wait_until(lambda: _pool_ready(dask_cluster.client), timeout=DEADLINE, message="no pool")
    return dask_cluster.client


def _worker_pid(client: Client) -> int:
    (pid,) = client.run(os.getpid).values()
    return pid


def _parent(pid: int) -> int:
    fields = helpers.proc_stat(pid)
    assert fields is not None, f"{pid} is gone"
    return int(fields[1])


# ----- on the cluster -----------------------------------------------------------


def test_tasks_run_in_deadpool_children_closures_included(client):
    worker = _worker_pid(client)
    offset = 100

    def add(x):  # a closure: Dask ships it by value, pickle refuses it
        return os.getpid(), x + offset

    with dpd.annotate():
        futures = client.map(add, range(4))
        lam = client.submit(lambda: os.getpid(), pure=False)
        delayed = dask.compute(*(dask.delayed(add)(i) for i in (10, 11)))
    results = [f.result(timeout=DEADLINE) for f in futures]
    assert [value for _, value in results] == [100, 101, 102, 103]
    pids = {pid for pid, _ in results} | {lam.result(timeout=DEADLINE)}
    pids |= {pid for pid, _ in delayed}
    assert [value for _, value in delayed] == [110, 111]
    for pid in pids:
        # deadpool worker -> the pool's zygote -> the Dask worker
        assert pid != worker
        assert _parent(_parent(pid)) == worker, describe([pid])
    # Without the annotation a task stays in the Dask worker's threads.
    assert client.submit(os.getpid, pure=False).result(timeout=DEADLINE) == worker


def test_timeout_raises_deadpool_timeout_error_and_the_dask_worker_goes_on(client):
    worker = _worker_pid(client)
    with dpd.annotate(timeout=0.5):
        fut = client.submit(tasks.sleep_then_return, 60, pure=False)
    with pytest.raises(deadpool.TimeoutError, match="timed out") as info:
        fut.result(timeout=DEADLINE)
    killed = int(str(info.value).split("worker ")[1].split()[0])
    wait_until(lambda: not is_alive(killed), message=f"{killed} was not killed")
    assert _worker_pid(client) == worker
    with dpd.annotate():
        assert client.submit(tasks.square, 7).result(timeout=DEADLINE) == 49


def test_killed_child_fails_its_task_only_and_retries_run_it_again(client, tmp_path):
    worker = _worker_pid(client)
    gate = Gate(tmp_path)
    with dpd.annotate():
        neighbour = client.submit(
            tasks.block_until_released, str(gate.started), str(gate.release_path), "ok"
        )
        gate.wait_started()
        doomed = client.submit(tasks.kill_self, signal.SIGKILL, pure=False)
        error = doomed.exception(timeout=DEADLINE)
        assert isinstance(error, deadpool.ProcessError), repr(error)
        assert "exitcode -9" in str(error), str(error)
        marker = tmp_path / "first-attempt"
        retried = client.submit(tasks.kill_self_first_time, str(marker), retries=1, pure=False)
        second = retried.result(timeout=DEADLINE)
    first = int(marker.read_text())
    assert second != first and not is_alive(first)
    gate.open()
    assert neighbour.result(timeout=DEADLINE) == "ok"
    assert _worker_pid(client) == worker


def test_task_calling_sys_exit_fails_only_itself(client):
    worker = _worker_pid(client)
    with dpd.annotate():
        error = client.submit(sys.exit, 3, pure=False).exception(timeout=DEADLINE)
    assert isinstance(error, deadpool.ProcessError), repr(error)
    assert "SystemExit(3)" in str(error)
    assert _worker_pid(client) == worker


def test_client_cancel_kills_the_running_task(client, tmp_path):
    gate = Gate(tmp_path)
    with dpd.annotate():
        fut = client.submit(tasks.block_until_released, str(gate.started), str(gate.release_path))
    pid = gate.wait_started()
    key = fut.key
    client.cancel(fut)
    wait_until(lambda: not is_alive(pid), timeout=DEADLINE, message=f"{pid} still runs")

    # The Dask worker has let go of it, and both its threads serve again.
    def holds(dask_worker):
        return key in dask_worker.state.tasks or len(dask_worker.state.executing)

    wait_until(lambda: not any(client.run(holds).values()), message="the task is still held")
    with dpd.annotate():
        assert client.gather(client.map(tasks.square, range(4))) == [0, 1, 4, 9]


def test_dask_worker_killed_by_sigkill_leaves_no_deadpool_process(client, tmp_path):
    gate = Gate(tmp_path)
    with dpd.annotate():
        fut = client.submit(
            tasks.block_until_released, str(gate.started), str(gate.release_path), "done"
        )
    task_pid = gate.wait_started()
    worker = _worker_pid(client)
    pool_processes = set(helpers.descendants(worker))
    # (The task's deadpool worker and its zygote at least.)
    assert task_pid in pool_processes and _parent(task_pid) in pool_processes
    gate.started.unlink()

    os.kill(worker, signal.SIGKILL)
    doomed = pool_processes | {worker}
    wait_until(
        lambda: not any(is_alive(pid) for pid in doomed),
        timeout=10,
        message=lambda: f"outlived their Dask worker: {describe(p for p in doomed if is_alive(p))}",
    )

    # The nanny starts a new worker, the plugin gives it a pool, and Dask
    # runs the lost task again there.
    rerun = gate.wait_started(timeout=DEADLINE)
    assert rerun not in doomed
    gate.open()
    assert fut.result(timeout=DEADLINE) == "done"
    assert _worker_pid(client) != worker


def test_get_worker_is_not_available_in_a_deadpool_child(client):
    with dpd.annotate():
        error = client.submit(distributed.get_worker, pure=False).exception(timeout=DEADLINE)
    # (Its chain of causes holds a ContextVar, which nothing pickles: Dask
    # sends a plain Exception with the original's repr.)
    assert "ValueError('No worker found')" in str(error), repr(error)


def test_plugin_sizes_the_pool_to_the_threads_and_registering_again_changes_nothing(client):
    def pool_of(dask_worker):
        executor = dask_worker.executors[dpd.EXECUTOR]
        return id(executor), executor.pool._max_workers

    (before,) = client.run(pool_of).values()
    assert before[1] == THREADS
    client.register_plugin(dpd.DeadpoolPlugin(max_workers=1))  # idempotent: ignored
    assert tuple(client.run(pool_of).values()) == (before,)


# ----- dask worker --preload deadpool.dask ---------------------------------------


def _dask_worker(scheduler: str, *options: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            scheduler,
            "--host",
            "127.0.0.1",
            "--no-nanny",
            "--no-dashboard",
            "--nthreads",
            str(THREADS),
            "--preload",
            "deadpool.dask",
            *options,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_dask_worker_preload_sets_up_the_pool_from_its_options(tmp_path):
    log_path = tmp_path / "worker.log"
    # A scheduler only, in this process.
    with _cluster(n_workers=0) as cluster, Client(cluster) as client, open(log_path, "w") as log:
        proc = _dask_worker(
            cluster.scheduler_address,
            "--deadpool-max-workers",
            "1",
            "--deadpool-timeout",
            "0.5",
            "--deadpool-max-tasks-per-child",
            "50",
            log=log,
        )
        owned: set[int] = set()
        try:
            client.wait_for_workers(1, timeout=DEADLINE)
            wait_until(lambda: _pool_ready(client), timeout=DEADLINE, message=log_path.read_text)

            def settings(dask_worker):
                executor = dask_worker.executors[dpd.EXECUTOR]
                return executor.pool._max_workers, executor._default_timeout

            assert list(client.run(settings).values()) == [(1, 0.5)]
            with dpd.annotate():
                slow = client.submit(tasks.sleep_then_return, 60, pure=False)
                pid = client.submit(tasks.get_pid, pure=False).result(timeout=DEADLINE)
            with pytest.raises(deadpool.TimeoutError):
                slow.result(timeout=DEADLINE)  # the worker's default timeout
            with dpd.annotate(timeout=math.inf):
                assert client.submit(tasks.sleep_then_return, 1, "slow").result(DEADLINE) == "slow"
            assert _parent(_parent(pid)) == proc.pid
            owned = {proc.pid, *helpers.descendants(proc.pid)}
        finally:
            proc.terminate()
            proc.wait(timeout=DEADLINE)
    wait_until(
        lambda: not any(is_alive(pid) for pid in owned),
        timeout=DEADLINE,
        message=lambda: f"outlived the dask worker: {describe(p for p in owned if is_alive(p))}",
    )


def test_dask_worker_preload_refuses_a_bad_option_before_starting(tmp_path):
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = _dask_worker("tcp://127.0.0.1:9", "--deadpool-mp-context", "threads", log=log)
        assert proc.wait(timeout=DEADLINE) != 0
    assert "--deadpool-mp-context" in log_path.read_text()


# ----- without a cluster ------------------------------------------------------------


def test_annotate_routes_to_the_pool_and_carries_options():
    with dpd.annotate():
        assert dask.get_annotations() == {"executor": "deadpool"}
    with dpd.annotate(timeout=2, priority=3, retries=2):
        assert dask.get_annotations() == {
            "executor": "deadpool",
            "deadpool": {"timeout": 2.0, "priority": 3},
            "retries": 2,
        }
        # An inner block overrides what it names and keeps the rest.
        with dpd.annotate(priority=1):
            assert dask.get_annotations()["deadpool"] == {"timeout": 2.0, "priority": 1}
        with dpd.annotate(timeout=math.inf):
            assert dask.get_annotations()["deadpool"] == {"timeout": math.inf, "priority": 3}
    assert dask.get_annotations() == {}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", -1),
        ("timeout", "soon"),
        ("timeout", math.nan),
        ("timeout", True),
        ("priority", -1),
        ("priority", 1.5),
        ("priority", 2**64),
    ],
)
def test_annotate_rejects_what_submit_rejects(option, value):
    with helpers.pool(max_workers=1) as exe:
        with pytest.raises((TypeError, ValueError)) as expected:
            exe.submit(tasks.square, 1, **{f"deadpool_{option}": value})
    with pytest.raises(expected.type, match=f"^{re.escape(str(expected.value))}$"):
        with dpd.annotate(**{option: value}):
            pass


def test_plugin_checks_its_arguments_and_pickles_without_its_pools():
    with pytest.raises(TypeError, match="max_wrkers"):
        dpd.DeadpoolPlugin(max_wrkers=2)
    with pytest.raises(ValueError, match="deadpool_timeout"):
        dpd.DeadpoolPlugin(timeout=-1)
    plugin = dpd.DeadpoolPlugin(timeout=5, max_tasks_per_child=10)
    plugin._executors[0] = object()  # as if set up in a worker
    copy = pickle.loads(pickle.dumps(plugin))
    assert (copy.timeout, copy.deadpool_kwargs, copy._executors) == (
        5.0,
        {"max_tasks_per_child": 10},
        {},
    )


class _RecordingPool:
    """Stands in for a Deadpool: records what submit() was given."""

    def __init__(self):
        self.calls = []

    def submit(self, fn, /, *args, **kwargs):
        future = PlainFuture()
        self.calls.append((fn, args, kwargs, future))
        return future


def test_options_reach_submit_and_a_released_task_is_rescheduled():
    annotations = {
        "timed": {"executor": "deadpool", "deadpool": {"timeout": 2.0, "priority": 5}},
        "plain": {"executor": "deadpool"},
        "forever": {"executor": "deadpool", "deadpool": {"timeout": math.inf}},
    }
    worker = types.SimpleNamespace(
        state=types.SimpleNamespace(
            tasks={k: types.SimpleNamespace(annotations=a) for k, a in annotations.items()}
        )
    )
    pool = _RecordingPool()
    executor = dpd._DaskExecutor(worker, pool, default_timeout=9.0)
    outer = {
        key: executor.submit(_run_task_simple, types.SimpleNamespace(key=key), {}, 0.0)
        for key in annotations
    }
    assert {fn for fn, *_ in pool.calls} == {dpd._run_in_child}
    options = [(kw["deadpool_timeout"], kw["deadpool_priority"]) for *_, kw, _ in pool.calls]
    assert options == [(2.0, 5), (9.0, 0), (math.inf, 0)]

    inner = {key: call[3] for key, call in zip(annotations, pool.calls, strict=True)}
    inner["timed"].set_result({"op": "task-finished", "result": 1})
    assert outer["timed"].result(timeout=0) == {"op": "task-finished", "result": 1}
    inner["plain"].set_exception(deadpool.TimeoutError("late"))
    assert isinstance(outer["plain"].exception(timeout=0), deadpool.TimeoutError)
    # What Dask no longer wants is cancelled in the pool; Dask is told to
    # reschedule it (dropped if unwanted, run again if wanted after all).
    executor.release("forever")
    assert inner["forever"].cancelled()
    message = outer["forever"].result(timeout=0)
    assert message["op"] == "task-erred"
    assert isinstance(message["actual_exception"], Reschedule)
    # Not Dask's calling convention: passed through untouched.
    executor.submit(tasks.square, 3)
    assert pool.calls[-1][:3] == (tasks.square, (3,), {})


def test_the_example_runs(tmp_path):
    example = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "examples", "dask_example.py"
    )
    done = subprocess.run(
        [sys.executable, example], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        "sum of squares: 285",
        "slow task: killed after 0.5 s (TimeoutError)",
        lines[3],
        "flaky task, retries=1: ok on the second attempt",
    ]
    assert lines[0].startswith("dask worker ") and "exitcode -9 (Killed)" in lines[3]
