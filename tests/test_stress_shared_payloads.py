"""Stress: large payloads through shared memory (issue 12) while workers are
SIGKILLed in the middle of reading or writing them, time out holding them, or
lose their parent.

Every innocent task must come back byte-exact (blake2b in the worker and
here), every killed one must fail with ProcessError (or TimeoutError), and no
segment may outlive its use: none open in this process after shutdown, none
anywhere once a killed parent's processes are gone, nothing in /dev/shm.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import random
import signal
import threading
import time
import uuid

import deadpool
import pytest

from tests import stress_tasks, tasks
from tests.helpers import (
    assert_nothing_new_in_dev_shm,
    descendants,
    describe,
    dev_shm_entries,
    is_alive,
    pool,
    processes_with_env_token,
    wait_until,
)

pytestmark = pytest.mark.stress

KiB = 1024
MiB = 1024 * KiB
COUNTER = "bytes_through_shared_memory"
RESOLVE_DEADLINE = 120.0
CLEANUP_DEADLINE = 10.0

# One source of random bytes: each payload is a slice of it at a random
# offset behind its own 8-byte header, so no two payloads are alike and none
# costs a fresh random generation.
_SOURCE = random.Random(12).randbytes(9 * MiB)


def _payload(i: int, nbytes: int, rng: random.Random) -> bytes:
    offset = rng.randrange(len(_SOURCE) - nbytes + 8)
    return i.to_bytes(8, "little") + _SOURCE[offset : offset + nbytes - 8]


def _assert_no_segment_open_here() -> None:
    """Neither this process nor a descendant (the zygote, its spare) holds a segment."""
    holders = {
        pid: fds for pid in [os.getpid(), *descendants(os.getpid())] if (fds := _memfds(pid))
    }
    assert not holders, f"shared-memory segments still open (pid: fds): {holders}"


def _memfds(pid) -> list[int]:
    return tasks.payload_memfds(pid)


# ---------------------------------------------------------------- the storm

# 400 tasks on 2 workers, payloads of 256 KiB to 8 MiB (each way for an echo):
# about 1.5 GB through the pool and 160 worker deaths; ~15 s on 2 cores.
STORM_TASKS = 400
MIN_SIZE, MAX_SIZE = 256 * KiB, 8 * MiB
# Of every 10 tasks: 6 innocent echoes, then one of each way to die.
KINDS = ["echo"] * 6 + ["die_reading", "die_after_receiving", "die_writing", "timeout"]
TIMEOUT = 0.3


def _size(rng: random.Random) -> int:
    """256 KiB to 8 MiB, the two ends included, otherwise log-uniform."""
    pick = rng.random()
    if pick < 0.05:
        return MIN_SIZE
    if pick < 0.10:
        return MAX_SIZE
    return int(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** rng.random())


def _submit(exe, i: int, kind: str, rng: random.Random, never: str):
    """Submit task `i` of `kind`; return (future, what to expect)."""
    nbytes = _size(rng)
    if kind == "die_writing":
        delay = rng.uniform(0.0, 0.02)
        return exe.submit(stress_tasks.die_while_returning, nbytes, i, delay), None
    data = _payload(i, nbytes, rng)
    if i % 2:
        data = bytearray(data)
    if kind == "echo":
        return exe.submit(stress_tasks.echo_checked, i, data), (type(data), tasks.digest(data))
    if kind == "die_reading":
        # The worker dies unpickling what follows the big buffer.
        fut = exe.submit(stress_tasks.echo_checked, i, data, stress_tasks.DieOnUnpickle())
        return fut, None
    if kind == "die_after_receiving":
        return exe.submit(stress_tasks.kill_after_receiving, data), None
    assert kind == "timeout"
    return exe.submit(stress_tasks.hold_big_argument, data, never, deadpool_timeout=TIMEOUT), None


def _check(i: int, kind: str, fut, expected) -> str | None:
    """None if task i ended as it must, else what went wrong."""
    exc = fut.exception(timeout=0)
    if kind == "echo":
        if exc is not None:
            return f"innocent task {i} on {fut.pid} failed: {exc!r}"
        j, pid, worker_digest, type_name, data = fut.result(timeout=0)
        want_type, want_digest = expected
        if (j, pid, type_name) != (i, fut.pid, want_type.__name__):
            return f"task {i}: got {(j, pid, type_name)}, ran on {fut.pid}"
        if worker_digest != want_digest:
            return f"task {i}: its {len(data)}-byte argument arrived corrupted"
        if type(data) is not want_type or tasks.digest(data) != want_digest:
            return f"task {i}: its {len(data)}-byte result came back corrupted"
        return None
    if kind == "timeout":
        if not isinstance(exc, deadpool.TimeoutError):
            return f"task {i} ({kind}) did not time out: {exc!r}"
        return None
    if not isinstance(exc, deadpool.ProcessError):
        outcome = repr(exc) if exc is not None else "it succeeded"
        return f"task {i} ({kind}) killed its worker, yet {outcome}"
    return None


def _storm(exe, tmp_path, n: int, seed: int) -> dict[str, int]:
    """Submit `n` tasks from a thread (blocking on the backlog) while this
    thread checks each in turn and lets its result go; returns the count of
    each kind. Fails on the first wrong outcome, or if a future never resolves."""
    never = str(tmp_path / "never")
    handed: queue.Queue = queue.Queue()
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    rng.shuffle(kinds)

    stop = threading.Event()

    def submit_all():
        try:
            for i, kind in enumerate(kinds):
                if stop.is_set():
                    return
                handed.put((i, kind, *_submit(exe, i, kind, rng, never)))
        except BaseException as exc:
            handed.put(exc)
            raise

    submitter = threading.Thread(target=submit_all, name="stress-submitter", daemon=True)
    submitter.start()
    counts: dict[str, int] = {}
    deadline = time.monotonic() + RESOLVE_DEADLINE
    try:
        for _ in range(n):
            item = handed.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, BaseException):
                raise AssertionError(f"submit failed: {item!r}")
            i, kind, fut, expected = item
            remaining = max(0.0, deadline - time.monotonic())
            _, not_done = concurrent.futures.wait([fut], timeout=remaining)
            assert not not_done, f"task {i} ({kind}) never resolved"
            problem = _check(i, kind, fut, expected)
            assert problem is None, problem
            counts[kind] = counts.get(kind, 0) + 1
            del item, fut, expected  # let its payload go
    finally:
        stop.set()
        submitter.join(RESOLVE_DEADLINE)
    return counts


def test_storm_of_large_payloads_while_workers_die_reading_and_writing(tmp_path):
    shm = dev_shm_entries()
    with pool(max_workers=2, max_backlog=6) as exe:
        assert exe.submit(stress_tasks.ident, 0).result(timeout=60) == 0
        counts = _storm(exe, tmp_path, STORM_TASKS, seed=3)
        stats = exe.get_statistics()
        print(f"\nshared-payload storm: {counts}; {stats}")
        assert sum(counts.values()) == STORM_TASKS
        # The pool goes on: a big echo and a small task.
        data = _payload(999, 4 * MiB, random.Random(1))
        got = exe.submit(stress_tasks.echo_checked, 999, data).result(timeout=60)
        assert got[2] == tasks.digest(data) and got[4] == data
        assert exe.submit(stress_tasks.ident, "after").result(timeout=60) == "after"
        if COUNTER in stats:  # with shared memory: the storm went through it
            assert stats[COUNTER] > 0, stats
        assert exe.submit(tasks.payload_memfds).result(timeout=60) == []
    _assert_no_segment_open_here()
    assert_nothing_new_in_dev_shm(shm, CLEANUP_DEADLINE)


# A cap two 8 MiB echoes fit under, and far below what the storm's dead tasks
# held between them: if a killed task's share were not given back, every
# payload would soon take the pipe.
STORM_CAP = 32 * MiB


def test_killed_tasks_give_back_their_share_of_the_cap(tmp_path):
    shm = dev_shm_entries()
    with pool(max_workers=2, max_backlog=6, max_shared_memory_bytes=STORM_CAP) as exe:
        assert exe.submit(stress_tasks.ident, 0).result(timeout=60) == 0
        counts = _storm(exe, tmp_path, 80, seed=4)
        print(f"\ncapped storm: {counts}")
        # Alone now, an 8 MiB echo goes through shared memory both ways.
        before = exe.get_statistics()[COUNTER]
        data = _payload(1000, 8 * MiB, random.Random(2))
        got = exe.submit(stress_tasks.echo_checked, 1000, data).result(timeout=60)
        assert got[2] == tasks.digest(data) and got[4] == data
        assert exe.get_statistics()[COUNTER] - before == 2 * len(data)
    _assert_no_segment_open_here()
    assert_nothing_new_in_dev_shm(shm, CLEANUP_DEADLINE)


# ---------------------------------------------------------------- parent death

PARENT_SCRIPT = r"""
import json, os, sys, time
import deadpool
from tests import tasks

if __name__ == "__main__":
    from tests.helpers import core_testing

    directory, method = sys.argv[1], sys.argv[2]
    MiB = 1024 * 1024
    data = os.urandom(8 * MiB)
    exe = deadpool.Deadpool(max_workers=2, mp_context=method, max_backlog=10)
    # Round trips first: segments made, used and closed.
    for i in range(3):
        assert exe.submit(tasks.return_value, data).result(timeout=60) == data
    # Both workers hold a big argument (one kept as a buffer, as numpy keeps
    # an array's), with big echoes waiting behind them.
    holding = [
        exe.submit(
            tasks.block_until_released,
            os.path.join(directory, f"started{k}"),
            os.path.join(directory, "never"),
            arg,
        )
        for k, arg in enumerate([tasks.Blob(bytearray(data)), bytearray(data)])
    ]
    waiting = [exe.submit(tasks.return_value, data) for _ in range(6)]
    deadline = time.monotonic() + 60
    while not all(os.path.exists(os.path.join(directory, f"started{k}")) for k in range(2)):
        if time.monotonic() > deadline or any(f.done() for f in holding):
            raise SystemExit(f"holders never started: {[f.done() for f in holding]}")
        time.sleep(0.005)
    family = [os.getpid(), *core_testing().descendants(os.getpid())]
    print("PIDS " + json.dumps({
        "all": family,
        "memfds": {pid: len(tasks.payload_memfds(pid)) for pid in family},
    }), flush=True)
    time.sleep(300)
"""


def _payload_memfd_holders() -> dict[int, int]:
    """pid -> how many shared-memory segments it holds, for every process on
    the machine (processes that vanish while we look are skipped)."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fds := _memfds(int(name))):
            found[int(name)] = len(fds)
    return found


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_parent_killed_with_large_payloads_in_flight_frees_every_segment(tmp_path, method):
    shm = dev_shm_entries()
    # Segments other programs on the machine held already are theirs.
    others = set(_payload_memfd_holders())
    token = f"DP_STRESS_SHARED_{uuid.uuid4().hex}"
    proc = stress_tasks.start_script(PARENT_SCRIPT, tmp_path, tmp_path, method, token=token)
    try:
        info = stress_tasks.read_json_line(proc, b"PIDS ", token)
        everything = sorted(info["all"])
        # The parent, a zygote, two workers.
        assert len(everything) >= 4 and all(is_alive(p) for p in everything), describe(everything)
        os.kill(proc.pid, signal.SIGKILL)
        wait_until(
            lambda: not any(is_alive(p) for p in everything),
            timeout=CLEANUP_DEADLINE,
            message=lambda: f"alive after the parent died: {describe(everything)}",
        )
        wait_until(
            lambda: not processes_with_env_token(token),
            timeout=CLEANUP_DEADLINE,
            message=lambda: (
                f"alive and not in the tree: {describe(processes_with_env_token(token))}"
            ),
        )
        holders: dict[int, int] = {}

        def no_holder():
            nonlocal holders
            holders = {p: n for p, n in _payload_memfd_holders().items() if p not in others}
            return not holders

        wait_until(
            no_holder,
            timeout=CLEANUP_DEADLINE,
            message=lambda: f"segments still held (pid: count): {holders}; {describe(holders)}",
        )
        print(f"\nparent death ({method}): segments held at the kill: {info['memfds']}")
        assert_nothing_new_in_dev_shm(shm, CLEANUP_DEADLINE)
    finally:
        stress_tasks.kill_script_session(proc, token)
        proc.stdout.close()
        proc.stderr.close()
