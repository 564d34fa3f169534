"""One adapter per implementation: make a pool, submit a task, shut it down.

Each adapter uses its library's normal public API. Libraries are imported
lazily in ``load()`` so that run.py can read the catalogue below without
importing any pool, and so that the two packages named ``deadpool`` (ours and
the original) only ever meet in different interpreters.
"""

import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass


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

    def shutdown(self, pool):
        pool.shutdown(wait=True)


class DeadpoolAdapter(Adapter):
    """Ours and the original share the API: ``submit(fn, deadpool_timeout=...)``."""

    timeouts = True

    def __init__(self, ours, max_backlog=None):
        self.ours = ours
        self.max_backlog = max_backlog  # None keeps the library's default

    def load(self):
        import deadpool

        self._check_identity(deadpool)
        self.mod = deadpool
        return getattr(deadpool, "__version__", "?")

    def _check_identity(self, mod):
        # Both packages are called deadpool; a wrong sys.path would silently
        # benchmark one as the other. Ours has the native _core, the original not.
        try:
            importlib.import_module("deadpool._core")
            has_core = True
        except ImportError:
            has_core = False
        if has_core != self.ours:
            want = "ours (with deadpool._core)" if self.ours else "the original (no _core)"
            raise RuntimeError(f"imported {mod.__file__}, which is not {want}")

    def make(self, workers):
        kwargs = {} if self.max_backlog is None else {"max_backlog": self.max_backlog}
        return self.mod.Deadpool(max_workers=workers, **kwargs)

    def submit(self, pool, fn, *args, timeout=None):
        if timeout is None:
            return pool.submit(fn, *args)
        return pool.submit(fn, *args, deadpool_timeout=timeout)


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


@dataclass(frozen=True)
class Impl:
    name: str
    env: str  # "ours" (the interpreter running run.py), "peers" or "original"
    description: str
    factory: Callable[[], Adapter]
    variant: bool = False  # a non-default setting, run only where it matters


IMPLS = {
    impl.name: impl
    for impl in [
        Impl(
            "deadpool",
            "ours",
            "deadpool (ours, Rust core), default max_backlog=5: submit blocks when 5 wait",
            lambda: DeadpoolAdapter(ours=True),
        ),
        Impl(
            "deadpool-bl0",
            "ours",
            "deadpool (ours) with max_backlog=0: unbounded backlog, submit never blocks",
            lambda: DeadpoolAdapter(ours=True, max_backlog=0),
            variant=True,
        ),
        Impl(
            "original",
            "original",
            "deadpool-executor from PyPI (the original, pure Python), default max_backlog=1000",
            lambda: DeadpoolAdapter(ours=False),
        ),
        Impl(
            "original-bl0",
            "original",
            "the original with max_backlog=0: unbounded backlog",
            lambda: DeadpoolAdapter(ours=False, max_backlog=0),
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
    ]
}

BASELINE = "ppe-forkserver"
ORIGINAL = "original"
