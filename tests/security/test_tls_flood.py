"""Issue 12 row 5: 2,000 TCP connections to the TLS endpoint that never
handshake.  Before: a thread each (1,021 threads), select() refusing fds
above 1023 so that legitimate clients failed, and under an open file limit
of 1,024 an accept loop spinning on EMFILE (518,000 log lines in 7 s).
Now: the connections are held by one event loop up to the caps, the excess
is refused at once, legitimate clients are served, and the log stays quiet.
Against the real endpoint process and stand-in daemons."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time

import pytest

from tls_helpers import EndpointProcess, connect_from, raise_nofile, state, wait_for

FLOOD = 2000
FLOOD_SOURCE = "127.0.0.2"  # loopback is a /8: the flood comes from another address than the clients


@pytest.fixture
def flood_sockets():
    raise_nofile(FLOOD + 500)
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def counts(socks) -> dict[str, int]:
    """How many are still open, and how many were refused or closed by the endpoint."""
    out = {"open": 0, "gone": 0}
    for s in socks:
        out["open" if state(s) == "open" else "gone"] += 1
    return out


def test_flood_from_one_address_is_capped_and_clients_elsewhere_are_served(flood_sockets):
    ep = EndpointProcess()  # the defaults: 512 connections, 64 per address
    try:
        base = ep.status()
        for _ in range(FLOOD):
            flood_sockets.append(connect_from(FLOOD_SOURCE, ep.port))
        # the endpoint holds exactly its per-address cap and resets the rest at once
        seen = wait_for(lambda: (c := counts(flood_sockets))["gone"] >= FLOOD - 64 and c, 30,
                        "the excess to be refused")
        assert seen["open"] == 64
        during = ep.status()
        assert during["Threads"] <= base["Threads"] + 2  # no thread per connection
        assert during["fds"] <= base["fds"] + 64 + 8
        # legitimate clients from another address are all served during the flood
        assert [ep.info() for _ in range(7)] == [0] * 7
        assert ep.status()["Threads"] <= base["Threads"] + 2
        log = ep.log()
        assert log.count("connection limit reached") == 1  # one line, not one per refusal
        assert "64 connections from 127.0.0.2" in log
    finally:
        ep.close()


def test_flood_under_open_file_limit_1024(flood_sockets):
    """LimitNOFILE=1024 (systemd's default): the cap is lowered to fit, the
    excess is refused instead of EMFILE, the log stays short, and once the
    flood's handshakes time out the slots are free for legitimate clients."""
    # the handshake timeout must outlast opening the flood on a loaded machine
    ep = EndpointProcess("--max-connections-per-address", "0", "--handshake-timeout", "20", nofile=1024)
    try:
        assert "--max-connections lowered from 512 to 480 (open file limit 1024)" in ep.log()
        base = ep.status()
        for _ in range(FLOOD):
            flood_sockets.append(connect_from(FLOOD_SOURCE, ep.port))
        seen = wait_for(lambda: (c := counts(flood_sockets))["gone"] >= FLOOD - 480 and c, 30,
                        "the excess to be refused")
        assert seen["open"] == 480
        during = ep.status()
        assert during["Threads"] <= base["Threads"] + 2
        assert during["fds"] < 1024
        # all slots are taken by the flood: a legitimate client is refused at once, not left hanging
        probe = connect_from("127.0.0.1", ep.port)
        try:
            assert wait_for(lambda: state(probe) != "open" and state(probe), 10, "the probe to be refused")
        finally:
            probe.close()
        # the flood's handshakes time out (20 s here); then legitimate clients are served
        wait_for(lambda: counts(flood_sockets)["open"] == 0, 90, "the handshake timeout")
        assert [ep.info() for _ in range(7)] == [0] * 7
        log = ep.log()
        assert "EMFILE" not in log and "Too many open files" not in log
        assert log.count("connection limit reached") == 1
        # one line per timed-out handshake at most, rate limited: far fewer than the connections
        assert len(log.splitlines()) < 150
    finally:
        ep.close()


def test_emfile_in_accept_pauses_and_logs_once(caplog):
    """When accept() itself fails for want of descriptors, the waiting client
    is refused with the spare descriptor, the loop pauses accepting (0.1 s)
    instead of spinning, logs one line, and then serves again."""
    from albatross.daemons.tls_endpoint import Endpoint
    from albatross.tls.chain import server_context
    from fake_daemons import Pki

    class Listener:
        """A real listening socket whose first ``failures`` accept() calls fail with EMFILE."""

        def __init__(self, failures: int):
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.failures = failures
            self.calls: list[float] = []

        def fileno(self):
            return self.sock.fileno()

        def setblocking(self, flag):
            self.sock.setblocking(flag)

        def accept(self):
            self.calls.append(time.monotonic())
            if self.failures > 0:
                self.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return self.sock.accept()

    ca = Pki()
    ep = Endpoint(server_context(ca.ca, [ca.server], ca.server_key), "/nonexistent")
    # each attempt is accept() + accept() with the spare descriptor: the 8th call succeeds
    listener = Listener(failures=7)
    first = socket.create_connection(listener.sock.getsockname())
    stop = threading.Event()
    caplog.set_level(logging.WARNING)
    loop = threading.Thread(target=ep.serve_forever, args=(listener, stop), daemon=True)
    loop.start()
    try:
        first.settimeout(10)
        assert first.recv(1) == b""  # refused, not left waiting in the backlog
        assert len(listener.calls) == 8
        assert listener.calls[7] - listener.calls[0] >= 0.27  # three pauses of 0.1 s, no spinning
        assert ep.connections() == 0
        second = socket.create_connection(listener.sock.getsockname())
        wait_for(lambda: ep.connections() == 1, 10, "the next connection to be accepted")
        lines = [r.getMessage() for r in caplog.records if "accept failed" in r.getMessage()]
        assert len(lines) == 1 and "Too many open files" in lines[0]
        second.close()
    finally:
        stop.set()
        loop.join(5)
        first.close()
        listener.sock.close()
