"""Soft timeouts: `submit(..., deadpool_soft_timeout=...)` raises
`deadpool.SoftTimeoutError` inside the task at its soft deadline. The
measured delivery latency is printed (run with -s), never asserted."""

from __future__ import annotations

import asyncio

import deadpool
import pytest

from tests import limit_tasks
from tests.helpers import pool

SOFT = 0.2
LONG = 60.0
DEADLINE = 90


def test_a_sleeping_task_gets_it_promptly_and_its_cleanup_stands():
    with pool(max_workers=1) as exe:
        fut = exe.submit(
            limit_tasks.sleep_through_soft_timeout,
            LONG,
            deadpool_soft_timeout=SOFT,
            deadpool_timeout=LONG,
        )
        outcome, ran_for = fut.result(timeout=DEADLINE)
        print(f"\nsoft timeout {SOFT} s: arrived after {ran_for:.4f} s ({ran_for - SOFT:+.4f} s)")
        assert outcome == "cleaned up"
        assert ran_for >= SOFT


def test_uncaught_it_fails_the_task_and_the_worker_lives_on():
    with pool(max_workers=1) as exe:
        fut = exe.submit(limit_tasks.read_soft_timeout_then_sleep, LONG, deadpool_soft_timeout=SOFT)
        exc = fut.exception(timeout=DEADLINE)
        assert isinstance(exc, deadpool.SoftTimeoutError), repr(exc)
        assert isinstance(exc, deadpool.TimeoutError), "caught where timeouts are"
        assert exc.reason is None and exc.pid is None, "its worker did not end"
        assert exe.submit(limit_tasks.pid).result(timeout=DEADLINE) == fut.pid


def test_an_exception_raised_while_cleaning_up_stands():
    with pool(max_workers=1) as exe:
        fut = exe.submit(limit_tasks.raise_after_soft_timeout, LONG, deadpool_soft_timeout=SOFT)
        with pytest.raises(ValueError, match="cleaned up, then failed"):
            fut.result(timeout=DEADLINE)


def test_a_task_that_ignores_it_is_killed_at_the_hard_deadline():
    with pool(max_workers=1) as exe:
        fut = exe.submit(
            limit_tasks.ignore_soft_timeout, LONG, deadpool_soft_timeout=SOFT, deadpool_timeout=1.0
        )
        exc = fut.exception(timeout=DEADLINE)
        assert isinstance(exc, deadpool.TimeoutError) and exc.reason == "timeout", repr(exc)


needs_libcrypt = pytest.mark.skipif(
    limit_tasks.crypt_library() is None, reason="needs libcrypt for a long C call"
)


@needs_libcrypt
def test_c_code_holding_the_gil_gets_it_when_it_returns_to_python():
    with pool(max_workers=1) as exe:
        fut = exe.submit(limit_tasks.hold_gil_in_c, 2_000_000, deadpool_soft_timeout=0.05)
        outcome, ran_for = fut.result(timeout=DEADLINE)
        print(f"\nsoft timeout 0.05 s in a C call holding the GIL: arrived after {ran_for:.3f} s")
        assert outcome == "cleaned up"


@needs_libcrypt
def test_c_code_holding_the_gil_is_still_killed_at_the_hard_deadline():
    with pool(max_workers=1) as exe:
        fut = exe.submit(
            limit_tasks.hold_gil_in_c,
            999_999_999,
            deadpool_soft_timeout=SOFT,
            deadpool_timeout=1.0,
        )
        exc = fut.exception(timeout=DEADLINE)
        assert isinstance(exc, deadpool.TimeoutError), repr(exc)
        assert not isinstance(exc, deadpool.SoftTimeoutError)
        assert (exc.reason, exc.pid) == ("timeout", fut.pid)


def test_the_timer_never_reaches_the_next_task():
    with pool(max_workers=1) as exe:
        quick = exe.submit(limit_tasks.pid, deadpool_soft_timeout=SOFT)
        pid = quick.result(timeout=DEADLINE)
        later = exe.submit(limit_tasks.read_soft_timeout_then_sleep, SOFT * 3)
        assert later.result(timeout=DEADLINE) == "undisturbed"
        assert later.pid == pid, "same worker, no stray SIGALRM"


def test_asubmit_takes_a_soft_timeout():
    async def main():
        async with deadpool.Deadpool(max_workers=1) as exe:
            fut = await exe.asubmit(
                limit_tasks.sleep_through_soft_timeout, LONG, deadpool_soft_timeout=SOFT
            )
            return await asyncio.wait_for(fut, DEADLINE)

    assert asyncio.run(main())[0] == "cleaned up"


def test_a_soft_timeout_of_zero_fires_at_once():
    # The task may not even reach its first line: the error is the outcome.
    with pool(max_workers=1) as exe:
        fut = exe.submit(limit_tasks.read_soft_timeout_then_sleep, LONG, deadpool_soft_timeout=0)
        assert isinstance(fut.exception(timeout=DEADLINE), deadpool.SoftTimeoutError)
        assert exe.submit(limit_tasks.pid).result(timeout=DEADLINE) == fut.pid
