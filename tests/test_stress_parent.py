"""Stress: the process that owns the pool dies (SIGKILL), forks, or created
its pool in a thread that is gone.

Each scenario runs in a script of its own, so the parent can die or fork
without disturbing the test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from tests import stress_tasks
from tests.helpers import describe, is_alive, processes_with_env_token, wait_until

pytestmark = pytest.mark.stress

# The bound for the whole cleanup after the parent's SIGKILL (the goal
# is well under a second; the measured time is printed).
PARENT_DEATH_BOUND = 2.0


def _run_for_report(script_text: str, tmp_path, *args, name: str, timeout: float) -> dict:
    """Run a script to completion, check it left no process behind (its session is
    killed afterwards whatever happens), and return the JSON it printed after
    "REPORT "."""
    token = f"DP_STRESS_{name}_{uuid.uuid4().hex}"
    proc = stress_tasks.start_script(script_text, tmp_path, *args, token=token)
    try:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
        # The script exited by itself: nothing it started may outlive it.
        wait_until(
            lambda: not processes_with_env_token(token),
            timeout=10,
            message=lambda: describe(processes_with_env_token(token)),
        )
    finally:
        stress_tasks.kill_script_session(proc, token)
        _close_pipes(proc)
    return json.loads([x for x in out.splitlines() if x.startswith(b"REPORT ")][-1][7:])


def _close_pipes(proc: subprocess.Popen) -> None:
    proc.stdout.close()
    proc.stderr.close()


# ---------------------------------------------------------------- parent death

PARENT_DEATH_SCRIPT = r"""
import json, os, sys, time
import deadpool
from tests import stress_tasks

if __name__ == "__main__":
    from tests.helpers import core_testing

    directory, method = sys.argv[1], sys.argv[2]
    exe = deadpool.Deadpool(max_workers=2, mp_context=method, max_backlog=10)
    trees, futures = [], []
    for i in range(2):
        tree = os.path.join(directory, f"tree{i}")
        os.mkdir(tree)
        trees.append(tree)
        futures.append(exe.submit(stress_tasks.spawn_tree, tree))
    backlog = [exe.submit(stress_tasks.ident, i) for i in range(5)]  # busy, with a backlog
    deadline = time.monotonic() + 60
    while not all(os.path.exists(os.path.join(t, "ready")) for t in trees):
        if time.monotonic() > deadline or any(f.done() for f in futures):
            errors = [f.done() and f.exception(timeout=0) for f in futures]
            raise SystemExit(f"trees not ready: {errors}")
        time.sleep(0.005)
    pids = {
        "workers": [f.pid for f in futures],
        "trees": [int(p) for t in trees for p in open(os.path.join(t, "ready")).read().split()],
        "all": core_testing().descendants(os.getpid()),
    }
    print("PIDS " + json.dumps(pids), flush=True)
    time.sleep(300)
"""

PARENT_DEATH_RUNS = ["forkserver", "forkserver", "forkserver", "spawn", "fork"]


@pytest.mark.parametrize(
    "method", PARENT_DEATH_RUNS, ids=[f"{m}-{i}" for i, m in enumerate(PARENT_DEATH_RUNS)]
)
def test_everything_dies_within_two_seconds_of_the_parent(tmp_path, method):
    token = f"DP_STRESS_PARENT_{uuid.uuid4().hex}"
    directory = tmp_path / "trees"
    directory.mkdir()
    proc = stress_tasks.start_script(PARENT_DEATH_SCRIPT, tmp_path, directory, method, token=token)
    try:
        info = stress_tasks.read_json_line(proc, b"PIDS ", token)
        everything = sorted(set(info["all"]) | set(info["workers"]) | set(info["trees"]))
        # 2 trees of 6, 2 workers, at least one zygote.
        assert len(everything) >= 2 * len(stress_tasks.TREE_NAMES) + 3, describe(everything)
        assert all(is_alive(p) for p in everything), describe(everything)
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        deadline = killed_at + PARENT_DEATH_BOUND
        while any(is_alive(p) for p in everything) and time.monotonic() < deadline:
            time.sleep(0.001)
        elapsed = time.monotonic() - killed_at
        survivors = [p for p in everything if is_alive(p)]
        stray = processes_with_env_token(token)
        print(
            f"\nparent death ({method}): {len(everything)} processes gone in "
            f"{elapsed * 1000:.0f} ms"
        )
        assert not survivors, f"alive {elapsed:.2f}s after the parent died: {describe(survivors)}"
        assert not stray, f"alive and not in the tree: {describe(stray)}"
    finally:
        stress_tasks.kill_script_session(proc, token)
        _close_pipes(proc)


# ---------------------------------------------------------------- short-lived thread

THREAD_SCRIPT = r"""
import json, os, sys, threading
import deadpool
from tests import stress_tasks

if __name__ == "__main__":
    from tests.helpers import core_testing

    method = sys.argv[1]
    made = {}

    def make():
        exe = deadpool.Deadpool(max_workers=2, mp_context=method)
        made["exe"] = exe
        made["first"] = [exe.submit(stress_tasks.tagged, i).result(timeout=60) for i in range(4)]
        made["zygote"] = core_testing().shared_zygote_pid()

    creator = threading.Thread(target=make)
    creator.start()
    creator.join(120)
    exe = made["exe"]
    # The thread that created the pool (and started its workers) is gone.
    results = [exe.submit(stress_tasks.tagged, i, 0.002) for i in range(100)]
    values = [f.result(timeout=60)[0] for f in results]
    # ... and from yet another short-lived thread.
    other = {}
    helper = threading.Thread(
        target=lambda: other.update(v=exe.submit(stress_tasks.ident, "other").result(timeout=60))
    )
    helper.start()
    helper.join(120)
    stats = exe.get_statistics()
    zygote_now = core_testing().shared_zygote_pid()
    exe.shutdown(wait=True)
    print("REPORT " + json.dumps({
        "values": values,
        "other": other.get("v"),
        "failed": stats["tasks_failed"],
        "created": stats["worker_processes_created"],
        "same_zygote": made["zygote"] == zygote_now,
    }), flush=True)
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_pool_created_in_a_short_lived_thread_keeps_working(tmp_path, method):
    report = _run_for_report(THREAD_SCRIPT, tmp_path, method, name="THREAD", timeout=180)
    assert report["values"] == list(range(100))
    assert report["other"] == "other"
    assert report["failed"] == 0
    # No worker (or zygote) died when the creating thread exited.
    assert report["created"] == 2, report
    assert report["same_zygote"], report


# ---------------------------------------------------------------- os.fork()

FORK_SCRIPT = r"""
import json, os, select, sys, threading, time
import deadpool
from tests import stress_tasks


def child(exe, w):
    report = {}
    try:
        exe.submit(stress_tasks.ident, 1)
        report["submit"] = "accepted"
    except deadpool.PoolClosed as exc:
        report["submit"] = "PoolClosed: " + str(exc)
    except BaseException as exc:
        report["submit"] = repr(exc)
    try:
        list(exe.map(stress_tasks.ident, [1, 2]))
        report["map"] = "accepted"
    except deadpool.PoolClosed:
        report["map"] = "PoolClosed"
    except BaseException as exc:
        report["map"] = repr(exc)
    try:
        exe.shutdown(wait=True)
        report["shutdown"] = "ok"
    except BaseException as exc:
        report["shutdown"] = repr(exc)
    with deadpool.Deadpool(max_workers=1) as own:
        report["own"] = [own.submit(stress_tasks.ident, i).result(timeout=60) for i in range(3)]
    os.write(w, json.dumps(report).encode())
    os.close(w)


if __name__ == "__main__":
    n_forks = int(sys.argv[1])
    # Workers retire after every task, so the pool is constantly starting new
    # ones (its locks are in use) when the forks happen.
    exe = deadpool.Deadpool(max_workers=2, max_tasks_per_child=1, max_backlog=4)
    progress = [0]
    failures = []
    stop = threading.Event()

    def churn(k):
        i = 0
        while not stop.is_set():
            fut = exe.submit(stress_tasks.tagged, (k, i))
            try:
                fut.result(timeout=60)
            except BaseException as exc:
                failures.append(repr(exc))
            progress[0] += 1
            i += 1

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    children = {}
    for n in range(n_forks):
        seen = progress[0]
        while progress[0] == seen:  # fork in the middle of activity
            time.sleep(0.001)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                child(exe, w)
            except BaseException as exc:
                os.write(w, json.dumps({"error": repr(exc)}).encode())
            sys.exit(0)  # a normal exit: atexit handlers and finalizers run
        os.close(w)
        children[pid] = r
    reports, statuses, hung = [], {}, []
    deadline = time.monotonic() + 120
    for pid, r in children.items():
        data = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(r, 65536) if ready else b""
            if not chunk:
                break
            data += chunk
        os.close(r)
        reports.append(json.loads(data) if data else {"error": "no report"})
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[pid] = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.005)
        else:
            hung.append(pid)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    stop.set()
    for t in threads:
        t.join(60)
    after = [exe.submit(stress_tasks.ident, i).result(timeout=60) for i in range(10)]
    stats = exe.get_statistics()
    exe.shutdown(wait=True)
    print("REPORT " + json.dumps({
        "reports": reports,
        "exit_codes": sorted(statuses.values()),
        "hung": hung,
        "parent_failures": failures,
        "parent_failed_stat": stats["tasks_failed"],
        "after": after,
        "churned": progress[0],
    }), flush=True)
"""

# Scaled: 20 forks (each child starts its own zygote, a fresh interpreter).
N_FORKS = 20


def test_fork_after_creating_a_pool(tmp_path):
    report = _run_for_report(FORK_SCRIPT, tmp_path, N_FORKS, name="FORK", timeout=240)
    print(
        f"\nfork: {N_FORKS} forks while {report['churned']} tasks churned; hung: {report['hung']}"
    )
    assert report["hung"] == [], f"children that never exited: {report}"
    assert report["exit_codes"] == [0] * N_FORKS, report
    for child in report["reports"]:
        assert child.get("submit", "").startswith("PoolClosed"), child
        assert child["map"] == "PoolClosed", child
        assert child["shutdown"] == "ok", child
        assert child["own"] == [0, 1, 2], child
    # The parent's pool was not harmed by any of it.
    assert report["parent_failures"] == [] and report["parent_failed_stat"] == 0, report
    assert report["after"] == list(range(10))
