"""Bad input raises TypeError/ValueError naming the parameter and leaves the pool working."""

from __future__ import annotations

import deadpool
import pytest

from tests import tasks
from tests.helpers import pool

# ---------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    ("kwargs", "exc_types", "param"),
    [
        pytest.param(dict(max_workers=0), ValueError, "max_workers", id="max_workers=0"),
        pytest.param(dict(max_workers=-3), ValueError, "max_workers", id="max_workers<0"),
        pytest.param(
            dict(max_workers="2"), (TypeError, ValueError), "max_workers", id="max_workers=str"
        ),
        pytest.param(dict(max_backlog=-1), ValueError, "max_backlog", id="max_backlog<0"),
        pytest.param(dict(max_workers=2, min_workers=3), ValueError, "min_workers", id="min>max"),
        pytest.param(dict(min_workers=-1), ValueError, "min_workers", id="min_workers<0"),
        pytest.param(dict(mp_context="bogus"), ValueError, "mp_context", id="mp_context=bogus"),
        pytest.param(
            dict(mp_context=42), (TypeError, ValueError), "mp_context", id="mp_context=42"
        ),
        pytest.param(dict(no_such_option=1), TypeError, "no_such_option", id="unknown-keyword"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc_types, param):
    with pytest.raises(exc_types) as info:
        deadpool.Deadpool(**kwargs)
    assert param in str(info.value), f"{param!r} not named in {info.value!r}"


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "message"),
    [
        # The stdlib's words where it has them (ProcessPoolExecutor), ...
        pytest.param(
            dict(max_workers=0), ValueError, "max_workers must be greater than 0", id="mw=0"
        ),
        pytest.param(
            dict(max_workers=-3), ValueError, "max_workers must be greater than 0", id="mw<0"
        ),
        pytest.param(
            dict(max_tasks_per_child=0),
            ValueError,
            "max_tasks_per_child must be >= 1",
            id="mtpc=0",
        ),
        pytest.param(
            dict(max_tasks_per_child=1.5),
            TypeError,
            "max_tasks_per_child must be an integer",
            id="mtpc=float",
        ),
        pytest.param(
            dict(initializer=3), TypeError, "initializer must be a callable", id="initializer=3"
        ),
        # ... and deadpool's own, naming the parameter and the value, elsewhere.
        pytest.param(
            dict(max_workers="2"), TypeError, "max_workers must be an int, not str", id="mw=str"
        ),
        pytest.param(
            dict(max_workers=2**40),
            ValueError,
            f"max_workers must be <= 32768, got {2**40}",
            id="mw-huge",
        ),
        pytest.param(
            dict(finalizer=3),
            TypeError,
            "finalizer must be callable or None, not int",
            id="finalizer=3",
        ),
    ],
)
def test_constructor_error_messages(kwargs, exc_type, message):
    with pytest.raises(exc_type) as info:
        deadpool.Deadpool(**kwargs)
    assert str(info.value) == message


def test_min_workers_equal_to_max_workers_is_fine():
    with pool(max_workers=2, min_workers=2) as exe:
        assert exe.submit(tasks.square, 2).result(timeout=30) == 4


def test_min_workers_zero_is_fine():
    with pool(max_workers=1, min_workers=0) as exe:
        assert exe.submit(tasks.square, 2).result(timeout=30) == 4


# ---------------------------------------------------------------- submit


@pytest.mark.parametrize(
    ("args", "kwargs", "exc_types", "param"),
    [
        pytest.param((42,), {}, TypeError, "fn", id="non-callable-fn"),
        pytest.param(("tasks.square",), {}, TypeError, "fn", id="string-fn"),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_timeout="1"),
            TypeError,
            "deadpool_timeout",
            id="timeout=str",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_timeout=[1]),
            TypeError,
            "deadpool_timeout",
            id="timeout=list",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_timeout=-1),
            ValueError,
            "deadpool_timeout",
            id="timeout<0",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_timeout=10**400),
            ValueError,
            "deadpool_timeout",
            id="timeout-beyond-float",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_priority=-1),
            ValueError,
            "deadpool_priority",
            id="priority<0",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_priority=1.5),
            TypeError,
            "deadpool_priority",
            id="priority=float",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_priority="0"),
            TypeError,
            "deadpool_priority",
            id="priority=str",
        ),
        pytest.param(
            (tasks.square, 1),
            dict(deadpool_priority=None),
            TypeError,
            "deadpool_priority",
            id="priority=None",
        ),
    ],
)
def test_bad_submit_arguments_leave_the_pool_working(args, kwargs, exc_types, param):
    with pool(max_workers=1) as exe:
        with pytest.raises(exc_types) as info:
            exe.submit(*args, **kwargs)
        assert param in str(info.value), f"{param!r} not named in {info.value!r}"
        assert exe.submit(tasks.square, 3).result(timeout=30) == 9
        assert exe.get_statistics()["tasks_received"] == 1


def test_integer_and_float_timeouts_are_accepted():
    with pool(max_workers=1) as exe:
        assert exe.submit(tasks.square, 2, deadpool_timeout=30).result(timeout=30) == 4
        assert exe.submit(tasks.square, 3, deadpool_timeout=30.5).result(timeout=30) == 9
        assert exe.submit(tasks.square, 4, deadpool_timeout=None).result(timeout=30) == 16


def test_pool_survives_a_burst_of_bad_calls():
    with pool(max_workers=2) as exe:
        for bad in (
            lambda: exe.submit(None),
            lambda: exe.submit(tasks.square, 1, deadpool_priority=-5),
            lambda: exe.submit(tasks.square, 1, deadpool_timeout="soon"),
        ):
            with pytest.raises((TypeError, ValueError)):
                bad()
        assert list(exe.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "message"),
    [
        pytest.param(
            dict(deadpool_memory_limit=-1),
            ValueError,
            "deadpool_memory_limit must be >= 1, got -1",
            id="memory<0",
        ),
        pytest.param(
            dict(deadpool_memory_limit=0),
            ValueError,
            "deadpool_memory_limit must be >= 1, got 0",
            id="memory=0",
        ),
        pytest.param(
            dict(deadpool_memory_limit=1.5e7),
            TypeError,
            "deadpool_memory_limit must be an int, not float",
            id="memory=float",
        ),
        pytest.param(
            dict(deadpool_memory_limit=True),
            TypeError,
            "deadpool_memory_limit must be an int, not bool",
            id="memory=bool",
        ),
        pytest.param(
            dict(deadpool_memory_limit=2**64),
            ValueError,
            f"deadpool_memory_limit must be <= {2**63 - 1}, got {2**64}",
            id="memory-huge",
        ),
        pytest.param(
            dict(deadpool_soft_timeout=2, deadpool_timeout=1),
            ValueError,
            "deadpool_soft_timeout (2 s) must not exceed deadpool_timeout (1.0 s)",
            id="soft>hard",
        ),
        pytest.param(
            dict(deadpool_soft_timeout=-0.5),
            ValueError,
            "deadpool_soft_timeout must be >= 0, got -0.5",
            id="soft<0",
        ),
        pytest.param(
            dict(deadpool_soft_timeout="1"),
            TypeError,
            "deadpool_soft_timeout must be a number of seconds or None, not str",
            id="soft=str",
        ),
        pytest.param(
            dict(deadpool_soft_timeout=float("nan")),
            ValueError,
            "deadpool_soft_timeout must be >= 0, got nan",
            id="soft=nan",
        ),
    ],
)
def test_bad_limits_name_the_parameter_and_leave_the_pool_working(kwargs, exc_type, message):
    with pool(max_workers=1) as exe:
        with pytest.raises(exc_type) as info:
            exe.submit(tasks.square, 1, **kwargs)
        assert str(info.value) == message
        assert exe.submit(tasks.square, 3).result(timeout=30) == 9
        assert exe.get_statistics()["tasks_received"] == 1


def test_bad_limits_in_asubmit_are_the_same_errors():
    import asyncio

    async def main():
        async with deadpool.Deadpool(max_workers=1) as exe:
            with pytest.raises(ValueError, match="deadpool_memory_limit must be >= 1"):
                await exe.asubmit(tasks.square, 1, deadpool_memory_limit=-1)
            with pytest.raises(ValueError, match="must not exceed deadpool_timeout"):
                await exe.asubmit(tasks.square, 1, deadpool_soft_timeout=5, deadpool_timeout=1)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("value", "exc_type", "message"),
    [
        (-1, ValueError, "task_memory_limit_bytes must be >= 1, got -1"),
        ("1G", TypeError, "task_memory_limit_bytes must be an int, not str"),
        (1.0, TypeError, "task_memory_limit_bytes must be an int, not float"),
    ],
)
def test_bad_pool_memory_limit(value, exc_type, message):
    with pytest.raises(exc_type) as info:
        deadpool.Deadpool(task_memory_limit_bytes=value)
    assert str(info.value) == message


def test_a_soft_timeout_equal_to_the_hard_one_or_alone_is_fine():
    with pool(max_workers=1) as exe:
        both = exe.submit(tasks.square, 2, deadpool_soft_timeout=30, deadpool_timeout=30)
        alone = exe.submit(tasks.square, 3, deadpool_soft_timeout=30)
        forever = exe.submit(tasks.square, 4, deadpool_soft_timeout=float("inf"))
        assert [f.result(timeout=30) for f in (both, alone, forever)] == [4, 9, 16]
