"""Fixtures of the interop suite (see interop_harness.py)."""

from __future__ import annotations

import os

import pytest

from interop.interop_harness import Host, interop_missing
from system_fixtures import delete_netns, make_netns, missing_privileges

HERE = os.path.dirname(os.path.abspath(__file__))

#: ALBATROSS_INTEROP_WRAP="albatrossd=/path/to/wrapper" runs a daemon through a wrapper
#: (tests/interop/corrupt_reply.py shows that the suite fails when a reply is corrupted)
WRAP = dict(kv.split("=", 1) for kv in os.environ.get("ALBATROSS_INTEROP_WRAP", "").split(",") if "=" in kv)


def pytest_collection_modifyitems(config, items):
    why = interop_missing("hvt")
    if why is None:
        return
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.skip(reason=f"interop: {why}"))


@pytest.fixture
def make_host(tmp_path):
    hosts: list[Host] = []

    def make(name: str = "h", netns: str | None = None) -> Host:
        h = Host(tmp_path / name, wrap=WRAP, netns=netns)
        hosts.append(h)
        return h

    try:
        yield make
    finally:
        for h in reversed(hosts):
            h.teardown()


@pytest.fixture
def netns():
    why = missing_privileges(netns=True)
    if why is not None:
        pytest.skip(why)
    name = make_netns("service")
    try:
        yield name
    finally:
        delete_netns(name)
