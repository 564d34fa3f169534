"""mp_context: the three start methods and context objects; __main__ functions;
nested pools and multiprocessing inside a task."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import uuid

import deadpool
import pytest

from tests import tasks
from tests.helpers import describe, pool, processes_with_env_token, read_lines, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["forkserver", "spawn", "fork"]

MAIN_SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import deadpool


    def work(x):
        # Defined in __main__; this print comes from the worker (inherited stdout).
        print(f"worker-print {x} {os.getpid()}", flush=True)
        return x * 2


    if __name__ == "__main__":
        with deadpool.Deadpool(max_workers=2, mp_context=sys.argv[1]) as exe:
            results = list(exe.map(work, range(5)))
            single = exe.submit(work, 21).result(timeout=60)
        print("RESULT", results, single, flush=True)
        print("PARENT", os.getpid(), flush=True)
    """
)


@pytest.mark.parametrize("method", METHODS)
def test_main_module_function_under_each_start_method(tmp_path, method):
    token = f"DP_SCRIPT_{uuid.uuid4().hex}"
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env[token] = "1"
    proc = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=str(tmp_path),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [0, 2, 4, 6, 8] 42" in proc.stdout, (proc.stdout, proc.stderr)
    # The worker's own print reached the parent's stdout, from another process.
    lines = proc.stdout.splitlines()
    parent = next(int(line.split()[1]) for line in lines if line.startswith("PARENT"))
    printed = [line.split() for line in lines if line.startswith("worker-print 21 ")]
    assert printed, proc.stdout
    assert int(printed[0][2]) != parent
    wait_until(
        lambda: not processes_with_env_token(token),
        message=lambda: "left behind by the script: " + describe(processes_with_env_token(token)),
    )


PRINTING_SCRIPT = textwrap.dedent(
    """
    import sys

    import deadpool

    print("top level")  # not flushed: stdout is a pipe


    if __name__ == "__main__":
        print("before the pool")
        with deadpool.Deadpool(max_workers=2, mp_context=sys.argv[1]) as exe:
            print("result", sum(exe.map(abs, range(-3, 3))))
    """
)
# Who runs the top level: the parent, and each fresh interpreter that
# imports __main__ (forkserver: the zygote; spawn: each worker's own).
TOP_LEVEL_RUNS = {"forkserver": 2, "spawn": 3, "fork": 1}


@pytest.mark.parametrize("method", METHODS)
def test_output_not_yet_written_at_fork_is_written_once(tmp_path, method):
    # A forked zygote or worker inherits the parent's (or its zygote's)
    # unwritten output, and would write it again as it exits.
    script = tmp_path / "script.py"
    script.write_text(PRINTING_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=str(tmp_path),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout  # counted as text: processes' writes may interleave
    assert out.count("before the pool") == 1, out
    assert out.count("result 9") == 1, out
    assert out.count("top level") == TOP_LEVEL_RUNS[method], out


CONTEXTS = [
    pytest.param(multiprocessing.get_context(m), m, id=f"context-object-{m}") for m in METHODS
]


@pytest.mark.parametrize(("ctx", "method"), CONTEXTS)
def test_multiprocessing_context_object_selects_its_start_method(ctx, method, monkeypatch):
    # Same observables as test_environ.test_environment_follows_the_start_method.
    expected = {
        "forkserver": (None, "default"),
        "spawn": ("late", "default"),
        "fork": ("late", "parent-runtime"),
    }[method]
    with pool(max_workers=1) as exe:  # make sure the zygote exists already
        exe.submit(tasks.square, 1).result(timeout=30)
    monkeypatch.setenv("DP_LATE_VAR", "late")
    monkeypatch.setattr(tasks, "MARKER", "parent-runtime")
    with pool(max_workers=1, mp_context=ctx) as exe:
        assert exe.submit(tasks.env_and_marker, "DP_LATE_VAR").result(timeout=60) == expected


@pytest.mark.parametrize("method", METHODS)
def test_every_feature_path_works_under_each_start_method(tmp_path, method):
    with pool(max_workers=2, mp_context=method, max_tasks_per_child=2) as exe:
        assert list(exe.map(tasks.square, range(8), chunksize=3)) == [i * i for i in range(8)]
        assert isinstance(
            exe.submit(tasks.sleep_then_return, 300, deadpool_timeout=0.5).exception(timeout=60),
            deadpool.TimeoutError,
        )
        assert isinstance(
            exe.submit(tasks.exit_with, 4).exception(timeout=60), deadpool.ProcessError
        )
        assert exe.submit(tasks.square, 9).result(timeout=60) == 81


@pytest.mark.parametrize("daemon", [True, False])
def test_nested_deadpool_inside_a_task(daemon):
    with pool(max_workers=1, daemon=daemon) as exe:
        outer_pid, squares = exe.submit(tasks.nested_pool_squares, 6).result(timeout=90)
    assert outer_pid != os.getpid()
    assert squares == [i * i for i in range(6)]


@pytest.mark.parametrize("daemon", [True, False])
def test_multiprocessing_process_inside_a_task(tmp_path, daemon):
    out = tmp_path / "child.txt"
    with pool(max_workers=1, daemon=daemon) as exe:
        assert exe.submit(tasks.run_multiprocessing_child, str(out)).result(timeout=60) == 0
        worker_pid = exe.submit(tasks.get_pid).result(timeout=30)
    assert read_lines(out) == [f"child of {worker_pid}"]
