"""Start a driver subprocess with a deadline and leave no process behind.

run.py makes itself a child subreaper, so every process a driver's pool
forgets (a worker, a forkserver, a zygote) is re-parented to run.py instead of
init when the driver exits: run.py can then see it, report it as leaked and
kill it. Workers of some pools lead their own process group, so a deadline
kills the driver's whole tree found through /proc, not just its group.
"""

import ctypes
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import proctree

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@dataclass
class Outcome:
    status: str  # "ok" | "error" | "timeout"
    result: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    wall_s: float = 0.0


def run_driver(argv, env, cwd, deadline_s, grace_s=3.0):
    """Run ``argv`` (a driver) for at most ``deadline_s`` and parse what it printed."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Files, not pipes: a leaked grandchild holding a pipe open could
        # otherwise block us reading it.
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        timed_out = _wait_or_kill(proc, deadline_s)
        leaked = sweep(0.0 if timed_out else grace_s)
        if timed_out:
            leaked = []  # the tree was killed on purpose; dying processes are no leak
        out.seek(0)
        err.seek(0)
        outcome = _parse(out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    outcome.wall_s = time.monotonic() - t0
    _add_exit_notes(outcome, proc.returncode, timed_out, deadline_s, leaked)
    return outcome


def _wait_or_kill(proc, deadline_s):
    try:
        proc.wait(timeout=deadline_s)
        return False
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        return True


def kill_tree(proc):
    """Stop the whole tree first, so no pool respawns a worker while we kill it."""
    pids = [proc.pid, *proctree.descendants(proc.pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    proc.wait()


def _reap_children():
    """Collect the exit status of every orphan re-parented to us that has died."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep(grace_s, hard_limit_s=10.0):
    """Give orphans ``grace_s`` to exit on their own, then kill them.

    Returns the command lines of the processes that had to be killed.
    Only called while no driver runs, so every child of ours is an orphan.
    """
    start = time.monotonic()
    leaked = {}
    while time.monotonic() - start < hard_limit_s:
        _reap_children()
        alive = [p for p in proctree.descendants(os.getpid()) if not proctree.is_zombie(p)]
        if not alive:
            break
        if time.monotonic() - start >= grace_s:
            for pid in alive:
                leaked.setdefault(pid, proctree.cmdline(pid))
            proctree.kill_pids(alive)
        time.sleep(0.01)
    return sorted(leaked.values())


def _parse(stdout, stderr):
    tagged = {}
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag in ("RESULT", "ERROR", "SHUTDOWN", "SHUTDOWN-HUNG"):
            try:
                tagged[tag] = json.loads(rest)
            except ValueError:
                pass
    if "RESULT" in tagged:
        outcome = Outcome("ok", tagged["RESULT"])
    elif "ERROR" in tagged:
        outcome = Outcome("error", notes=[f"error: {tagged['ERROR']['error']}"])
    else:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        outcome = Outcome("error", notes=[f"no result; stderr: {tail[-300:]}"] if tail else [])
    if "SHUTDOWN-HUNG" in tagged:
        outcome.notes.append(f"shutdown hung for more than {tagged['SHUTDOWN-HUNG']['after_s']} s")
    elif "SHUTDOWN" in tagged and tagged["SHUTDOWN"]["shutdown_s"] > 2.0:
        outcome.notes.append(f"slow shutdown: {tagged['SHUTDOWN']['shutdown_s']:.1f} s")
    return outcome


def _add_exit_notes(outcome, returncode, timed_out, deadline_s, leaked):
    if timed_out:
        if outcome.status == "ok":
            outcome.notes.append(f"driver still running at the {deadline_s:.0f} s deadline")
        else:
            outcome.status = "timeout"
            outcome.notes.append(f"killed at the {deadline_s:.0f} s deadline")
    elif returncode not in (0, 3):  # 3: the driver's watchdog, already noted
        outcome.notes.append(f"driver exit code {returncode}")
    if leaked:
        outcome.notes.append(f"left {len(leaked)} process(es) behind: {'; '.join(leaked)}")
