"""Values from a path with no policy (issue 12, row 11): memory 2^62 or a
negative memory used to be accepted there, poisoning the accounting so that
every later root-level create was refused.  Now the daemon refuses absurd
values wherever they come from (raw wire messages, bypassing the client),
and the accounting stays intact."""

from __future__ import annotations

import re

import pytest

from albatross.core import UnikernelConfig
from albatross.wire import messages as m

from sec_helpers import needs_privileges, image, bare, system  # noqa: F401 - fixtures

pytestmark = needs_privileges


def ask(system, name: str, payload):
    with system.wired("albatrossd") as c:
        c.sock.settimeout(30)
        c.send(name, payload)
        return c.recv()


@pytest.mark.parametrize("memory,message", [
    ((1 << 62) - 1, "is absurd"),
    (-5, "memory must be at least 1 MB"),
])
def test_absurd_memory_where_no_policy_applies(system, image, memory, message):
    img = open(image, "rb").read()
    w = ask(system, "nopolicy:deep:x", m.UnikernelCreate(UnikernelConfig(image=img, memory=memory)))
    assert w is not None, "connection closed without a reply"
    assert isinstance(w.payload, m.Failure) and message in w.payload.message, w
    assert "nopolicy" not in system.client("info")
    # the accounting is intact: a root-level create within the host's policy still works
    system.client("create", "after", image, "--mem", "32", "--arg=forever")
    assert ":after" in re.findall(r"\[unikernel: ([^\]]+)\]", system.client("info"))
