"""Code written for ProcessPoolExecutor or the original deadpool works unchanged:
multiprocessing objects reach workers as they reach the stdlib's."""

from __future__ import annotations

import multiprocessing

import pytest

from tests import tasks
from tests.helpers import pool

START_METHODS = ["forkserver", "spawn", "fork"]


@pytest.mark.parametrize("method", START_METHODS)
def test_manager_proxies_passed_to_a_task_authenticate_in_the_worker(method):
    with multiprocessing.Manager() as manager:
        queue, mapping, event = manager.Queue(), manager.dict(), manager.Event()
        with pool(max_workers=1, mp_context=method) as exe:
            assert exe.submit(tasks.put_on, queue, "hello").result(timeout=60) is None
            pid = exe.submit(tasks.set_in, mapping, "k", 42, event).result(timeout=60)
        assert queue.get(timeout=30) == "hello"
        assert event.wait(timeout=30)
        assert dict(mapping) == {"k": 42}
        assert pid != multiprocessing.current_process().pid
