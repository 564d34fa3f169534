"""Task functions for the adversarial stress suite (tests/test_stress_*.py).

Importable as ``tests.stress_tasks`` in every worker, like ``tests.tasks``.
Every task that blocks gives up after ``BLOCK_LIMIT`` seconds and every
process a task starts exits by itself after ``ORPHAN_LIMIT`` seconds, so a
failing test can never leave something running forever.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time

from tests import tasks
from tests.tasks import BLOCK_LIMIT, append_line, wait_for_file, write_atomic

ORPHAN_LIMIT = 120.0
MiB = 1024 * 1024

# Shared with tests.tasks (where they live, and are pickled by reference to),
# under the names the stress tests use.
block_until = tasks.block_until_released
kill_self = tasks.kill_self
segfault = tasks.segfault


# ---------------------------------------------------------------- plain tasks


def ident(value):
    return value


def pid_of_worker(*_args):
    return os.getpid()


def tagged(i, seconds=0.0):
    """Return (i, worker pid), after sleeping `seconds`."""
    if seconds:
        time.sleep(seconds)
    return i, os.getpid()


def big_roundtrip(i, blob):
    """Check that `blob` is task i's argument pattern; return (i, our pid, that
    check, a blob of the same size in task i's result pattern)."""
    intact = blob == bytes([i % 251]) * len(blob)
    return i, os.getpid(), intact, bytes([(i + 7) % 251]) * len(blob)


def record_once(path, i):
    """Append our id to a shared file (O_APPEND: one line per execution) and return it."""
    append_line(path, str(i))
    return i


# ---------------------------------------------------------------- self-destruction


def os_exit(code):
    os._exit(code)


def sys_exit(code):
    sys.exit(code)


def raise_base_exception(name, *args):
    """Raise one of SystemExit, KeyboardInterrupt, GeneratorExit by name."""
    raise {
        "SystemExit": SystemExit,
        "KeyboardInterrupt": KeyboardInterrupt,
        "GeneratorExit": GeneratorExit,
    }[name](*args)


def abort():
    os.abort()


def close_all_fds_then_return(value):
    """Close every descriptor from 3 up (the worker's pipes among them), then return."""
    os.closerange(3, 65536)
    return value


def close_all_fds_then_block(release):
    """Close every descriptor from 3 up, then keep running (bounded) until `release`."""
    os.closerange(3, 65536)
    wait_for_file(release)
    return "released"


def _worker_fd(name: str) -> int:
    """One of the worker's pipes: the ``task_fd`` / ``result_fd`` local of
    ``worker_main`` (python/deadpool/_worker.py), found by walking up our own
    call stack."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "worker_main" and name in frame.f_locals:
            return frame.f_locals[name]
        frame = frame.f_back
    raise RuntimeError("not running inside deadpool's worker_main")


def _check_is_write_pipe(fd: int) -> None:
    target = os.readlink(f"/proc/self/fd/{fd}")
    with open(f"/proc/self/fdinfo/{fd}") as f:
        flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
    if not target.startswith("pipe:") or flags & os.O_ACCMODE != os.O_WRONLY:
        raise RuntimeError(f"fd {fd} is {target} with flags {flags:o}, not a pipe's write end")


GARBAGE = {
    # Raw bytes: an unknown frame tag, then noise.
    "unknown_tag": b"\xff" * 64,
    # Raw bytes: a known tag (Ok) and an implausibly large length (2**50).
    "huge_length": bytes([11]) + (1 << 50).to_bytes(8, "little"),
    # Raw bytes: the Ready tag, which only a starting worker may send.
    "wrong_tag": bytes([10]) + (4).to_bytes(8, "little") + b"\0\0\0\0",
    # Not raw: a well-formed Ok frame made with the pool's own frame writer,
    # whose body is not a pickle and whose task id (if frames carry one) is
    # not this task's. See _forge_frame.
    "forged_frame": None,
}


def _forge_frame(fd: int) -> None:
    from deadpool import _core

    frame = sys._getframe()
    own_id = 0
    while frame is not None:
        if frame.f_code.co_name == "worker_main":
            own_id = frame.f_locals.get("task_id", 0)
            break
        frame = frame.f_back
    try:
        _core.write_frame(fd, 11, own_id + 12345, b"nope!")
    except TypeError:  # a protocol whose frames carry no task id
        _core.write_frame(fd, 11, b"nope!")


def garbage_into_result_pipe(kind, then="return"):
    """Write garbage into the worker's own result pipe, then:

    - ``then="return"``: return normally at once;
    - ``then="wait_next"``: wait (bounded) until the pool has sent this worker
      its next task, then return normally (the real result frame now races
      with a task that is not ours);
    - ``then="exit"``: leave a truncated frame and die.
    """
    fd = _worker_fd("result_fd")
    _check_is_write_pipe(fd)
    if then == "exit":
        # A header promising 1000 bytes, 10 of them, then death.
        os.write(fd, bytes([11]) + (1000).to_bytes(8, "little") + b"0123456789")
        os._exit(0)
    if kind == "forged_frame":
        _forge_frame(fd)
    else:
        os.write(fd, GARBAGE[kind])
    if then == "wait_next":
        select.select([_worker_fd("task_fd")], [], [], 3.0)
    return "survived"


def flood_output(nbytes, chunk=64 * 1024):
    """Write `nbytes` to each of sys.stdout, sys.stderr, fd 1 and fd 2; return the total."""
    line = (b"x" * (chunk - 1)) + b"\n"
    total = 0
    for stream in (sys.stdout, sys.stderr):
        text = line.decode()
        for _ in range(nbytes // chunk):
            stream.write(text)
            total += chunk
        stream.flush()
    for fd in (1, 2):
        for _ in range(nbytes // chunk):
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            total += chunk
    return total


# ---------------------------------------------------------------- memory


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def allocate_until_rlimit(headroom, restore=True):
    """Cap our address space at (current size + headroom), then allocate 8 MiB
    blocks until that fails. The task fails with MemoryError (after freeing
    what it got). With ``restore=False`` the worker keeps the lowered limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + headroom, hard))
    blocks = []
    try:
        while True:
            blocks.append(bytearray(8 * MiB))
    except MemoryError:
        count = len(blocks)
        blocks.clear()
        if restore:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    raise MemoryError(f"RLIMIT_AS reached after {count} blocks of 8 MiB")


def rss_bomb(bound):
    """Allocate (touched) memory until our RSS passes `bound`, then SIGKILL
    ourselves, as the OOM killer would. An RLIMIT_AS lowered by an earlier
    task on this worker is lifted first: the OOM killer does not care."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    blocks = []
    while _rss() < bound:
        blocks.append(b"\1" * (8 * MiB))
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(BLOCK_LIMIT)


# ---------------------------------------------------------------- process trees


def _become_sleeper(pidfile: str, new_session: bool = False) -> None:
    """In a freshly forked process: drop the worker's descriptors, record our
    pid, then sleep (bounded) and exit without ever returning to the caller."""
    try:
        os.closerange(3, 65536)
        if new_session:
            os.setsid()
        write_atomic(pidfile, str(os.getpid()))
        time.sleep(ORPHAN_LIMIT)
    finally:
        os._exit(0)


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(0)
    return pid


def _middle(directory: str) -> None:
    """A child with two children of its own: a plain grandchild and one that
    calls setsid(); it then sleeps too."""
    os.closerange(3, 65536)
    _fork(_become_sleeper, os.path.join(directory, "grandchild"))
    _fork(_become_sleeper, os.path.join(directory, "setsid-grandchild"), True)
    _become_sleeper(os.path.join(directory, "middle"))


def _orphaner(directory: str) -> None:
    """Start a grandchild, then exit at once: the grandchild is orphaned."""
    os.closerange(3, 65536)
    _fork(_become_sleeper, os.path.join(directory, "orphan"))


TREE_NAMES = ("child", "middle", "grandchild", "setsid-grandchild", "orphan", "exec-child")


def spawn_tree(directory, block=True, release=None):
    """Start a process tree below this worker and record every pid in `directory`:

    - ``child``: a direct child;
    - ``middle`` with ``grandchild`` and ``setsid-grandchild`` (in its own session);
    - ``orphan``: a grandchild whose parent (the "orphaner") has already exited;
    - ``exec-child``: a ``sleep`` started with subprocess in a new session.

    Writes ``ready`` (all pids, one per line) once every pid is known, then
    blocks until `release` (bounded) if `block`, or returns the pids at once.
    """
    _fork(_become_sleeper, os.path.join(directory, "child"))
    _fork(_middle, directory)
    orphaner = _fork(_orphaner, directory)
    os.waitpid(orphaner, 0)  # the orphan's parent has exited: it is re-parented
    sleep = subprocess.Popen(["sleep", str(int(ORPHAN_LIMIT))], start_new_session=True)
    write_atomic(os.path.join(directory, "exec-child"), str(sleep.pid))
    pids = {}
    deadline = time.monotonic() + BLOCK_LIMIT
    while len(pids) < len(TREE_NAMES):
        if time.monotonic() > deadline:
            raise RuntimeError(f"tree incomplete: {pids}")
        for name in TREE_NAMES:
            path = os.path.join(directory, name)
            if name not in pids and os.path.exists(path):
                with open(path) as f:
                    pids[name] = int(f.read())
        time.sleep(0.002)
    write_atomic(os.path.join(directory, "ready"), "\n".join(str(p) for p in pids.values()))
    if block:
        wait_for_file(release or os.path.join(directory, "release"))
    return pids


# ---------------------------------------------------------------- payloads


def checksum(data):
    """A cheap fingerprint of a large bytes object: (length, adler32)."""
    import zlib

    return len(data), zlib.adler32(data)


def make_payload(nbytes, seed=7):
    """`nbytes` of a pattern with a prime period (251) after a 1 MiB
    seed-dependent random head, so that shifted, truncated or reordered
    copies do not checksum alike. One allocation of `nbytes` (page faults
    dominate the cost of big buffers on small machines)."""
    import random

    head = random.Random(seed).randbytes(min(MiB, nbytes))
    period = bytes((i * 131 + seed) % 256 for i in range(251))
    chunk = period * (MiB // len(period))  # whole periods only: joins keep the period
    reps, rest = divmod(nbytes - len(head), len(chunk))
    tail = (period * (rest // len(period) + 1))[:rest]
    return b"".join([head, *([chunk] * reps), tail])


def payload_checksum(nbytes, seed=7):
    return checksum(make_payload(nbytes, seed))


def make_payload_in_worker(nbytes, seed=7):
    return make_payload(nbytes, seed)


# ---------------------------------------------------------------- test-side helpers
# (used by the tests themselves, not by workers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_prefixed_line(proc, prefix: bytes, timeout: float) -> bytes:
    """What follows `prefix` on the first whole line of `proc`'s stdout that starts
    with it, or b"" if none arrives within `timeout` seconds (or stdout ends)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        for line in buf.splitlines(keepends=True):
            if line.startswith(prefix) and line.endswith(b"\n"):
                return line[len(prefix) :]
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
    return b""


def script_env(**extra: str) -> dict[str, str]:
    """The environment for a test script: `tests` importable (ROOT on PYTHONPATH,
    ahead of whatever PYTHONPATH already says)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def start_script(script_text: str, tmp_path, *args, token: str) -> subprocess.Popen:
    """Starts `script_text` as tmp_path/script.py in a session of its own, its
    processes marked with the environment variable `token` (for
    `kill_script_session`), stdout and stderr piped."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=script_env(**{token: "1"}),
        cwd=str(tmp_path),
        start_new_session=True,
    )


def read_json_line(proc: subprocess.Popen, prefix: bytes, token: str, timeout: float = 120):
    """The JSON that follows `prefix` on the script's stdout; if none comes
    within `timeout`, the script is killed and the test fails with its output."""
    import json

    import pytest

    line = read_prefixed_line(proc, prefix, timeout)
    if not line:
        kill_script_session(proc, token)
        pytest.fail(f"no {prefix!r} line from the script: {proc.communicate(timeout=30)!r}")
    return json.loads(line)


def kill_script_session(proc: subprocess.Popen, token: str) -> None:
    """Never leak: the script's session, and anything carrying its token."""
    from tests.helpers import processes_with_env_token

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    for pid in processes_with_env_token(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_script(path, *args, timeout=180.0, **popen_kwargs):
    """Run a Python script in its own session; (returncode, stdout, stderr).
    On timeout the whole session is SIGKILLed, so nothing it started survives."""
    proc = subprocess.Popen(
        [sys.executable, str(path), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen_kwargs,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(
            f"{path} did not finish within {timeout}s; stderr:\n"
            + err[-4000:].decode(errors="replace")
        ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return proc.returncode, out, err


# ---------------------------------------------------------------- shared-memory payloads (issue 12)
# Tasks that SIGKILL their own worker at a chosen point of moving a big payload.


def echo_checked(i, data):
    """(i, our pid, blake2b of what arrived, its type's name, the data itself)."""
    return i, os.getpid(), tasks.digest(data), type(data).__name__, data


def die_now():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(BLOCK_LIMIT)


class DieOnUnpickle:
    """An argument that SIGKILLs the worker as the worker unpickles it: put
    after a big buffer, the worker dies in the middle of reading its task."""

    def __reduce__(self):
        return die_now, ()


class DieOnPickle:
    """Part of a result that SIGKILLs the worker as the worker pickles it:
    put after a big buffer, the worker dies in the middle of writing its result."""

    def __reduce__(self):
        die_now()
        raise AssertionError("unreachable")


def kill_after_receiving(data):
    """Read all of a big argument (checksum it), then SIGKILL our own worker."""
    tasks.digest(data)
    die_now()


def die_while_returning(nbytes, seed, delay):
    """Start returning `nbytes` of random data and be SIGKILLed doing it: a
    timer thread kills the worker `delay` seconds from now; if it has not
    fired by the time the result is pickled, the DieOnPickle after the
    payload does. Either way the task never completes."""
    import random

    data = random.Random(seed).randbytes(nbytes)
    threading.Timer(delay, die_now).start()
    return data, DieOnPickle()


def hold_big_argument(data, release):
    """Hold a big argument until `release` exists (bounded): for timeouts."""
    tasks.wait_for_file(release)
    return len(data)
