"""Executor.map: ordered results, real batching with chunksize, timeout, errors."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests import tasks
from tests.helpers import pool, wait_until


def test_map_returns_results_in_order():
    with pool(max_workers=2) as exe:
        assert list(exe.map(tasks.square, range(30))) == [i * i for i in range(30)]


def test_map_over_several_iterables_stops_at_the_shortest():
    with pool(max_workers=2) as exe:
        assert list(exe.map(tasks.add, [1, 2, 3, 4], [10, 20, 30])) == [11, 22, 33]


def test_map_over_empty_iterable():
    with pool(max_workers=1) as exe:
        assert list(exe.map(tasks.square, [])) == []


def test_map_accepts_a_generator():
    with pool(max_workers=2) as exe:
        assert list(exe.map(tasks.square, (i for i in range(10)), chunksize=3)) == [
            i * i for i in range(10)
        ]


@pytest.mark.parametrize("chunksize", [1, 4, 7, 100])
def test_map_chunksize_results_in_order(chunksize):
    with pool(max_workers=2) as exe:
        assert list(exe.map(tasks.square, range(25), chunksize=chunksize)) == [
            i * i for i in range(25)
        ]


def test_map_chunk_runs_on_one_worker_in_order():
    with pool(max_workers=2) as exe:
        out = list(exe.map(tasks.pid_and_seq, range(12), chunksize=4))
    assert [i for i, _, _ in out] == list(range(12))
    for start in range(0, 12, 4):
        chunk = out[start : start + 4]
        assert len({pid for _, pid, _ in chunk}) == 1, f"chunk {start // 4} spread: {chunk}"
        stamps = [ts for _, _, ts in chunk]
        assert stamps == sorted(stamps), f"chunk {start // 4} did not run in order: {chunk}"


def test_map_chunksize_really_batches(tmp_path):
    # Items 0..2 form one chunk, 3..5 another. Item 0 blocks: with real batching,
    # items 1 and 2 wait behind it on the same worker while the other worker runs
    # the second chunk. Without batching the free worker would take item 1 first.
    release = tmp_path / "release"
    with pool(max_workers=2, max_backlog=10) as exe:
        results = exe.map(tasks.chunk_item, range(6), [str(tmp_path)] * 6, [0] * 6, chunksize=3)
        try:
            for i in (0, 3, 4, 5):
                wait_until(
                    lambda i=i: (tmp_path / f"started-{i}").exists(),
                    timeout=30,
                    message=f"item {i} never started",
                )
            assert not (tmp_path / "started-1").exists(), "item 1 ran outside its chunk"
            assert not (tmp_path / "started-2").exists(), "item 2 ran outside its chunk"
        finally:
            release.touch()
        out = list(results)
    assert [i for i, _, _ in out] == list(range(6))
    assert len({pid for _, pid, _ in out[:3]}) == 1
    assert len({pid for _, pid, _ in out[3:]}) == 1


def test_map_timeout_raises_timeout_error(tmp_path):
    release = tmp_path / "release"
    with pool(max_workers=1) as exe:
        try:
            results = exe.map(
                tasks.block_until_released,
                [str(tmp_path / "started")],
                [str(release)],
                timeout=0.5,
            )
            with pytest.raises(concurrent.futures.TimeoutError):
                list(results)
        finally:
            release.touch()


def test_map_propagates_a_task_exception_at_its_position():
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.raise_value_error_if_three, range(6))
        assert next(results) == 0
        assert next(results) == 1
        assert next(results) == 2
        with pytest.raises(ValueError, match="three"):
            next(results)


def test_map_chunk_with_a_failing_item(tmp_path):
    # chunksize only batches: the results are what chunksize=1 gives, so item 2
    # (in the same chunk as the failing item 3) is still delivered, and the
    # exception surfaces at item 3's position. (The stdlib loses item 2.)
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.raise_value_error_if_three, range(6), chunksize=2)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(results)
        # The pool is fine afterwards.
        assert list(exe.map(tasks.square, range(4), chunksize=2)) == [0, 1, 4, 9]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_rejects_bad_chunksize(chunksize):
    with pool(max_workers=1) as exe:
        with pytest.raises(ValueError, match="chunksize"):
            list(exe.map(tasks.square, range(3), chunksize=chunksize))
        assert list(exe.map(tasks.square, range(3))) == [0, 1, 4]
