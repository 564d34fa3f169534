"""Stress: bad input to every public call raises TypeError or ValueError that
names the offending parameter, and leaves the pool exactly as it was.

(tests/test_bad_input.py covers the common cases; this is the exhaustive
table, including values that are the right type but out of every range.)
"""

from __future__ import annotations

import math

import deadpool
import pytest

from tests import stress_tasks
from tests.helpers import pool

pytestmark = pytest.mark.stress

HUGE = 2**64  # does not fit any machine integer the core uses


def _p(param, exc, *, id, **kwargs):
    return pytest.param(kwargs, exc, param, id=id)


CONSTRUCTOR_CASES = [
    _p("max_workers", TypeError, id="max_workers=str", max_workers="4"),
    _p("max_workers", TypeError, id="max_workers=float", max_workers=2.0),
    _p("max_workers", TypeError, id="max_workers=bool", max_workers=True),
    _p("max_workers", ValueError, id="max_workers=0", max_workers=0),
    _p("max_workers", ValueError, id="max_workers=2**64", max_workers=HUGE),
    _p("min_workers", TypeError, id="min_workers=str", min_workers="1"),
    _p("min_workers", ValueError, id="min_workers<0", min_workers=-1),
    _p("min_workers", ValueError, id="min>max", max_workers=1, min_workers=2),
    _p("max_tasks_per_child", TypeError, id="mtpc=str", max_tasks_per_child="1"),
    _p("max_tasks_per_child", ValueError, id="mtpc=0", max_tasks_per_child=0),
    _p("max_tasks_per_child", ValueError, id="mtpc=2**64", max_tasks_per_child=HUGE),
    _p("max_worker_memory_bytes", TypeError, id="mwmb=str", max_worker_memory_bytes="1"),
    _p("max_worker_memory_bytes", ValueError, id="mwmb=0", max_worker_memory_bytes=0),
    _p("max_worker_memory_bytes", ValueError, id="mwmb=2**64", max_worker_memory_bytes=HUGE),
    _p("mp_context", ValueError, id="mp_context=bogus", mp_context="bogus"),
    _p("mp_context", (TypeError, ValueError), id="mp_context=int", mp_context=3),
    _p("initializer", TypeError, id="initializer=int", initializer=5),
    _p("initializer", TypeError, id="initializer=str", initializer="print"),
    _p("initargs", TypeError, id="initargs=int", initargs=5),
    _p("initargs", TypeError, id="initargs=None", initargs=None),
    _p("finalizer", TypeError, id="finalizer=str", finalizer="exit"),
    _p("finalargs", TypeError, id="finalargs=None", finalargs=None),
    _p("max_backlog", TypeError, id="max_backlog=None", max_backlog=None),
    _p("max_backlog", TypeError, id="max_backlog=float", max_backlog=1.5),
    _p("max_backlog", ValueError, id="max_backlog<0", max_backlog=-1),
    _p("max_backlog", ValueError, id="max_backlog=2**64", max_backlog=HUGE),
    _p("shutdown_wait", TypeError, id="shutdown_wait=str", shutdown_wait="no"),
    _p("shutdown_cancel_futures", TypeError, id="scf=int", shutdown_cancel_futures=1),
    _p(
        "malloc_trim_rss_memory_threshold_bytes",
        ValueError,
        id="trim<0",
        malloc_trim_rss_memory_threshold_bytes=-1,
    ),
    _p(
        "malloc_trim_rss_memory_threshold_bytes",
        TypeError,
        id="trim=str",
        malloc_trim_rss_memory_threshold_bytes="1",
    ),
    _p("propagate_environ", TypeError, id="environ=list", propagate_environ=["A=1"]),
    _p("propagate_environ", TypeError, id="environ=str", propagate_environ="A=1"),
]


@pytest.mark.parametrize(("kwargs", "exc_types", "param"), CONSTRUCTOR_CASES)
def test_constructor_rejects_bad_input_naming_the_parameter(kwargs, exc_types, param):
    with pytest.raises(exc_types) as info:
        deadpool.Deadpool(**kwargs)
    assert param in str(info.value), f"{param!r} not named in {info.value!r}"
    # Nothing was started by the failed constructor, and a good one still works.
    with pool(max_workers=1) as exe:
        assert exe.submit(stress_tasks.ident, 1).result(timeout=60) == 1


def _submit(*args, **kwargs):
    return lambda exe: exe.submit(*args, **kwargs)


def _map(*args, **kwargs):
    return lambda exe: list(exe.map(*args, **kwargs))


def _pid_callback(fn):
    def call(exe):
        fut = exe.submit(stress_tasks.ident, 0)
        try:
            fut.add_pid_callback(fn)
        finally:
            fut.result(timeout=60)

    call.good_submits = 1
    return call


ident = stress_tasks.ident
CALL_CASES = [
    pytest.param(_submit(None), TypeError, "fn", id="submit(None)"),
    pytest.param(_submit(42), TypeError, "fn", id="submit(42)"),
    pytest.param(
        _submit(ident, 1, deadpool_timeout="1"), TypeError, "deadpool_timeout", id="t=str"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_timeout=True), TypeError, "deadpool_timeout", id="t=bool"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_timeout=-0.5), ValueError, "deadpool_timeout", id="t<0"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_timeout=math.nan), ValueError, "deadpool_timeout", id="t=nan"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_timeout=1e300), ValueError, "deadpool_timeout", id="t=1e300"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_priority=None), TypeError, "deadpool_priority", id="prio=None"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_priority=True), TypeError, "deadpool_priority", id="prio=bool"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_priority=-1), ValueError, "deadpool_priority", id="prio<0"
    ),
    pytest.param(
        _submit(ident, 1, deadpool_priority=HUGE), ValueError, "deadpool_priority", id="prio=2**64"
    ),
    pytest.param(_map(None, [1]), TypeError, "fn", id="map(None)"),
    pytest.param(_map(ident, [1], chunksize=0), ValueError, "chunksize", id="map-chunksize=0"),
    pytest.param(_map(ident, [1], chunksize=None), TypeError, "chunksize", id="map-chunksize=None"),
    pytest.param(_map(ident, [1], buffersize=0), ValueError, "buffersize", id="map-buffersize=0"),
    pytest.param(_map(ident, [1], buffersize=-1), ValueError, "buffersize", id="map-buffersize<0"),
    pytest.param(
        _map(ident, [1], buffersize="1"), TypeError, "buffersize", id="map-buffersize=str"
    ),
    pytest.param(
        _map(ident, [1], buffersize=1.0), TypeError, "buffersize", id="map-buffersize=float"
    ),
    pytest.param(_map(ident, [1], timeout="1"), TypeError, "timeout", id="map-timeout=str"),
    pytest.param(_map(ident, [1], timeout=-1), ValueError, "timeout", id="map-timeout<0"),
    pytest.param(_pid_callback(None), TypeError, "fn", id="add_pid_callback(None)"),
    pytest.param(_pid_callback(42), TypeError, "fn", id="add_pid_callback(42)"),
]


@pytest.mark.parametrize(("call", "exc_types", "param"), CALL_CASES)
def test_calls_reject_bad_input_naming_the_parameter_and_the_pool_is_unharmed(
    call, exc_types, param
):
    with pool(max_workers=1) as exe:
        assert exe.submit(stress_tasks.ident, "before").result(timeout=60) == "before"
        received = exe.get_statistics()["tasks_received"]
        with pytest.raises(exc_types) as info:
            call(exe)
        assert param in str(info.value), f"{param!r} not named in {info.value!r}"
        # The pool is unharmed: it still runs tasks, and the bad call queued nothing
        # (the pid-callback cases submit one good task themselves).
        extra = getattr(call, "good_submits", 0)
        assert exe.get_statistics()["tasks_received"] == received + extra
        futures = [exe.submit(stress_tasks.tagged, i) for i in range(5)]
        assert [f.result(timeout=60)[0] for f in futures] == list(range(5))


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        pytest.param(dict(wait="no"), "wait", id="wait=str"),
        pytest.param(dict(cancel_futures="yes"), "cancel_futures", id="cancel_futures=str"),
        pytest.param(dict(cancel_futures=None), "cancel_futures", id="cancel_futures=None"),
    ],
)
def test_shutdown_rejects_non_bools_and_the_pool_stays_open(kwargs, param):
    """shutdown(wait="no") would silently wait; the constructor already refuses
    non-bools for shutdown_wait / shutdown_cancel_futures."""
    with pool(max_workers=1) as exe:
        with pytest.raises(TypeError) as info:
            exe.shutdown(**kwargs)
        assert param in str(info.value), f"{param!r} not named in {info.value!r}"
        # A refused shutdown did not half-close the pool.
        assert exe.submit(stress_tasks.ident, "open").result(timeout=60) == "open"


@pytest.mark.parametrize("timeout", [1e12, 1e18, 1e19, 1.8e19])
def test_huge_timeouts_never_break_the_pool(timeout):
    """A timeout of thousands of years is either accepted (and the task runs
    normally) or refused with a ValueError naming deadpool_timeout; either way
    the pool goes on."""
    with pool(max_workers=1) as exe:
        try:
            fut = exe.submit(stress_tasks.ident, "long", deadpool_timeout=timeout)
        except ValueError as exc:
            assert "deadpool_timeout" in str(exc), repr(exc)
        else:
            # (A broken pool never answers: 20 s is ample for tasks of microseconds.)
            assert fut.result(timeout=20) == "long"
        futures = [exe.submit(stress_tasks.tagged, i) for i in range(5)]
        assert [f.result(timeout=20)[0] for f in futures] == list(range(5))
