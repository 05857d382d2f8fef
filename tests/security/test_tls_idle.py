"""Issue 12 row 7: an authenticated client that goes silent after the
handshake held a thread and a descriptor forever.  Now it is dropped after
--idle-timeout, whether the endpoint waits for its upload or for it to read
what is sent to it; a quiet stream from a daemon (console) is not idleness.
Against the real endpoint process and stand-in daemons."""

from __future__ import annotations

import os
import socket
import struct
import threading

from albatross.core import Ptime, UnikernelConfig
from albatross.tls.chain import TlsStream, client_context
from albatross.wire import Wire, decode_wire, encode_wire
from albatross.wire import messages as m

from tls_helpers import EndpointProcess, wait_for

IDLE = 2


def authenticated(ep: EndpointProcess, cmd: m.Cmd, cn: str = "hello") -> TlsStream:
    leaf, key = ep.ca.leaf(cn, cmd, *ep.user)
    sock = socket.create_connection(("127.0.0.1", ep.port))
    tls = TlsStream(client_context([leaf, ep.user[0]], key, [ep.ca.ca]), sock, server=False)
    tls.handshake(10)
    return tls


def closed_by_endpoint(tls: TlsStream, within: float) -> bool:
    """True when the endpoint closes the connection within ``within`` seconds."""
    try:
        while True:
            data = tls.recv(65536, timeout=within)
            if not data:
                return True
    except Exception as e:  # noqa: BLE001 - a reset is a close too
        return type(e).__name__ != "TlsTimeout"


def test_silent_client_after_handshake_is_dropped():
    ep = EndpointProcess("--idle-timeout", str(IDLE))
    try:
        base = ep.status()
        # a create whose image is to be streamed, and a block set: nothing ever comes
        silent = [authenticated(ep, m.UnikernelCreate(UnikernelConfig(memory=32))),
                  authenticated(ep, m.BlockSet(False), cn="disk")]
        wait_for(lambda: ep.status()["Threads"] == base["Threads"] + 2, 10, "both clients being served")
        for tls in silent:
            assert closed_by_endpoint(tls, IDLE + 20)
            tls.close()
        wait_for(lambda: ep.status()["Threads"] == base["Threads"], 10, "their threads to end")
        assert ep.log().count(f"client sent nothing for {IDLE:g} s") == 2
        assert not any(isinstance(w.payload, m.UnikernelCreate) for w in ep.fake.commands())
        assert ep.info() == 0
    finally:
        ep.close()


class EndlessConsole:
    """A console daemon stand-in that streams console data until its peer stops reading."""

    def __init__(self, path: str):
        if os.path.exists(path):
            os.unlink(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.ended = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            head = conn.recv(4)
            body = b""
            while len(body) < struct.unpack(">I", head)[0]:
                body += conn.recv(65536)
            request = decode_wire(body)
            data = encode_wire(Wire(request.header, m.ConsoleData(Ptime(0, 0), b"x" * 4000)))
            try:
                while True:
                    conn.sendall(struct.pack(">I", len(data)) + data)
            except OSError:
                self.ended.set()


def test_client_that_stops_reading_a_console_stream_is_dropped():
    ep = EndpointProcess("--idle-timeout", str(IDLE))
    try:
        console = EndlessConsole(ep.path("util/console.sock"))
        tls = authenticated(ep, m.ConsoleSubscribe(count=10))
        # the client reads nothing: the endpoint's writes stall, then it gives up
        assert console.ended.wait(IDLE + 30), "the endpoint kept the stalled subscriber"
        assert f"client read nothing for {IDLE:g} s" in ep.log()
        tls.close()
        assert ep.info() == 0
    finally:
        ep.close()
