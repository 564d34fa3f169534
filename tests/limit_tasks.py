"""Task functions for the memory-limit and soft-timeout tests (importable by
workers). Every task that grows stops by itself at a cap the test gives (ten
times the limit at most), so a limit that failed to act costs a bounded
amount of memory, never the machine."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import deadpool

MiB = 1 << 20
STEP = MiB
# How long a grown task holds its memory before giving up on being stopped.
HOLD_LIMIT = 30.0
LONG_SLEEP = 60.0


def _hold() -> None:
    """Waits to be killed, for a bounded time."""
    deadline = time.monotonic() + HOLD_LIMIT
    while time.monotonic() < deadline:
        time.sleep(0.01)


def grow_python(cap: int) -> int:
    """Grows by 1 MiB objects (pages written) up to `cap` bytes, then holds."""
    chunks = []
    while len(chunks) * STEP < cap:
        chunks.append(b"\x01" * STEP)
    _hold()
    return len(chunks) * STEP


def grow_c(cap: int) -> int:
    """Grows by libc malloc + memset, outside Python's allocator."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    try:
        while len(blocks) * STEP < cap:
            block = libc.malloc(STEP)
            if not block:
                raise MemoryError("malloc failed")
            libc.memset(block, 1, STEP)
            blocks.append(block)
        _hold()
        return len(blocks) * STEP
    finally:
        for block in blocks:
            libc.free(block)


_CHILD = """
import sys, time
chunks, cap = [], int(sys.argv[1])
while len(chunks) << 20 < cap:
    chunks.append(b"\\x01" * (1 << 20))
print("grown", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    time.sleep(0.01)
"""


def grow_in_child(cap: int) -> int:
    """Starts a Python child that grows to `cap` bytes; waits for it."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(cap), str(HOLD_LIMIT)], stdout=subprocess.PIPE
    )
    try:
        child.wait(timeout=HOLD_LIMIT * 2)
    finally:
        child.kill()
        child.wait()
    return cap


def allocate(nbytes: int) -> tuple[int, int]:
    """Holds `nbytes` written bytes for the length of the call."""
    data = b"\x01" * nbytes
    return os.getpid(), len(data)


def impossible_allocation() -> None:
    """A real MemoryError: an allocation the OS refuses at once (1 PiB,
    nothing of it touched)."""
    bytearray(1 << 50)


def pid() -> int:
    return os.getpid()


def sleep_through_soft_timeout(seconds: float) -> tuple[str, float]:
    """Sleeps; on the soft timeout, cleans up and returns how long the task
    had run when it arrived."""
    start = time.monotonic()
    try:
        time.sleep(seconds)
    except deadpool.SoftTimeoutError:
        return "cleaned up", time.monotonic() - start
    return "slept", time.monotonic() - start


def ignore_soft_timeout(seconds: float) -> str:
    """Catches the soft timeout and goes on sleeping: the hard one must kill."""
    try:
        time.sleep(seconds)
    except deadpool.SoftTimeoutError:
        time.sleep(seconds)
    return "survived"


def raise_after_soft_timeout(seconds: float) -> None:
    try:
        time.sleep(seconds)
    except deadpool.SoftTimeoutError as exc:
        raise ValueError("cleaned up, then failed") from exc


def crypt_library() -> str | None:
    import ctypes.util

    return ctypes.util.find_library("crypt")


def hold_gil_in_c(rounds: int) -> tuple[str, float]:
    """SHA-512 crypt with `rounds` rounds through ``ctypes.PyDLL``: C code that
    holds the GIL and never looks at signals (two million rounds take about
    half a second; the most, 999999999, minutes). Catches the soft timeout
    and returns how long the task had run when it arrived."""
    lib = ctypes.PyDLL(crypt_library())
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    start = time.monotonic()
    try:
        lib.crypt(b"deadpool", f"$6$rounds={rounds}$salt".encode())
        time.sleep(LONG_SLEEP)
    except deadpool.SoftTimeoutError:
        return "cleaned up", time.monotonic() - start
    return "finished", time.monotonic() - start


def read_soft_timeout_then_sleep(seconds: float) -> str:
    """A task without a soft timeout that sleeps: no stray SIGALRM hits it."""
    time.sleep(seconds)
    return "undisturbed"
