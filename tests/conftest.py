"""Suite-wide fixtures: every test must leave no worker process behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests import helpers

LEFTOVER_DEADLINE = 10.0
MULTIPROCESSING_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _start_time(pid: int) -> int:
    fields = helpers.proc_stat(pid)
    return 0 if fields is None else int(fields[19])


def _leftovers(before: set[int]) -> dict[int, tuple[int, str]]:
    me = os.getpid()
    found = {}
    family = helpers.descendants(me)
    # The one allowed survivor, as with the stdlib's forkserver: the
    # per-process zygote, a direct child of this process whose command line
    # names it (the oldest, if there are more). Its spare goes with the last
    # worker; a zombie (reaped by nobody) is a leak.
    zygotes = sorted(
        (
            pid
            for pid, (ppid, state) in family.items()
            if ppid == me and state not in ("Z", "X") and "zygote" in helpers.cmdline(pid)
        ),
        key=_start_time,
    )
    allowed = set(zygotes[:1])
    # multiprocessing's own helpers live as long as this process, whoever
    # started them (a test that makes a forkserver-context Lock starts one).
    allowed.update(
        pid
        for pid, (ppid, _) in family.items()
        if ppid == me and any(helper in helpers.cmdline(pid) for helper in MULTIPROCESSING_HELPERS)
    )
    for pid, (ppid, state) in family.items():
        if pid not in before and pid not in allowed:
            found[pid] = (ppid, state)
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail the test if it leaves any new descendant process but the zygote."""
    before = set(helpers.descendants(os.getpid()))
    yield
    deadline = time.monotonic() + LEFTOVER_DEADLINE
    left = _leftovers(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _leftovers(before)
    if left:
        report = "\n".join(
            f"  pid {pid} (ppid {ppid}, state {state}): {helpers.cmdline(pid)!r}"
            for pid, (ppid, state) in sorted(left.items())
        )
        # Kill what this test left behind (by pid) so later tests start clean.
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(
            f"{len(left)} process(es) still alive {LEFTOVER_DEADLINE}s after the test:\n{report}",
            pytrace=False,
        )
