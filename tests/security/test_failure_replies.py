"""Every decoding or validation failure gets a failure reply (issue 12, row 13),
never an unhandled exception that drops the connection without an answer."""

from __future__ import annotations

import pytest

from albatross.wire import messages as m

from system_fixtures import wait
from sec_helpers import needs_privileges, image, bare, system  # noqa: F401 - fixtures

pytestmark = needs_privileges


def ask(system, program: str, name: str, payload):
    with system.wired(program) as c:
        c.sock.settimeout(30)
        c.send(name, payload)
        return c.recv()


@pytest.mark.parametrize("level", [10, 42, -1])
@pytest.mark.parametrize("cmd", [m.BlockDump, m.OldBlockDump])
def test_bad_zlib_level_in_block_dump(system, cmd, level):
    system.client("create-block", "disk", "1")
    w = ask(system, "albatrossd", "disk", cmd(level))
    assert w is not None, "connection closed without a reply"
    assert isinstance(w.payload, m.Failure) and "invalid compression level" in w.payload.message, w
    assert "Traceback" not in system.log("albatrossd")


@pytest.mark.parametrize("level", [10, -2])
def test_bad_zlib_level_in_get(system, image, level):
    system.client("create", "u", image, "--arg=forever")
    w = ask(system, "albatrossd", "u", m.UnikernelGet(level))
    assert w is not None, "connection closed without a reply"
    assert isinstance(w.payload, m.Failure) and "invalid compression level" in w.payload.message, w
    assert "Traceback" not in system.log("albatrossd")


def test_nul_byte_in_a_stats_tap_name(system):
    w = ask(system, "albatross-stats", "u", m.StatsAdd("vm", 1, (("service", "tap\0evil"),)))
    assert w is not None, "connection closed without a reply"
    assert "Traceback" not in system.log("albatross-stats")
    assert system.alive("albatross-stats")
