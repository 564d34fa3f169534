"""One adapter per implementation: make a pool, submit a task, shut it down.

Each adapter uses its library's normal public API. Libraries are imported
lazily in ``load()`` so that run.py can read the catalogue below without
importing any pool, and so that the packages named ``deadpool`` (ours, the
--baseline build of ours, and the original) only ever meet in different
interpreters.
"""

import collections
import functools
import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class Adapter:
    """The small surface the workloads need; subclasses fill it in."""

    timeouts = False  # has a per-task timeout that kills the task

    def load(self):
        """Import the library and return its version string."""
        raise NotImplementedError

    def make(self, workers):
        raise NotImplementedError

    def submit(self, pool, fn, *args, timeout=None):
        raise NotImplementedError

    def batch(self, pool, fn, arg_tuples):
        """Yield ``fn(*args)`` for every tuple, in order.

        All are submitted first (a pool with a bounded backlog blocks in submit),
        then each result is yielded and its future dropped, so that a large
        payload's results do not pile up in the parent.
        """
        futures = collections.deque(self.submit(pool, fn, *args) for args in arg_tuples)
        while futures:
            yield futures.popleft().result()

    def shutdown(self, pool):
        pool.shutdown(wait=True)


class DeadpoolAdapter(Adapter):
    """Ours and the original share the API: ``submit(fn, deadpool_timeout=...)``."""

    timeouts = True

    def __init__(self, kind, max_backlog=None):
        self.kind = kind  # "ours", "baseline" (an earlier build of ours) or "original"
        self.max_backlog = max_backlog  # None keeps the library's default

    def load(self):
        import deadpool

        self._check_identity(deadpool)
        self.mod = deadpool
        return getattr(deadpool, "__version__", "?")

    def _check_identity(self, mod):
        # Three packages are called deadpool; a wrong sys.path would silently
        # benchmark one as another. Ours and the baseline have the native _core,
        # the original not.
        try:
            importlib.import_module("deadpool._core")
            has_core = True
        except ImportError:
            has_core = False
        original = self.kind == "original"
        if has_core == original:
            want = "the original (no _core)" if original else "our deadpool (with _core)"
            raise RuntimeError(f"imported {mod.__file__}, which is not {want}")
        # Ours may be an editable install anywhere, but the baseline is a wheel
        # installed into its own venv: a deadpool with _core from anywhere else
        # came in on an inherited path, most likely ours.
        if self.kind == "baseline" and not _inside(mod.__file__, sys.prefix):
            raise RuntimeError(f"imported {mod.__file__}, not the baseline build in {sys.prefix}")

    def make(self, workers):
        kwargs = {} if self.max_backlog is None else {"max_backlog": self.max_backlog}
        return self.mod.Deadpool(max_workers=workers, **kwargs)

    def submit(self, pool, fn, *args, timeout=None):
        if timeout is None:
            return pool.submit(fn, *args)
        return pool.submit(fn, *args, deadpool_timeout=timeout)


def _inside(path, directory):
    return Path(path).resolve().is_relative_to(Path(directory).resolve())


class StdlibAdapter(Adapter):
    def __init__(self, method):
        self.method = method

    def load(self):
        import concurrent.futures
        import multiprocessing

        self.cls = concurrent.futures.ProcessPoolExecutor
        self.ctx = multiprocessing.get_context(self.method)
        return sys.version.split()[0]

    def make(self, workers):
        return self.cls(max_workers=workers, mp_context=self.ctx)

    def submit(self, pool, fn, *args, timeout=None):
        return pool.submit(fn, *args)


class PebbleAdapter(Adapter):
    """pebble.ProcessPool with its default context (fork on Linux before 3.14)."""

    timeouts = True

    def load(self):
        import pebble

        self.mod = pebble
        return importlib.metadata.version("pebble")

    def make(self, workers):
        return self.mod.ProcessPool(max_workers=workers)

    def submit(self, pool, fn, *args, timeout=None):
        return pool.schedule(fn, args=args, timeout=timeout)

    def shutdown(self, pool):
        pool.close()
        pool.join()


class LokyAdapter(Adapter):
    """loky.ProcessPoolExecutor: a fresh executor each time, unlike
    get_reusable_executor, so "a second pool" really is a second pool."""

    def load(self):
        import loky

        self.mod = loky
        return loky.__version__

    def make(self, workers):
        return self.mod.ProcessPoolExecutor(max_workers=workers)

    def submit(self, pool, fn, *args, timeout=None):
        return pool.submit(fn, *args)


class JoblibAdapter(Adapter):
    """joblib.Parallel on its loky backend, with its memmapping: a numpy argument
    over ``max_nbytes`` (1 MB, joblib's default) goes to the workers as a
    read-only memmap of a file in joblib's temporary folder (/dev/shm on Linux),
    dumped once per Parallel call and found again by its hash for every task.

    Parallel runs batches, not single tasks: each batch is one Parallel call.
    The pool is loky's reusable executor behind it, which joblib keeps from one
    call to the next, so a warm-up batch leaves it warm for the measured one.
    """

    def load(self):
        import joblib

        self.mod = joblib
        return joblib.__version__

    def make(self, workers):
        # The "pool" makes the Parallel of each call; the first call starts the workers.
        return functools.partial(
            self.mod.Parallel,
            n_jobs=workers,
            backend="loky",
            max_nbytes="1M",
            return_as="generator",
        )

    def submit(self, pool, fn, *args, timeout=None):
        raise NotImplementedError("joblib.Parallel runs batches: use batch()")

    def batch(self, pool, fn, arg_tuples):
        yield from pool()(self.mod.delayed(fn)(*args) for args in arg_tuples)

    def shutdown(self, pool):
        # The reusable executor has no public handle: joblib keeps it in loky's global.
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True)


@dataclass(frozen=True)
class Impl:
    name: str
    env: str  # "ours" (the interpreter running run.py), "peers", "original" or "baseline"
    description: str
    factory: Callable[[], Adapter]
    variant: bool = False  # a non-default setting, run only where it matters
    only: frozenset = frozenset()  # the workloads it applies to (empty: every one); n/a elsewhere


BUILD_SUFFIX = "-baseline"  # the twin of one of our settings on the --baseline build


def _ours(name, description, max_backlog=None, variant=False):
    """One setting of our deadpool, and its twin on the --baseline build, so that
    every setting of ours can be compared with the same setting before a change."""
    yield Impl(name, "ours", description, lambda: DeadpoolAdapter("ours", max_backlog), variant)
    yield Impl(
        name + BUILD_SUFFIX,
        "baseline",
        f"the --baseline build of deadpool, same settings as {name}",
        lambda: DeadpoolAdapter("baseline", max_backlog),
        variant,
    )


IMPLS = {
    impl.name: impl
    for impl in [
        *_ours(
            "deadpool",
            "deadpool (ours, Rust core), default max_backlog=5: submit blocks when 5 wait",
        ),
        *_ours(
            "deadpool-bl0",
            "deadpool (ours) with max_backlog=0: unbounded backlog, submit never blocks",
            max_backlog=0,
            variant=True,
        ),
        Impl(
            "original",
            "original",
            "deadpool-executor from PyPI (the original, pure Python), default max_backlog=1000",
            lambda: DeadpoolAdapter("original"),
        ),
        Impl(
            "original-bl0",
            "original",
            "the original with max_backlog=0: unbounded backlog",
            lambda: DeadpoolAdapter("original", max_backlog=0),
            variant=True,
        ),
        Impl(
            "ppe-forkserver",
            "ours",
            "concurrent.futures.ProcessPoolExecutor, forkserver context",
            lambda: StdlibAdapter("forkserver"),
        ),
        Impl(
            "ppe-fork",
            "ours",
            "concurrent.futures.ProcessPoolExecutor, fork context",
            lambda: StdlibAdapter("fork"),
        ),
        Impl(
            "pebble",
            "peers",
            "pebble.ProcessPool (schedule(), default context: fork)",
            PebbleAdapter,
        ),
        Impl(
            "loky",
            "peers",
            "loky.ProcessPoolExecutor (loky context)",
            LokyAdapter,
        ),
        Impl(
            "joblib-memmap",
            "peers",
            "joblib.Parallel, loky backend, n_jobs=workers, default memmapping (max_nbytes='1M'): "
            "numpy arguments over 1 MB reach the workers as memmaps in /dev/shm; numpy workload "
            "only",
            JoblibAdapter,
            only=frozenset({"numpy"}),
        ),
    ]
}

BASELINE = "ppe-forkserver"
ORIGINAL = "original"
JOBLIB = "joblib-memmap"
