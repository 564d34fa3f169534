"""Shared test helpers: deadline polling, /proc process inspection, file gates."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deadpool import _zygote

from tests import tasks

DEFAULT_DEADLINE = 30.0


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll `predicate` until it returns a truthy value; fail loudly after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            detail = detail or getattr(predicate, "__name__", repr(predicate))
            pytest.fail(f"condition not met within {timeout}s: {detail}")
        time.sleep(interval)


# ---------------------------------------------------------------- /proc helpers


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (``[0]`` state,
    ``[1]`` ppid, ``[19]`` start time), or None if `pid` does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The name is in parentheses and may itself contain ") ".
    return data[data.rindex(")") + 2 :].split()


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) of `pid`, or None if it does not exist."""
    fields = proc_stat(pid)
    return None if fields is None else (int(fields[1]), fields[0])


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process on the machine."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    return table


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every descendant of `root` (following ppid links): pid -> (ppid, state)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found[pid] = table[pid]
        stack.extend(children.get(pid, []))
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a zombie has already died)."""
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def zygote_pids(parent: int | None = None) -> list[int]:
    """Direct children of `parent` (default: this process) whose cmdline names the zygote."""
    parent = os.getpid() if parent is None else parent
    return [
        pid
        for pid, (ppid, state) in process_table().items()
        if ppid == parent and state not in ("Z", "X") and "zygote" in cmdline(pid)
    ]


def core_testing() -> Any:
    """The core's test-only functions: ``descendants(pid)``, ``shared_zygote_pid()``."""
    from deadpool import _core

    return _core._testing


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


def is_spare(pid: int) -> bool:
    """The shared zygote's spare: forked ahead, waiting to become a worker."""
    return process_name(pid) == _zygote.SPARE_NAME


def dev_shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def assert_nothing_new_in_dev_shm(before: set[str], timeout: float = 10) -> None:
    """No entry that was not in /dev/shm before stays there (other programs'
    short-lived entries, such as multiprocessing's semaphores, may come and go)."""
    wait_until(
        lambda: not dev_shm_entries() - before,
        timeout=timeout,
        message=lambda: f"new in /dev/shm: {sorted(dev_shm_entries() - before)}",
    )


def processes_with_env_token(token: str) -> list[int]:
    """Live processes whose initial environment contains `token` (leak check for scripts)."""
    found = []
    needle = token.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read() and is_alive(int(name)):
                    found.append(int(name))
        except OSError:
            continue
    return found


def describe(pids) -> str:
    return "; ".join(f"{pid} [{(_stat(pid) or ('?', '?'))[1]}] {cmdline(pid)!r}" for pid in pids)


# ---------------------------------------------------------------- leak check

LEFTOVER_DEADLINE = 10.0
MULTIPROCESSING_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _start_time(pid: int) -> int:
    fields = proc_stat(pid)
    return 0 if fields is None else int(fields[19])


def leftover_processes(
    before: set[int], exempt: set[int] = frozenset()
) -> dict[int, tuple[int, str]]:
    """Descendants of this process not in `before` (nor in `exempt`) that
    should be gone: pid -> (ppid, state)."""
    me = os.getpid()
    found = {}
    family = descendants(me)
    # The one allowed survivor, as with the stdlib's forkserver: the
    # per-process zygote, a direct child of this process whose command line
    # names it (the oldest, if there are more). Its spare goes with the last
    # worker; a zombie (reaped by nobody) is a leak.
    zygotes = sorted(
        (
            pid
            for pid, (ppid, state) in family.items()
            if ppid == me and state not in ("Z", "X") and "zygote" in cmdline(pid)
        ),
        key=_start_time,
    )
    allowed = set(zygotes[:1]) | set(exempt)
    # multiprocessing's own helpers live as long as this process, whoever
    # started them (a test that makes a forkserver-context Lock starts one).
    allowed.update(
        pid
        for pid, (ppid, _) in family.items()
        if ppid == me and any(helper in cmdline(pid) for helper in MULTIPROCESSING_HELPERS)
    )
    for pid, (ppid, state) in family.items():
        if pid not in before and pid not in allowed:
            found[pid] = (ppid, state)
    return found


def assert_no_leftovers(
    before: set[int],
    exempt: Callable[[], set[int]] = frozenset,
    deadline: float = LEFTOVER_DEADLINE,
) -> None:
    """Fail unless every new descendant but the zygote (and what `exempt()`
    names, asked again at each look) is gone within `deadline` seconds; kill
    what is left (by pid) so that later tests start clean."""
    end = time.monotonic() + deadline
    left = leftover_processes(before, exempt())
    while left and time.monotonic() < end:
        time.sleep(0.02)
        left = leftover_processes(before, exempt())
    if left:
        report = "\n".join(
            f"  pid {pid} (ppid {ppid}, state {state}): {cmdline(pid)!r}"
            for pid, (ppid, state) in sorted(left.items())
        )
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(
            f"{len(left)} process(es) still alive {deadline}s after the test:\n{report}",
            pytrace=False,
        )


# ---------------------------------------------------------------- file gates


class Gate:
    """A task that announces it started (writing its pid) and blocks until released.

    Synchronises the test with worker-side progress without sleeping.
    """

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.started = Path(directory) / f"{name}.started"
        self.release_path = Path(directory) / f"{name}.release"

    def submit(self, exe, value: Any = None, **kwargs):
        return exe.submit(
            tasks.block_until_released, str(self.started), str(self.release_path), value, **kwargs
        )

    def is_started(self) -> bool:
        return self.started.exists()

    def wait_started(self, fut=None, timeout: float = DEFAULT_DEADLINE) -> int:
        """Wait until the task runs; returns the pid of the worker running it."""

        def started():
            if fut is not None and fut.done() and not self.started.exists():
                pytest.fail(f"gate task finished without starting: {fut!r} {fut.exception()!r}")
            return self.started.exists()

        wait_until(started, timeout=timeout, message=f"{self.started} never appeared")
        return int(self.started.read_text())

    def open(self) -> None:
        self.release_path.touch()


def read_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def pool(**kwargs) -> Iterator[Any]:
    """A Deadpool that is torn down hard if the test body fails, so a failure never hangs.

    On normal exit it shuts down with wait=True (the default)."""
    import deadpool

    exe = deadpool.Deadpool(**kwargs)
    try:
        yield exe
    except BaseException:
        exe.shutdown(wait=False, cancel_futures=True)
        raise
    exe.shutdown(wait=True)


def stats_settle(exe, timeout: float = 15.0, **expected) -> dict:
    """Poll get_statistics() until every key in `expected` has the expected value."""
    last: dict = {}

    def check():
        nonlocal last
        last = exe.get_statistics()
        # Settled: no worker is between states (starting up, retiring, being reaped),
        # so every live worker is either idle or busy.
        settled = last["worker_processes_still_alive"] == (
            last["worker_processes_idle"] + last["worker_processes_busy"]
        )
        return settled and all(last.get(k) == v for k, v in expected.items())

    wait_until(check, timeout=timeout, message=lambda: f"expected {expected}, last stats {last}")
    return last


def returns_in_forked_child(body: Callable[[], Any], timeout: float = 30.0) -> bool:
    """Run `body` in a child made by os.fork(); True if it returned there within
    `timeout` (the child is killed otherwise). For what a forked child may and
    may not do with its parent's pools."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            body()
            os.write(w, b"returned")
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        answer = os.read(r, 64) if ready else b""
    finally:
        os.close(r)
        if not ready:
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    return answer == b"returned"
