"""Under "fork", no worker is forked from a background thread at an arbitrary
moment: workers come from a zygote forked in the thread that made the pool.
Forking the user's process while another of its threads is inside an import
would copy that module's import lock, held, into the child, and a task
importing the same module would wait for it for ever."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest

from tests import tasks
from tests.helpers import pool

pytestmark = pytest.mark.stress

MODULES = 100
TASKS = 200


def _write_slow_modules(directory) -> list[str]:
    names = [f"deadpool_slow_import_{i}" for i in range(MODULES)]
    for i, name in enumerate(names):
        # The sleep holds the module's import lock for a while.
        (directory / f"{name}.py").write_text(f"import time\ntime.sleep(0.002)\nVALUE = {i}\n")
    return names


def _import_again_and_again(names: list[str], offset: int, stop: threading.Event) -> None:
    i = offset
    while not stop.is_set():
        name = names[i % len(names)]
        importlib.import_module(name)
        sys.modules.pop(name, None)  # so the next round takes the lock again
        i += 1


def test_workers_made_while_other_threads_import_never_hang(tmp_path):
    names = _write_slow_modules(tmp_path)
    sys.path.insert(0, str(tmp_path))
    stop = threading.Event()
    importers = [
        threading.Thread(target=_import_again_and_again, args=(names, k * 37, stop))
        for k in range(2)
    ]
    try:
        with pool(max_workers=2, max_tasks_per_child=1, mp_context="fork") as exe:
            for thread in importers:
                thread.start()
            # Every task runs in a fresh worker and imports a module that the
            # threads keep importing in the parent.
            futures = [exe.submit(tasks.import_value, names[i % MODULES]) for i in range(TASKS)]
            results = [future.result(timeout=60) for future in futures]
        assert results == [i % MODULES for i in range(TASKS)]
    finally:
        stop.set()
        for thread in importers:
            thread.join(timeout=60)
        sys.path.remove(str(tmp_path))
        for name in names:
            sys.modules.pop(name, None)
