"""Task functions executed inside deadpool workers.

Everything here is importable as ``tests.tasks`` under every start method, so
workers started by fork, forkserver or spawn can unpickle references to it.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import threading
import time

# Module state a task can observe (set by an initializer or, for fork, by the parent).
MARKER = "default"
INIT_STATE: tuple | None = None
_KEPT: list = []  # memory a task keeps alive after it returns

BLOCK_LIMIT = 60.0  # a blocked task gives up after this long, so nothing can hang forever


# ---------------------------------------------------------------- file utilities


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def wait_for_file(path: str, limit: float = BLOCK_LIMIT) -> bool:
    """Poll for `path` (no fd needed, so it works after os.closerange); False on timeout."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _wait_for_file(path: str, limit: float = BLOCK_LIMIT) -> None:
    if not wait_for_file(path, limit):
        raise RuntimeError(f"{path} never appeared")


# ---------------------------------------------------------------- plain tasks


def return_value(value=None):
    return value


def add(a, b):
    return a + b


def square(x):
    return x * x


def get_pid(*_args):
    return os.getpid()


def echo_args(*args, **kwargs):
    return args, kwargs


def sleep_then_return(seconds, value=None):
    time.sleep(seconds)
    return value


def t(seconds):
    """The original README's statistics example: sleep and return the duration."""
    time.sleep(seconds)
    return seconds


def f_err(exc_type):
    """The original README's statistics example: raise the given exception type."""
    raise exc_type()


def big_bytes(nbytes):
    return b"\xab" * nbytes


def length_of(data):
    return len(data)


def append_tag(path, tag):
    append_line(path, str(tag))
    return tag


def block_until_released(started, release, value=None):
    """Announce the start (writing our pid to `started`), then wait for `release`."""
    write_atomic(started, str(os.getpid()))
    _wait_for_file(release)
    return value


def touch_then_return(path, value=None):
    write_atomic(path, str(os.getpid()))
    return value


def chunk_item(i, directory, blocking_index):
    """For map(chunksize=...): record start, block item `blocking_index` until released."""
    write_atomic(os.path.join(directory, f"started-{i}"), str(os.getpid()))
    if i == blocking_index:
        _wait_for_file(os.path.join(directory, "release"))
    return i, os.getpid(), time.monotonic_ns()


def pid_and_pgid():
    return os.getpid(), os.getpgid(0)


def pid_and_seq(i):
    return i, os.getpid(), time.monotonic_ns()


def raise_value_error_if_three(i):
    if i == 3:
        raise ValueError("three")
    return i


# ---------------------------------------------------------------- failures


class CustomError(Exception):
    pass


class UnpicklableError(Exception):
    """Carries a lock, so pickling it fails."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class UnunpicklableError(Exception):
    """Pickles fine but cannot be rebuilt: __init__ needs two args, args holds one."""

    def __init__(self, a, b):
        super().__init__(a)


def raise_value_error(*args):
    raise ValueError(*args)


def raise_custom(*args):
    raise CustomError(*args)


def raise_unpicklable(message):
    raise UnpicklableError(message)


def raise_ununpicklable():
    raise UnunpicklableError("first", "second")


def return_unpicklable():
    return threading.Lock()


def return_lambda(value):
    """A result pickle cannot write: a lambda (cloudpickle ships it)."""
    return lambda: value


def raise_with_callback(message, value):
    """An exception whose args hold a lambda, which only cloudpickle can write."""
    raise CustomError(message, lambda: value)


def modules_loaded(*names):
    import sys

    return [name in sys.modules for name in names]


def exit_with(code):
    os._exit(code)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(BLOCK_LIMIT)


def kill_self_first_time(marker):
    """SIGKILL this worker on the first attempt (leaving `marker`); return
    the pid on the next."""
    if not os.path.exists(marker):
        write_atomic(marker, str(os.getpid()))
        kill_self(signal.SIGKILL)
    return os.getpid()


def segfault():
    ctypes.string_at(0)


def hold_gil_sleep(seconds):
    """Sleep inside C code while holding the GIL (PyDLL does not release it)."""
    ctypes.PyDLL(None).sleep(int(seconds))
    return "woke up"


def spawn_grandchildren_and_block(pids_path, release):
    """Start two grandchildren: one in our process group, one in its own session."""
    same_group = subprocess.Popen(["sleep", "300"])
    own_session = subprocess.Popen(["sleep", "300"], start_new_session=True)
    write_atomic(pids_path, f"{os.getpid()} {same_group.pid} {own_session.pid}")
    _wait_for_file(release)
    return "released"


# ---------------------------------------------------------------- memory


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pid_and_rss():
    return os.getpid(), rss_bytes()


def allocate_and_keep(nbytes):
    """Allocate `nbytes` (touched) and keep them alive after the task returns."""
    _KEPT.append(b"\x01" * nbytes)
    return os.getpid(), rss_bytes()


def fragment_heap(count=32768, size=2000, keep_every=64):
    """Leave the glibc heap full of free holes: RSS stays high until malloc_trim.

    Blocks of 2000 bytes bypass pymalloc and come from malloc; keeping every
    64th one alive pins the heap so glibc cannot shrink it by itself.
    Returns (pid, rss after freeing)."""
    blocks = [b"x" * size for _ in range(count)]
    _KEPT.extend(blocks[::keep_every])
    del blocks
    return os.getpid(), rss_bytes()


def fragment_then_trim_memory():
    """Fragment the heap, then call deadpool.trim_memory(); return (rss before, rss after)."""
    import deadpool

    _pid, before = fragment_heap()
    deadpool.trim_memory()
    return before, rss_bytes()


# ---------------------------------------------------------------- init / final / env


def init_record(path, *args):
    """Initializer: remember args, log pid, args and the environment variable it sees."""
    global INIT_STATE
    INIT_STATE = args
    append_line(path, f"init {os.getpid()} {os.environ.get('DP_TEST_VAR')!r} {args!r}")


def init_state():
    return os.getpid(), INIT_STATE, os.environ.get("DP_TEST_VAR")


def init_raise_with_log_file(log_path, message):
    """Initializer that routes the 'deadpool' logger to a file, then raises."""
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger("deadpool").addHandler(handler)
    raise RuntimeError(message)


def init_log_to_file(log_path):
    """Initializer: route the worker's 'deadpool' logger to a file."""
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger("deadpool").addHandler(handler)


def init_register_atexit(log_path):
    atexit.register(append_line, log_path, f"atexit {os.getpid()}")


def final_record(log_path, tag):
    append_line(log_path, f"final {os.getpid()} {tag}")


def final_raise():
    raise RuntimeError("finalizer failed on purpose")


def get_env(name):
    return os.environ.get(name)


def env_and_marker(name):
    return os.environ.get(name), MARKER


# ---------------------------------------------------------------- nesting


def nested_pool_squares(n):
    import deadpool

    with deadpool.Deadpool(max_workers=2) as exe:
        return os.getpid(), list(exe.map(square, range(n)))


def run_multiprocessing_child(path):
    """Start a plain multiprocessing child from inside a worker."""
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=append_line, args=(path, f"child of {os.getpid()}"))
    proc.start()
    proc.join(30)
    return proc.exitcode


def put_on(queue, item):
    """Put `item` on a (Manager or multiprocessing) queue from the worker."""
    queue.put(item)


def set_in(mapping, key, value, event=None):
    """Write into a Manager dict, then set a Manager Event if given."""
    mapping[key] = value
    if event is not None:
        event.set()
    return os.getpid()


# Objects an initializer was given, kept for the tasks of that worker.
INHERITED: list = []


def keep_initargs(*objects):
    INHERITED[:] = objects


def use_inherited(item):
    """Put `item` on the inherited queue, holding the inherited lock, after
    adding to the inherited Value and Array; returns this worker's pid."""
    queue, lock, event, semaphore, condition, value, array = INHERITED
    with lock, semaphore, condition:
        with value.get_lock():
            value.value += 1
        array[0] += 1
        queue.put((item, os.getpid()))
    event.set()
    return os.getpid()


def log_through_queue_handler(queue):
    """The logging cookbook's worker initializer: log records go to `queue`."""
    import logging
    import logging.handlers

    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.INFO)


def log_info(message):
    import logging

    logging.getLogger("deadpool.tests").info(message)
    return os.getpid()


def put_pid_on(queue, tag):
    """A finalizer: report which worker retired."""
    queue.put((tag, os.getpid()))


def import_value(module_name):
    """Import `module_name` in the worker and return its VALUE."""
    import importlib

    return importlib.import_module(module_name).VALUE


# ---------------------------------------------------------------- remote errors


def raise_worker_only_error(message):
    """Raise an exception whose class lives in a module only this worker has:
    it pickles here, and cannot be unpickled in the parent."""
    import sys
    import types

    module = types.ModuleType("deadpool_test_worker_only")
    exec(
        "class WorkerOnlyError(Exception):\n    pass\n",
        module.__dict__,
    )
    sys.modules[module.__name__] = module
    raise module.WorkerOnlyError(message)


def raise_ununpicklable_if_three(i):
    if i == 3:
        raise UnunpicklableError("three", "extra")
    return i


def raise_unpicklable_if_three(i):
    if i == 3:
        raise UnpicklableError("three cannot travel")
    return i


def worker_imported(module_name):
    import sys

    return module_name in sys.modules


def exit_via_system_exit_if_three(i):
    if i == 3:
        raise SystemExit(3)
    return i


# ---------------------------------------------------------------- executor API (map, terminate)


def block_from(i, directory, first_blocking):
    """For map(buffersize=...): record the start of item `i`; items from
    `first_blocking` on wait for `directory`/release."""
    write_atomic(os.path.join(directory, f"started-{i}"), str(os.getpid()))
    if i >= first_blocking:
        _wait_for_file(os.path.join(directory, "release"))
    return i


def log_start_end(i, path):
    """Append ``start i`` and ``end i`` to `path` (the end before returning)."""
    append_line(path, f"start {i}")
    append_line(path, f"end {i}")
    return i


def ignore_sigterm_then_block(started, release):
    """A task that survives SIGTERM: only SIGKILL (or the release) ends it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return block_until_released(started, release, "released")


class Collectable:
    """A result that can be weakly referenced."""


def make_collectable(_i):
    return Collectable()


# ---------------------------------------------------------------- shared-memory payloads (issue 12)

# What /proc/<pid>/fd/<n> links to for one of the pool's shared-memory segments
# (a memfd, shown as "/memfd:deadpool-payload (deleted)").
PAYLOAD_MEMFD = "memfd:deadpool-payload"


def payload_memfds(pid="self"):
    """The descriptors of process `pid` (default: the caller) that are the
    pool's shared-memory segments; [] if the process is gone or unreadable."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    found = []
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed while we looked, or the process is gone
            continue
        if PAYLOAD_MEMFD in target:
            found.append(int(name))
    return sorted(found)


def digest(data):
    """blake2b of a bytes-like object, as hex."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


class TaggedBytes(bytes):
    """A bytes subclass (with an instance attribute): pickled as an object,
    never moved out of band; it must arrive as a TaggedBytes, tag and all."""

    tag: str = ""


class Blob:
    """A buffer-backed object that pickles the way a numpy array does: with
    protocol 5 or more its data goes to pickle as a ``pickle.PickleBuffer``
    (out of band when the pickler has a ``buffer_callback``), and the rebuilt
    object keeps the buffer pickle hands back instead of copying it (numpy's
    ``frombuffer``), so it is writable exactly when that buffer is. Over a
    bytearray the original is writable; over bytes it is read-only."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            return type(self)._rebuild, (pickle.PickleBuffer(self.data),)
        copy = bytearray(self.data) if self.writable else bytes(self.data)
        return type(self), (copy,)

    @classmethod
    def _rebuild(cls, buf):
        return cls(memoryview(buf))

    @property
    def writable(self):
        return not memoryview(self.data).readonly

    def tobytes(self):
        return memoryview(self.data).tobytes()

    def __len__(self):
        return memoryview(self.data).nbytes


def _facts(value):
    if isinstance(value, (bytes, bytearray, Blob)):
        view = memoryview(value.data if isinstance(value, Blob) else value)
        return (type(value).__name__, view.nbytes, digest(view), not view.readonly)
    if isinstance(value, (tuple, list)):
        return type(value)(_facts(v) for v in value)
    if isinstance(value, dict):
        return {k: _facts(v) for k, v in value.items()}
    return value


def buffer_facts(*args, **kwargs):
    """What arrived, checksummed where it ran: every bytes-like argument (also
    inside tuples, lists and dicts) as (type name, length, blake2b, writable),
    anything else as it is. Called in the parent too, for the expected value."""
    return _facts(args), _facts(kwargs)


def echo_tuple(*args):
    return args


def echo_list(*args):
    return list(args)


def echo_dict(**kwargs):
    return kwargs


def make_buffers(*sizes):
    """A tuple of bytes of the given sizes, the k-th filled with byte k + 1."""
    return tuple(bytes([k + 1]) * n for k, n in enumerate(sizes))


def flip_first_byte(obj):
    """Flip the first byte of a writable argument in place (a bytearray or a
    writable Blob) and return the argument: the worker's copy is its own."""
    view = memoryview(obj.data if isinstance(obj, Blob) else obj)
    view[0] ^= 0xFF
    return obj


def memfds_while_holding(data):
    """(length of `data`, this worker's shared-memory descriptors) while the
    task holds its argument."""
    return len(data), payload_memfds()


def repeat_bytes(data, times):
    """A result `times` the size of its argument."""
    return data * times
