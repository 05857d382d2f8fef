"""Local sockets that survive a flood (issue 12, rows 8, 9 and 10): a peer
that stalls never holds albatrossd's lock nor blocks a unikernel, and running
out of file descriptors is survived with one log line."""

from __future__ import annotations

import os
import resource
import socket
import threading

import pytest

from albatross.wire import messages as m

from system_fixtures import wait
from sec_helpers import needs_privileges, image, bare, system  # noqa: F401 - fixtures

pytestmark = needs_privileges


# ------------------------------------------------------------------ row 8

def test_silent_stats_initial_peer_does_not_freeze_albatrossd(system, image):
    # any member of the group may say it is albatross-stats, then never answer (the real
    # one is stopped first, or it would take the channel back when it reconnects)
    system.stop("albatross-stats")
    silent = system.wired("albatrossd")
    silent.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.send(":", m.StatsInitial())
    assert silent.recv().payload == m.Empty()
    try:
        # a create sends Stats_add to it; the lock must not be held waiting for the answer
        out = system.client("create", "u", image, "--arg=forever")
        assert "created" in out
        assert "[unikernel: :u]" in system.client("info")
        wait(lambda: "error while writing to stats" in system.log("albatrossd"), "the silent peer to be dropped",
             timeout=30)
        system.client("destroy", "u")
    finally:
        silent.close()


def test_reply_to_a_client_that_does_not_read_is_not_awaited_under_the_lock(system, image):
    # a client that asks for a large answer and never reads it
    big = image + "-big"
    with open(image, "rb") as src, open(big, "wb") as dst:
        dst.write(src.read() + os.urandom(8 << 20))
    system.client("create", "u", big, "--arg=forever")
    lazy = system.wired("albatrossd")
    lazy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.send("u", m.UnikernelGet(0))
    try:
        assert "[unikernel: :u]" in system.client("info")
        system.client("create", "v", image, "--arg=forever")
    finally:
        lazy.close()


# ------------------------------------------------------------------ row 9

@pytest.fixture
def soft_nofile_1024():
    """The daemons started meanwhile inherit systemd's default: soft 1024, hard much higher."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip(f"hard limit of open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def idle_connections(path: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)  # blocking: waits while the backlog is full
        out.append(s)
    return out


def test_idle_connections_under_the_default_soft_limit(bare, image, soft_nofile_1024):
    bare.start_all()
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    idle = []
    try:
        idle += idle_connections(bare.sock("albatrossd"), 1100)
        idle += idle_connections(bare.sock("albatross-console"), 1100)
        out = bare.client("create", "u", image, "--arg=forever")
        assert "created" in out
        assert "[unikernel: :u]" in bare.client("info")
    finally:
        for s in idle:
            s.close()
    for program in ("albatrossd", "albatross-console"):
        assert "cannot accept connections" not in bare.log(program)
        assert "Traceback" not in bare.log(program)


def test_out_of_descriptors_is_one_log_line_and_recovers(bare, image):
    """With a hard limit too low to raise, accept fails (EMFILE): reported once, served again after."""
    bare.start_console()
    bare.start_albatrossd()
    resource.prlimit(bare.procs["albatrossd"].pid, resource.RLIMIT_NOFILE, (256, 256))
    idle = []
    try:
        idle += idle_connections(bare.sock("albatrossd"), 300)
        wait(lambda: "cannot accept connections" in bare.log("albatrossd"), "albatrossd to run out of descriptors")
        # a couple of retries later (asyncio pauses the listening socket for a second each time)
        more = idle_connections(bare.sock("albatrossd"), 5)
        idle += more
    finally:
        for s in idle:
            s.close()
    bare.client("create", "u", image, "--arg=forever")  # served again
    log = bare.log("albatrossd")
    assert "Traceback" not in log
    assert log.count("cannot accept connections") <= 3, log[-3000:]
    assert bare.alive("albatrossd")


# ------------------------------------------------------------------ row 10

def test_stalled_console_subscribers_hold_a_unikernel_back_briefly(system, image):
    stalled = []
    for _ in range(4):
        s = system.wired("albatross-console")
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.send("loud", m.ConsoleSubscribe(count=0))
        assert s.recv().payload == m.String("waiting for VM")
        stalled.append(s)
    try:
        system.client("create", "loud", image, "--arg=spam 60000", "--arg=print done", "--arg=forever")
        reader = system.wired("albatross-console")
        reader.sock.settimeout(60)
        reader.send("loud", m.ConsoleSubscribe(count=0))
        stamps = []
        while True:
            w = reader.recv()
            assert w is not None
            if isinstance(w.payload, m.ConsoleData):
                stamps.append(w.payload.timestamp.to_float())
                if w.payload.line == b"done":
                    break
        reader.close()
    finally:
        for s in stalled:
            s.close()
    log = system.log("albatross-console")
    assert log.count("took nothing for") >= 4
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # waited for one after another (5 s each) the four would hold it back 20 s
    assert max(gaps) < 10, f"the unikernel's console was held back {max(gaps):.1f} s"
