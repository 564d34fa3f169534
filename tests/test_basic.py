"""The drop-in basics: package surface, the simple case, argument passing."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import multiprocessing
import os
import pickle
import platform
import re
import subprocess
import sys
from pathlib import Path

import deadpool
import pytest

from tests import tasks
from tests.helpers import pool, stats_settle

ROOT = Path(__file__).resolve().parent.parent

PUBLIC_NAMES = [
    "Deadpool",
    "Future",
    "as_completed",
    "CancelledError",
    "TimeoutError",
    "ProcessError",
    "PoolClosed",
    "trim_memory",
]


def f():
    return 123


def test_simple_case_from_the_readme():
    with deadpool.Deadpool() as exe:
        fut = exe.submit(f)
        result = fut.result(timeout=30)
    assert result == 123


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_names_exported(name):
    assert hasattr(deadpool, name)
    assert name in deadpool.__all__


def test_importing_the_package_loads_no_executor_until_used():
    # Every zygote imports the package (and __main__, which imports it too)
    # before its first fork: the executor and its imports must wait for use.
    probe = (
        "import sys, deadpool\n"
        "heavy = {'deadpool._executor', 'concurrent.futures', 'logging'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
        "from deadpool import Deadpool, TimeoutError\n"
        "print(Deadpool.__module__, TimeoutError.__module__, 'Deadpool' in dir(deadpool))\n"
        "try:\n"
        "    deadpool.no_such_name\n"
        "except AttributeError as exc:\n"
        "    print('AttributeError', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == [
        "[]",
        "deadpool._executor deadpool True",
        "AttributeError module 'deadpool' has no attribute 'no_such_name'",
    ]


@pytest.mark.parametrize("name", ["TimeoutError", "ProcessError", "PoolClosed"])
def test_public_exceptions_name_deadpool_and_unpickle_in_a_fresh_interpreter(name):
    exc_type = getattr(deadpool, name)
    assert exc_type.__module__ == "deadpool"
    # A fresh interpreter has not imported deadpool._exceptions: unpickling
    # goes through deadpool's lazy __getattr__.
    probe = (
        "import pickle, sys\n"
        "exc = pickle.loads(sys.stdin.buffer.read())\n"
        "print(type(exc).__module__, type(exc).__qualname__, exc.args)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        input=pickle.dumps(exc_type("x")),
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.decode() == f"deadpool {name} ('x',)\n"


def test_exception_hierarchy():
    assert issubclass(deadpool.TimeoutError, concurrent.futures.TimeoutError)
    assert issubclass(deadpool.ProcessError, multiprocessing.ProcessError)
    assert issubclass(deadpool.PoolClosed, RuntimeError)
    assert issubclass(deadpool.CancelledError, concurrent.futures.CancelledError)
    assert issubclass(deadpool.Future, concurrent.futures.Future)
    assert issubclass(deadpool.Deadpool, concurrent.futures.Executor)


def test_version_matches_cargo_and_metadata():
    cargo_toml = (ROOT / "Cargo.toml").read_text()
    cargo = re.search(r'(?m)^version\s*=\s*"([^"]+)"', cargo_toml).group(1)
    assert isinstance(deadpool.__version__, str)
    assert deadpool.__version__ == importlib.metadata.version("deadpool-executor")
    if "-" not in cargo:  # no pre-release suffix to normalise
        assert deadpool.__version__ == cargo


def test_submit_returns_deadpool_future():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.return_value, 1)
        assert isinstance(fut, deadpool.Future)
        assert isinstance(fut, concurrent.futures.Future)
        assert fut.result(timeout=30) == 1


def test_positional_and_keyword_arguments_reach_the_task():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.echo_args, 1, "two", [3], key="value", other=None)
        assert fut.result(timeout=30) == ((1, "two", [3]), {"key": "value", "other": None})


def test_keyword_named_fn_reaches_the_task():
    # fn is positional-only, so a task may take a keyword argument called "fn".
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.echo_args, fn="mine")
        assert fut.result(timeout=30) == ((), {"fn": "mine"})


def test_runs_in_another_process():
    with pool(max_workers=2) as exe:
        pid = exe.submit(tasks.get_pid).result(timeout=30)
    assert pid != os.getpid()


def test_many_tasks_all_resolve_correctly():
    with pool(max_workers=2, max_backlog=20) as exe:
        futs = [exe.submit(tasks.square, i) for i in range(300)]
        assert [fut.result(timeout=60) for fut in futs] == [i * i for i in range(300)]


def test_large_argument_and_result_round_trip():
    payload = os.urandom(8 * 1024 * 1024)
    with pool(max_workers=1) as exe:
        assert exe.submit(tasks.length_of, payload).result(timeout=60) == len(payload)
        assert exe.submit(tasks.big_bytes, 16 * 1024 * 1024).result(timeout=60) == (
            b"\xab" * (16 * 1024 * 1024)
        )


def test_default_max_workers_is_cpu_affinity_and_precreated():
    expected = len(os.sched_getaffinity(0))
    with pool() as exe:
        # The pool precreates max_workers workers without any task submitted.
        stats = stats_settle(exe, worker_processes_still_alive=expected)
        assert stats["worker_processes_created"] == expected
        assert stats["worker_processes_idle"] == expected


@pytest.mark.parametrize("daemon", [True, False, 1, "yes"])
def test_daemon_is_kept_as_passed_and_tasks_may_still_start_processes(tmp_path, daemon):
    # Accepted for compatibility (the original's README does not define it):
    # any value is kept as given, and whatever it is, a task may start a
    # multiprocessing child, which a stdlib daemonic process may not.
    out = tmp_path / "child.log"
    with pool(max_workers=1, daemon=daemon) as exe:
        assert exe.daemon is daemon
        assert exe.submit(tasks.run_multiprocessing_child, str(out)).result(timeout=60) == 0
    assert len(out.read_text().splitlines()) == 1


def test_trim_memory_in_parent_process():
    # A heap full of free holes: 2000-byte blocks come from malloc (not
    # pymalloc), and every 64th stays alive, so glibc cannot shrink it itself.
    blocks = [b"x" * 2000 for _ in range(32768)]
    kept = blocks[::64]
    del blocks
    released = deadpool.trim_memory()
    del kept
    assert type(released) is bool
    # True when memory went back to the OS; without glibc, a no-op.
    assert released is (platform.libc_ver()[0] == "glibc")


QUIET_SCRIPT = """
import deadpool
from tests import tasks

if __name__ == "__main__":
    with deadpool.Deadpool(max_workers=2) as exe:
        futs = [
            exe.submit(tasks.square, 3),
            exe.submit(tasks.raise_value_error, "x"),
            exe.submit(tasks.exit_with, 3),
            exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.3),
        ]
        outcomes = [type(f.exception(timeout=60)).__name__ for f in futs]
    print("DONE", outcomes)
"""


def test_library_prints_nothing_to_stdout(tmp_path):
    # Diagnostics go through logging (logger "deadpool"), never print().
    script = tmp_path / "quiet.py"
    script.write_text(QUIET_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=str(tmp_path),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "DONE ['NoneType', 'ValueError', 'ProcessError', 'TimeoutError']\n"


def test_every_constructor_keyword_of_the_original_is_accepted(tmp_path):
    with pool(
        max_workers=2,
        min_workers=1,
        max_tasks_per_child=10,
        max_worker_memory_bytes=1 << 40,
        mp_context="forkserver",
        initializer=tasks.init_record,
        initargs=(str(tmp_path / "init.log"),),
        finalizer=tasks.final_record,
        finalargs=(str(tmp_path / "final.log"), "tag"),
        max_backlog=5,
        shutdown_wait=True,
        shutdown_cancel_futures=False,
        daemon=True,
        malloc_trim_rss_memory_threshold_bytes=1 << 40,
        propagate_environ={"DP_TEST_VAR": "all-options"},
    ) as exe:
        assert exe.submit(tasks.init_state).result(timeout=30)[1:] == ((), "all-options")


def test_deadpool_keywords_are_consumed_not_passed_to_the_task():
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.echo_args, 1, deadpool_timeout=30, deadpool_priority=2, x=3)
        assert fut.result(timeout=30) == ((1,), {"x": 3})
