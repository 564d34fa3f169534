"""Stress: Ctrl-C (SIGINT to the script's process group, as a terminal sends
it) while the main thread is blocked in ``fut.result()``, in ``submit()`` on a
full backlog, and in ``shutdown(wait=True)``.

KeyboardInterrupt must be raised while the call is still blocked (not because
it finished), the task must not see the interrupt, and once the script leaves
its ``with`` block nothing it started may remain. "escape": the interrupt is
not caught inside the block, so it leaves the block (the usual Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

from tests import stress_tasks
from tests.helpers import describe, is_alive, processes_with_env_token, wait_until

pytestmark = pytest.mark.stress

SCRIPT = r'''
import concurrent.futures, json, linecache, os, sys, threading, time
import deadpool
from tests import stress_tasks
from tests.helpers import core_testing, is_alive, is_spare


def announce_when_blocked(main_ident, stop):
    """Print BLOCKED once the main thread has sat on one line of deadpool's or
    the stdlib's code (not this script's) for several consecutive looks."""
    last, same = None, 0
    while not stop.wait(0.005):
        frame = sys._current_frames().get(main_ident)
        if frame is None:
            continue
        where = (frame.f_code.co_filename, frame.f_lineno)
        if where[0] == __file__:
            last, same = None, 0
            continue
        same = same + 1 if where == last else 1
        last = where
        if same == 5:
            line = linecache.getline(*where).strip()
            print(f"BLOCKED {where[0]}:{where[1]}: {line}", flush=True)
            return


def outcome(fut, timeout):
    if fut is None:
        return None
    done, _ = concurrent.futures.wait([fut], timeout=timeout)
    if not done:
        return "pending"
    if fut.cancelled():
        return "cancelled"
    if fut.exception(timeout=0) is not None:
        return repr(fut.exception(timeout=0))
    result = fut.result(timeout=0)
    return sorted(result) if isinstance(result, dict) else result


def main(case, directory):
    release = os.path.join(directory, "release")
    report = {"case": case}
    stop = threading.Event()
    running = queued = None
    try:
        with deadpool.Deadpool(max_workers=1, max_backlog=1) as exe:
            running = exe.submit(stress_tasks.spawn_tree, directory, True, release)
            while not os.path.exists(os.path.join(directory, "ready")):
                if running.done():
                    raise SystemExit(f"tree task failed: {running.exception(timeout=0)!r}")
                time.sleep(0.005)
            with open(os.path.join(directory, "ready")) as f:
                report["tree"] = [int(p) for p in f.read().split()]
            report["worker"] = running.pid
            queued = exe.submit(stress_tasks.ident, "queued")  # the backlog (1) is now full
            watcher = threading.Thread(
                target=announce_when_blocked, args=(threading.main_thread().ident, stop)
            )
            watcher.start()
            try:
                if case in ("result", "escape"):
                    running.result(timeout=120)
                elif case == "submit":
                    exe.submit(stress_tasks.ident, "third")
                elif case == "shutdown":
                    exe.shutdown(wait=True)
                report["interrupted"] = False
            except KeyboardInterrupt:
                report["interrupted"] = True
                report["caught_at"] = time.monotonic()
                # Still blocked when interrupted: the call had not completed.
                report["running_done_at_interrupt"] = running.done()
                report["received_at_interrupt"] = exe.get_statistics()["tasks_received"]
                if case == "escape":
                    raise  # out of the with-block, as an uncaught Ctrl-C goes
            finally:
                stop.set()
                watcher.join(60)
            open(release, "w").close()
            report["running"] = outcome(running, 15)
            report["queued"] = outcome(queued, 15)
    except KeyboardInterrupt:
        report["escaped"] = True
        # The with-block is left: whatever it did to the work is done by now.
        report["running"] = outcome(running, 10)
        report["queued"] = outcome(queued, 10)
    report["released"] = os.path.exists(release)
    zygote = core_testing().shared_zygote_pid()
    deadline = time.monotonic() + 10
    while True:
        left = [
            p
            for p in core_testing().descendants(os.getpid())
            if p != zygote and not is_spare(p) and is_alive(p)
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    report["left"] = left
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
'''


@pytest.mark.parametrize("case", ["result", "submit", "shutdown", "escape"])
def test_sigint_interrupts_a_blocked_call_and_nothing_is_left(tmp_path, case):
    token = f"DP_STRESS_SIGINT_{uuid.uuid4().hex}"
    directory = tmp_path / "tree"
    directory.mkdir()
    proc = stress_tasks.start_script(SCRIPT, tmp_path, case, directory, token=token)
    try:
        blocked = stress_tasks.read_prefixed_line(proc, b"BLOCKED", 60)
        assert blocked, f"the script never blocked: {proc.communicate(timeout=60)!r}"
        sent_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
    line = [x for x in out.splitlines() if x.startswith(b"REPORT ")]
    assert line, out
    report = json.loads(line[-1][7:])
    print(
        f"\nSIGINT in {case}: blocked at {blocked.decode().strip()[8:]}; "
        f"KeyboardInterrupt after {(report['caught_at'] - sent_at) * 1000:.1f} ms"
    )
    assert report["interrupted"], report
    assert not report["running_done_at_interrupt"], "the call was not blocked any more"
    assert report["received_at_interrupt"] == 2, "the third submit got in"
    tree_result = sorted(stress_tasks.TREE_NAMES)
    print(f"outcomes: running {report['running']!r}, queued {report['queued']!r}")
    if case in ("result", "submit"):
        # Caught inside the block: the pool and its tasks carry on untouched
        # (the task did not see the Ctrl-C).
        assert report["running"] == tree_result
        assert report["queued"] == "queued"
    elif case == "shutdown":
        # Either waiting resumes, or the interrupted shutdown kills the work.
        assert report["running"] in (tree_result, "cancelled"), report
        assert report["queued"] in ("queued", "cancelled"), report
    else:
        # Ctrl-C out of the with-block must not wait for a task that never
        # ends (its release never comes): the block is left, the work killed.
        assert report.get("escaped") and not report["released"], report
        assert report["running"] not in (tree_result, "pending"), report
        assert report["queued"] != "pending", report
    assert report["left"] == [], describe(report["left"])
    # After the script: nothing of its pool, its workers or the task's tree.
    everything = [report["worker"], *report["tree"]]
    wait_until(
        lambda: not any(is_alive(p) for p in everything),
        timeout=10,
        message=lambda: describe([p for p in everything if is_alive(p)]),
    )
    wait_until(
        lambda: not processes_with_env_token(token),
        timeout=10,
        message=lambda: describe(processes_with_env_token(token)),
    )
