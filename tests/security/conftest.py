"""Shared fixtures of the security tests (issue 12): the real daemons, as an
adversary on the same host would meet them."""

from __future__ import annotations

import os

import pytest

from solo5_fixtures import build_image
from system_fixtures import System, missing_privileges

_why = missing_privileges()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/security/" in str(item.fspath) and _why is not None:
            item.add_marker(pytest.mark.skip(reason=_why))


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "plain.hvt"
    p.write_bytes(build_image(devices=()))
    return str(p)


@pytest.fixture
def bare(tmp_path):
    """A System whose daemons the test starts itself."""
    s = System(tmp_path)
    try:
        yield s
    finally:
        s.teardown()


@pytest.fixture
def system(bare):
    bare.start_all()
    return bare
