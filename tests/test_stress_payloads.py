"""Stress: a 2 GiB argument and a 2 GiB result cross the pipes intact.

Frames carry 64-bit lengths; these sizes are past 2**31, where a signed 32-bit
length would wrap. Each direction needs about 10 GiB at its peak (the data,
its pickle, the core's copy, and the same again in the worker), so the tests
skip on a machine without that much memory available.
"""

from __future__ import annotations

import gc

import pytest

from tests import stress_tasks
from tests.helpers import pool

pytestmark = pytest.mark.stress

GiB = 1024**3
SIZE = 2 * GiB + 4099  # past 2**31, and not a multiple of any buffer size
NEEDED = 12 * GiB


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


needs_memory = pytest.mark.skipif(
    _available() < NEEDED,
    reason=f"needs {NEEDED // GiB} GiB of available memory for 2 GiB payloads",
)


@needs_memory
def test_two_gib_argument_arrives_intact():
    with pool(max_workers=1, max_backlog=1) as exe:
        data = stress_tasks.make_payload(SIZE)
        expected = stress_tasks.checksum(data)
        fut = exe.submit(stress_tasks.checksum, data)
        del data
        gc.collect()
        assert fut.result(timeout=300) == expected
        assert expected[0] == SIZE
        assert exe.submit(stress_tasks.ident, "after").result(timeout=60) == "after"


@needs_memory
def test_two_gib_result_arrives_intact():
    with pool(max_workers=1, max_backlog=1) as exe:
        # Computed in the worker, so that this process holds one copy at a time.
        expected = exe.submit(stress_tasks.payload_checksum, SIZE).result(timeout=300)
        assert expected[0] == SIZE
        data = exe.submit(stress_tasks.make_payload_in_worker, SIZE).result(timeout=300)
        assert type(data) is bytes
        assert stress_tasks.checksum(data) == expected
        del data
        assert exe.submit(stress_tasks.ident, "after").result(timeout=60) == "after"
