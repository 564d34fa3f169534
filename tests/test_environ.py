"""propagate_environ, clear_workers, and the environment rule of each start method."""

from __future__ import annotations

import os

import pytest

from tests import tasks
from tests.helpers import Gate, is_alive, pool, read_lines, wait_until

VAR = "DP_TEST_VAR"


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_propagate_environ_with_initargs(tmp_path, method, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    log = tmp_path / "init.log"
    mapping = {VAR: "from-mapping"}
    with pool(
        max_workers=1,
        mp_context=method,
        propagate_environ=mapping,
        initializer=tasks.init_record,
        initargs=(str(log), "x", 2),
    ) as exe:
        pid, init_state, env = exe.submit(tasks.init_state).result(timeout=60)
    # The task sees the mapping and the initializer's work...
    assert env == "from-mapping"
    assert init_state == ("x", 2)
    # ...and the initializer itself got its initargs and already saw the mapping.
    assert read_lines(log) == [f"init {pid} 'from-mapping' ('x', 2)"]


def test_propagate_environ_without_initializer(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    with pool(max_workers=2, propagate_environ={VAR: "plain", "DP_OTHER": "2"}) as exe:
        assert exe.submit(tasks.get_env, VAR).result(timeout=30) == "plain"
        assert exe.submit(tasks.get_env, "DP_OTHER").result(timeout=30) == "2"


def test_propagate_environ_os_environ_sees_later_changes(monkeypatch):
    # The README's use: propagate_environ=os.environ re-enables propagation under forkserver.
    monkeypatch.delenv(VAR, raising=False)
    with pool(max_workers=1, propagate_environ=os.environ) as exe:
        exe.submit(tasks.square, 1).result(timeout=30)
        monkeypatch.setenv(VAR, "changed-later")
        exe.clear_workers()
        assert exe.submit(tasks.get_env, VAR).result(timeout=30) == "changed-later"


def test_clear_workers_rolls_out_a_changed_mapping(tmp_path, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    mapping = {VAR: "one"}
    with pool(max_workers=2, max_backlog=10, propagate_environ=mapping) as exe:
        first = [exe.submit(tasks.init_state).result(timeout=30) for _ in range(4)]
        assert {env for _, _, env in first} == {"one"}
        old_pids = {pid for pid, _, _ in first}
        mapping[VAR] = "two"
        # Existing workers keep what they were created with...
        assert exe.submit(tasks.get_env, VAR).result(timeout=30) == "one"
        exe.clear_workers()
        for pid in old_pids:
            wait_until(lambda pid=pid: not is_alive(pid), message=f"{pid} not retired")
        # ...their replacements are made with the mapping as it is now.
        after = [exe.submit(tasks.init_state).result(timeout=30) for _ in range(4)]
        assert {env for _, _, env in after} == {"two"}
        assert not {pid for pid, _, _ in after} & old_pids


def test_clear_workers_spares_a_busy_worker(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=2, max_backlog=10) as exe:
        busy = gate.submit(exe, "finished")
        busy_pid = gate.wait_started(busy)
        idle_pid = exe.submit(tasks.get_pid).result(timeout=30)
        assert idle_pid != busy_pid
        exe.clear_workers()
        wait_until(lambda: not is_alive(idle_pid), message="idle worker not retired")
        assert is_alive(busy_pid)
        gate.open()
        assert busy.result(timeout=30) == "finished"


def _start_zygote():
    with pool(max_workers=1) as exe:
        exe.submit(tasks.square, 1).result(timeout=30)


EXPECTED = {
    # start method -> (sees an os.environ change made after the zygote started,
    #                  sees a module global changed at runtime in the parent)
    "forkserver": (None, "default"),
    "spawn": ("late", "default"),
    "fork": ("late", "parent-runtime"),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_environment_follows_the_start_method(method, monkeypatch):
    _start_zygote()  # the forkserver zygote now exists, with the environment as it is now
    monkeypatch.setenv("DP_LATE_VAR", "late")
    monkeypatch.setattr(tasks, "MARKER", "parent-runtime")
    with pool(max_workers=1, mp_context=method) as exe:
        assert (
            exe.submit(tasks.env_and_marker, "DP_LATE_VAR").result(timeout=60) == (EXPECTED[method])
        )
