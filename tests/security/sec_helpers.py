"""Fixtures and helpers of the security tests (issue 12): the real daemons, as
an adversary on the same host would meet them.  (Not a conftest.py: the other
test modules import ``conftest`` by name.)"""


from __future__ import annotations

import os

import pytest

from solo5_fixtures import build_image
from system_fixtures import System, missing_privileges

_why = missing_privileges()

#: every security test needs the real daemons: root, taskset, ip
needs_privileges = pytest.mark.skipif(_why is not None, reason=_why or "")


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

def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def nobody() -> tuple[int, int]:
    """A less privileged uid/gid (an attacker's)."""
    return 65534, 65534
