"""What pickle cannot write by reference travels by value (cloudpickle): tasks,
results, exceptions and worker settings. Plain pickle stays on the hot path."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import textwrap

import cloudpickle
import deadpool
import pytest

from tests import tasks
from tests.helpers import pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_METHODS = ["forkserver", "spawn", "fork"]


def _run_python(code: str, cwd) -> str:
    """Run ``python -c code`` (an interactive ``__main__``: no file a worker
    could import) and return its standard output."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lambda_runs_and_its_neighbours_are_unaffected():
    with pool(max_workers=1, max_backlog=10) as exe:
        before = exe.submit(tasks.square, 2)
        fut = exe.submit(lambda x, *, y: x * y, 6, y=7)
        after = exe.submit(tasks.square, 3)
        assert fut.result(timeout=30) == 42
        assert before.result(timeout=30) == 4
        assert after.result(timeout=30) == 9


def test_asubmit_and_amap_ship_lambdas_too():
    async def main(exe):
        future = await exe.asubmit(lambda x: x + 1, 41)
        got = await asyncio.wait_for(future, 60)
        return got, [square async for square in exe.amap(lambda x: x * x, range(3))]

    with pool(max_workers=1) as exe:
        assert asyncio.run(asyncio.wait_for(main(exe), 120)) == (42, [0, 1, 4])


def test_closure_runs_with_what_it_captured():
    offset = 1000
    seen = []

    def add(x):
        seen.append(x)  # the worker's copy of the list, not ours
        return x + offset

    with pool(max_workers=2) as exe:
        assert list(exe.map(add, range(5))) == [1000, 1001, 1002, 1003, 1004]
        assert list(exe.map(add, range(5), chunksize=2)) == [1000, 1001, 1002, 1003, 1004]
    assert seen == []


def test_class_defined_in_a_function_goes_and_comes_back_as_itself():
    class Point:
        def __init__(self, x):
            self.x = x

    def moved(p):
        return Point(p.x + 1)

    with pool(max_workers=1) as exe:
        result = exe.submit(moved, Point(1)).result(timeout=30)
    # cloudpickle tracks classes it shipped by value: the copy coming back
    # is mapped onto the original class.
    assert type(result) is Point
    assert result.x == 2


def test_lambda_result_arrives():
    with pool(max_workers=1) as exe:
        fn = exe.submit(tasks.return_lambda, "made in the worker").result(timeout=30)
    assert fn() == "made in the worker"


def test_exception_carrying_a_lambda_arrives_with_its_type_and_traceback():
    with pool(max_workers=1) as exe:
        exc = exe.submit(tasks.raise_with_callback, "carries a lambda", 17).exception(timeout=30)
    assert type(exc) is tasks.CustomError, repr(exc)
    assert exc.args[0] == "carries a lambda"
    assert exc.args[1]() == 17
    assert "raise_with_callback" in str(exc.__cause__)


def test_exception_of_a_local_class_is_raised_as_that_class():
    class LocalError(Exception):
        pass

    def fail(x):
        raise LocalError(x)

    with pool(max_workers=1) as exe, pytest.raises(LocalError) as info:
        exe.submit(fail, "local").result(timeout=30)
    assert info.value.args == ("local",)


def test_what_cloudpickle_cannot_write_still_fails_only_that_future():
    lock = tasks.threading.Lock()
    with pool(max_workers=1, max_backlog=10) as exe:
        fut = exe.submit(lambda: lock)  # the lambda is fine, the lock is not
        after = exe.submit(tasks.square, 3)
        exc = fut.exception(timeout=30)
        assert isinstance(exc, TypeError) and "lock" in str(exc), repr(exc)
        assert after.result(timeout=30) == 9
        # A lambda returning a lock: the worker cannot send the result back.
        exc = exe.submit(lambda: tasks.threading.Lock()).exception(timeout=30)
        assert "lock" in str(exc).lower(), repr(exc)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_nested_initializer_and_lambda_finalizer(start_method):
    # multiprocessing's pickler refuses both; the settings go by cloudpickle
    # with multiprocessing's reducers kept, so the queue (shared "through
    # inheritance") still reaches every worker.
    ctx = multiprocessing.get_context(start_method)
    messages = ctx.Queue()
    greeting = f"hello from {start_method}"

    def initializer(queue):
        queue.put(("init", greeting))

    with pool(
        max_workers=1,
        mp_context=ctx,
        initializer=initializer,
        initargs=(messages,),
        finalizer=lambda queue: queue.put(("final", greeting)),
        finalargs=(messages,),
    ) as exe:
        assert exe.submit(tasks.square, 4).result(timeout=30) == 16
    assert messages.get(timeout=30) == ("init", greeting)
    assert messages.get(timeout=30) == ("final", greeting)
    messages.close()
    messages.join_thread()


def test_initializer_nothing_can_pickle_is_a_type_error():
    lock = tasks.threading.Lock()
    with pytest.raises(TypeError, match="must be picklable"):
        deadpool.Deadpool(max_workers=1, initializer=lambda: lock)


def test_functions_typed_at_python_c_work_under_every_start_method(tmp_path):
    # Pickle writes __main__.inc by reference without complaint; a worker,
    # which cannot import a __main__ that has no file, would not find it.
    out = _run_python(
        """
        import deadpool

        def inc(x):
            return x + 1

        class Box:
            def __init__(self, v):
                self.v = v

        def boxed(x):
            return Box(x)

        for method in ("forkserver", "spawn", "fork"):
            with deadpool.Deadpool(max_workers=1, mp_context=method) as exe:
                box = exe.submit(boxed, 5).result(timeout=60)
                print(method, exe.submit(inc, 1).result(timeout=60), type(box) is Box, box.v)
        """,
        tmp_path,
    )
    assert out.splitlines() == [f"{method} 2 True 5" for method in START_METHODS]


def test_cloudpickle_is_not_imported_until_pickle_refuses(tmp_path):
    out = _run_python(
        """
        import sys
        import deadpool
        from tests import tasks

        with deadpool.Deadpool(max_workers=1) as exe:
            print(exe.submit(tasks.modules_loaded, "cloudpickle").result(timeout=60))
            print("cloudpickle" in sys.modules)
            print(exe.submit(lambda: tasks.modules_loaded("cloudpickle")).result(timeout=60))
            print("cloudpickle" in sys.modules)
        """,
        tmp_path,
    )
    assert out.splitlines() == ["[False]", "False", "[True]", "True"]


def test_cloudpickle_output_loads_with_plain_pickle(tmp_path):
    # The receiving side never needs to know which pickler wrote the bytes.
    payload = cloudpickle.dumps(lambda: "by value")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())())",
        ],
        input=payload,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "by value"
