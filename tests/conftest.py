"""Suite-wide fixtures: every test must leave no worker process behind."""

from __future__ import annotations

import os

import pytest

from tests import helpers


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail the test if it leaves any new descendant process but the zygote."""
    before = set(helpers.descendants(os.getpid()))
    yield
    helpers.assert_no_leftovers(before)
