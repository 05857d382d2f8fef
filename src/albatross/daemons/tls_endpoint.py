"""albatross-tls-endpoint: remote access over mutually authenticated TLS 1.3
(behaviour.md §6, wire.md §6, certificates.md §3).

One command per connection: the client's certificate chain is validated
against the single CA, the albatross processing of the chain gives the
name, the policies and the command, the policies are (re)installed in
albatrossd, the command is proxied to its daemon and the replies are sent
back with rewritten headers.

Connections are accepted and their TLS handshakes run in one event loop
(epoll/poll, no select() limit), with a cap on concurrent connections (in
total and per source address), a handshake deadline, and a cap on the bytes
an unauthenticated peer can make us buffer (per connection and in total: a
client sending more than a small handshake waits for one of a few large
reservations).  Only an authenticated client gets a thread of its own, and
it is dropped when it stops reading or sending for the idle timeout.  See
:class:`Limits` and the README's "TLS endpoint limits".
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import ipaddress
import itertools
import logging
import os
import resource
import select
import selectors
import socket
import sys
import threading
import time

import click

from .. import pretty
from ..errors import AlbatrossError
from ..policy.names import Name
from ..tls import pki
from ..tls.chain import ChainError, Request, TlsStream, TlsTimeout, process_chain, server_context
from ..wire import END, FrameReader, Header, Wire, decode_wire, encode_wire, endpoint, frame
from ..wire import messages as m
from ..wire.framing import DEFAULT_MAX_SIZE, END_CHUNK
from .common import StartupError, daemon_options, run_cli, sd_notify, setup_logging, socket_path, systemd_socket

log = logging.getLogger("albatross.tls_endpoint")


INTERNAL_ERROR = 125
HANDSHAKE_TIMEOUT = 10.0
DEFAULT_PORT = 1025
SMALL_HANDSHAKE = 64 * 1024  #: what any peer may send before authentication without a reservation
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one peer, and all peers together, may hold of the endpoint."""

    max_connections: int = 512          #: concurrent connections (handshaking or served)
    max_per_address: int = 64           #: of them from one IPv4 address or IPv6 /64 (0: no limit)
    handshake_timeout: float = HANDSHAKE_TIMEOUT  #: seconds from accept to an authenticated client
    idle_timeout: float = 120.0         #: seconds an authenticated client may stall a read or write
    max_chain: int = pki.MAX_CERT_SIZE + 65536  #: bytes of a client's certificate message
    handshake_memory: int = 64 * MiB    #: bytes all large handshakes together may buffer

    @property
    def per_connection(self) -> int:
        """Bytes one peer may send before it is authenticated."""
        return self.max_chain + SMALL_HANDSHAKE

    @property
    def large_slots(self) -> int:
        """Handshakes that may exceed SMALL_HANDSHAKE at the same time (at least one)."""
        return max(1, self.handshake_memory // (self.per_connection - SMALL_HANDSHAKE))


class RateLimitedLog:
    """At most ``burst`` lines, then ``rate`` per second; says how many were dropped."""

    def __init__(self, rate: float = 5.0, burst: int = 50):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.dropped = 0
        self.lock = threading.Lock()

    def __call__(self, level: int, fmt: str, *args) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1:
                self.dropped += 1
                return
            self.tokens -= 1
            dropped, self.dropped = self.dropped, 0
        if dropped:
            fmt += f" ({dropped} similar lines not logged)"
        log.log(level, fmt, *args)


# -------------------------------------------------------- daemon connection

class DaemonConn:
    """A blocking framed connection to albatrossd/console/stats."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = FrameReader()

    @classmethod
    def connect(cls, path: str) -> "DaemonConn":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def write_wire(self, w: Wire) -> None:
        self.sock.sendall(frame(encode_wire(w)))

    def write_raw(self, data: bytes) -> None:
        self.sock.sendall(frame(data) if data else END_CHUNK)

    def read_wire(self, client: TlsStream | None = None) -> Wire | None:
        """The next message; None at EOF, end marker, or when ``client`` went away
        while waiting.  DecodeError/FrameError on garbage."""
        while True:
            body = self.reader.next_frame()
            if body is END:
                return None
            if body is not None:
                return decode_wire(body)
            if client is not None and _client_gone(self.sock, client):
                return None
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self.reader.feed(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _client_gone(daemon: socket.socket, client: TlsStream) -> bool:
    """Wait until the daemon has data; True if the TLS client closed first."""
    p = select.poll()
    p.register(daemon, select.POLLIN)
    p.register(client.sock, select.POLLIN)
    while True:
        ready = dict(p.poll())
        if ready.get(daemon.fileno(), 0):
            return False
        try:
            if client.recv(4096, timeout=0) == b"":
                return True
        except TlsTimeout:
            pass
        except Exception:  # noqa: BLE001 - any TLS error means the client is gone
            return True


# ----------------------------------------------------------------- endpoint

def _streams_data(cmd: m.Cmd) -> bool:
    """Commands followed by raw chunks from the TLS client (wire.md §6.1 step 7)."""
    return (isinstance(cmd, m.BlockSet)
            or (isinstance(cmd, m.OldBlockAdd) and cmd.data == b"")
            or (isinstance(cmd, m.OldBlockSet) and cmd.data == b""))


class _Pending:
    """A connection in its TLS handshake, owned by the event loop."""

    __slots__ = ("tls", "peer", "source", "deadline", "large", "waiting")

    def __init__(self, tls: TlsStream, peer: str, source: str, deadline: float):
        self.tls, self.peer, self.source, self.deadline = tls, peer, source, deadline
        self.large = False    # holds one of the large-handshake reservations
        self.waiting = False  # paused until a reservation is free


class Endpoint:
    """The per-connection logic, independent of how connections arrive."""

    def __init__(self, ctx, tmpdir: str, handshake_timeout: float | None = None,
                 max_image: int = DEFAULT_MAX_SIZE, limits: Limits | None = None):
        limits = limits or Limits()
        if handshake_timeout is not None:
            limits = dataclasses.replace(limits, handshake_timeout=handshake_timeout)
        self.limits = limits
        self.ctx = ctx
        self.tmpdir = tmpdir
        self.handshake_timeout = limits.handshake_timeout
        self.idle_timeout = limits.idle_timeout
        self.max_image = max_image
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._log_failure = RateLimitedLog()
        self._log_refusal = RateLimitedLog(rate=1 / 60, burst=1)
        self._log_accept = RateLimitedLog(rate=1 / 60, burst=1)
        # connection accounting, shared with the session threads
        self._active = 0
        self._per_source: collections.Counter[str] = collections.Counter()

    def next_sequence(self) -> int:
        """The process-global sequence counter (starts at 0)."""
        with self._lock:
            return next(self._counter)

    # -- one connection ----------------------------------------------------
    def serve_connection(self, sock: socket.socket, peer: str = "") -> None:
        """Handshake, handle, close; logs problems, never raises (inetd mode)."""
        tls = TlsStream(self.ctx, sock, server=True)
        try:
            tls.handshake(self.handshake_timeout, max_received=self.limits.per_connection)
        except Exception as e:  # noqa: BLE001 - any handshake problem closes this connection only
            log.error("error establishing TLS connection%s: %s", f" from {peer}" if peer else "", _reason(e))
            tls.close()
            return
        self.serve_authenticated(tls)

    def serve_authenticated(self, tls: TlsStream) -> None:
        try:
            self.handle(tls)
        except Exception as e:  # noqa: BLE001 - logged, connection closed, others unaffected
            log.error("error while handle() %s", _reason(e))
        finally:
            tls.close()

    def handle(self, tls: TlsStream) -> None:
        try:
            req = process_chain(tls.peer_chain())
        except ChainError as e:
            log.error("failed to handle TLS connection %s", e.message)
            return
        cmd = req.command
        if isinstance(cmd, m.UnikernelCreate) and cmd.config.image == b"":
            image = self.read_image(tls)
            if image is None:
                raise AlbatrossError("error retrieving unikernel image")
            cmd = dataclasses.replace(cmd, config=dataclasses.replace(cmd.config, image=image))
        log.info("%s: %s", req.name, pretty.command(cmd))
        reply = self.proxy(tls, req, cmd)
        try:
            tls.write_chunk(encode_wire(Wire(Header(req.name, 0, req.version), reply)), self.idle_timeout)
        except Exception as e:  # noqa: BLE001 - the client went away (a console or stats client's normal end)
            log.debug("%s: final reply not delivered: %s", req.name, _reason(e))

    def _read_client_chunk(self, tls: TlsStream):
        """The next chunk from the client, None at EOF or when it stalls for the idle timeout."""
        try:
            return tls.read_chunk(timeout=self.idle_timeout)
        except TlsTimeout:
            log.warning("client sent nothing for %g s: closing the connection", self.idle_timeout)
            return None

    def read_image(self, tls: TlsStream) -> bytes | None:
        """Chunks until an empty one; None on EOF or an oversized image."""
        buf = bytearray()
        while True:
            chunk = self._read_client_chunk(tls)
            if chunk is None:
                return None
            if chunk is END:
                return bytes(buf)
            buf += chunk
            if len(buf) > self.max_image:
                log.error("streamed image exceeds %d bytes", self.max_image)
                return None

    def proxy(self, tls: TlsStream, req: Request, cmd: m.Cmd):
        """Run ``cmd`` at its daemon; the payload of the final reply."""
        service, mode = endpoint(cmd)
        path = socket_path(self.tmpdir, service)
        try:
            daemon = DaemonConn.connect(path)
        except OSError as e:
            log.warning("failed to connect to %s: %s", path, e.strerror)
            return m.Failure("couldn't reach service")
        try:
            if service == "vmmd":
                failure = self.push_policies(daemon, req)
                if failure is not None:
                    log.warning("error while applying policies %s", failure)
                    return m.Failure(failure)
            try:
                daemon.write_wire(Wire(Header(req.name, self.next_sequence()), cmd))
            except OSError:
                return m.Failure("couldn't write unikernel to VMMD")
            if _streams_data(cmd):
                failure = self.copy_stream(tls, daemon)
                if failure is not None:
                    return m.Failure(failure)
            if mode == "single":
                try:
                    w = daemon.read_wire()
                except (AlbatrossError, OSError):
                    w = None
                return w.payload if w is not None else m.Failure("error reading from fd")
            return self.forward(tls, daemon, req.version)
        finally:
            daemon.close()

    def push_policies(self, daemon: DaemonConn, req: Request) -> str | None:
        """Policy_add for every chain policy, deepest first; an error message or None."""
        for path, policy in req.policies:
            header = Header(Name.of_path(path), self.next_sequence())
            try:
                daemon.write_wire(Wire(header, m.PolicyAdd(policy)))
            except OSError:
                return "failed to write policy"
            try:
                w = daemon.read_wire()
            except (AlbatrossError, OSError):
                w = None
            if w is None:
                return "read error after writing policy"
            if not isinstance(w.payload, m.Reply):
                return f"expected success when adding policy, got: {pretty.wire(w)}"
        return None

    def copy_stream(self, tls: TlsStream, daemon: DaemonConn) -> str | None:
        while True:
            try:
                chunk = self._read_client_chunk(tls)
            except AlbatrossError:
                chunk = None
            if chunk is None:
                return "reading tls chunk"
            try:
                daemon.write_raw(b"" if chunk is END else chunk)
            except OSError:
                return "writing block data"
            if chunk is END:
                return None

    def forward(self, tls: TlsStream, daemon: DaemonConn, version: int):
        """Read/Dump mode: forward with the certificate's version until no-data."""
        while True:
            try:
                w = daemon.read_wire(client=tls)
            except (AlbatrossError, OSError):
                w = None
            if w is None:
                return m.Failure("exception while reading from fd")
            if isinstance(w.payload, m.BlockData) and w.payload.data is None:
                return w.payload
            try:
                tls.write_chunk(encode_wire(Wire(dataclasses.replace(w.header, version=version), w.payload)),
                                self.idle_timeout)
            except TlsTimeout:
                log.warning("client read nothing for %g s: closing the connection", self.idle_timeout)
                return m.Failure("exception")
            except Exception:  # noqa: BLE001 - the TLS client is gone
                return m.Failure("exception")

    # -- many connections ----------------------------------------------------
    def serve_forever(self, listener: socket.socket, stop: threading.Event | None = None) -> None:
        """Accept and handshake in this thread (one event loop); each
        authenticated client is then served in a thread of its own."""
        _EventLoop(self, listener, stop).run()

    def _admit(self, source: str) -> str | None:
        """Count a new connection in; the reason when it must be refused."""
        with self._lock:
            if self._active >= self.limits.max_connections:
                return f"{self.limits.max_connections} connections"
            if self.limits.max_per_address and self._per_source[source] >= self.limits.max_per_address:
                return f"{self.limits.max_per_address} connections from {source}"
            self._active += 1
            self._per_source[source] += 1
            return None

    def _release(self, source: str) -> None:
        with self._lock:
            self._active -= 1
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]

    def connections(self) -> int:
        with self._lock:
            return self._active

    def _session(self, tls: TlsStream, source: str) -> None:
        try:
            self.serve_authenticated(tls)
        finally:
            self._release(source)


_ACCEPT_PAUSE = 0.1
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _EventLoop:
    """Accepts connections and runs their handshakes without a thread each."""

    def __init__(self, ep: Endpoint, listener: socket.socket, stop: threading.Event | None):
        self.ep, self.listener, self.stop = ep, listener, stop
        self.limits = ep.limits
        self.sel = selectors.DefaultSelector()
        self.pending: dict[int, _Pending] = {}
        self.large = 0                      # reservations held
        self.queue: collections.deque[_Pending] = collections.deque()  # waiting for one
        self.accept_paused_until: float | None = None
        self.refusing = False
        # large handshakes finish in threads of their own; they wake us to hand on their reservation
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.lock = threading.Lock()
        self.finished_large = 0
        try:
            self.spare: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.spare = None

    # -- loop ------------------------------------------------------------------
    def run(self) -> None:
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            while self.stop is None or not self.stop.is_set():
                for key, mask in self.sel.select(self._timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._large_finished()
                    elif self.pending.get(key.fd) is key.data:  # not closed earlier in this batch
                        self._progress(key.data, mask)
                self._expire()
                if self.accept_paused_until is not None and time.monotonic() >= self.accept_paused_until:
                    self.accept_paused_until = None
                    self.sel.register(self.listener, selectors.EVENT_READ, None)
        finally:
            for p in list(self.pending.values()):
                self._drop(p)
            self.sel.close()
            self.wake_r.close()
            self.wake_w.close()
            if self.spare is not None:
                os.close(self.spare)

    def _timeout(self) -> float:
        now = time.monotonic()
        wake = [next(iter(self.pending.values())).deadline] if self.pending else []
        if self.accept_paused_until is not None:
            wake.append(self.accept_paused_until)
        timeout = max(0.0, min(wake) - now) if wake else 3600.0
        return min(timeout, 0.5) if self.stop is not None else timeout

    # -- accepting ---------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _RESOURCE_ERRORS:
                    self._out_of_descriptors(e)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                self.ep._log_accept(logging.ERROR, "Unix error %s in accept", e.strerror or e)
                return
            self._new_connection(sock, addr)

    def _out_of_descriptors(self, e: OSError) -> None:
        """Refuse the waiting client with the spare descriptor, then pause accepting."""
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None
            try:
                self.listener.accept()[0].close()
            except OSError:
                pass
            try:
                self.spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        self.ep._log_accept(logging.ERROR, "accept failed: %s (%d connections open); refusing connections, "
                            "accepting again in %g s", e.strerror or e, self.ep.connections(), _ACCEPT_PAUSE)
        self.sel.unregister(self.listener)
        self.accept_paused_until = time.monotonic() + _ACCEPT_PAUSE

    def _new_connection(self, sock: socket.socket, addr) -> None:
        source = _source(addr)
        refused = self.ep._admit(source)
        if refused is not None:
            _refuse(sock)
            if not self.refusing:
                self.refusing = True
                self.ep._log_refusal(logging.WARNING, "connection limit reached (%s): refusing new connections",
                                     refused)
            return
        self.refusing = False
        try:
            tls = TlsStream(self.ep.ctx, sock, server=True)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory for the SSL object
            self.ep._log_failure(logging.ERROR, "error establishing TLS connection: %s", _reason(e))
            sock.close()
            self.ep._release(source)
            return
        p = _Pending(tls, _format_peer(addr), source, time.monotonic() + self.limits.handshake_timeout)
        self.pending[sock.fileno()] = p
        self.sel.register(sock, selectors.EVENT_READ, p)

    # -- handshakes --------------------------------------------------------------
    def _allowance(self, p: _Pending) -> int:
        """Bytes ``p`` may still send to the loop: 0 when it must wait for a
        reservation, -1 when it got one (and went to a thread of its own)."""
        received = p.tls.received
        if received < SMALL_HANDSHAKE:
            return SMALL_HANDSHAKE - received
        if self.large >= self.limits.large_slots:
            return 0
        p.large = True
        self.large += 1
        self._offload(p)
        return -1

    def _progress(self, p: _Pending, mask: int) -> None:
        try:
            done = False
            if mask & selectors.EVENT_READ:
                allowance = self._allowance(p)
                if allowance < 0:  # now in a thread of its own
                    return
                if allowance == 0:
                    p.waiting = True
                    self.queue.append(p)
                elif p.tls.feed(allowance) >= 0:
                    done = p.tls.handshake_step()
            flushed = p.tls.send_pending()
        except Exception as e:  # noqa: BLE001 - this connection only
            self._fail(p, _reason(e))
            return
        if done:
            self._authenticated(p, flushed)
            return
        self._interest(p, flushed)

    def _interest(self, p: _Pending, flushed: bool) -> None:
        self._set_events(p, (0 if p.waiting else selectors.EVENT_READ) | (0 if flushed else selectors.EVENT_WRITE))

    def _set_events(self, p: _Pending, events: int) -> None:
        try:
            current = self.sel.get_key(p.tls.sock).events
        except KeyError:
            current = 0
        if events == current:
            return
        if not events:
            self.sel.unregister(p.tls.sock)
        elif not current:
            self.sel.register(p.tls.sock, events, p)
        else:
            self.sel.modify(p.tls.sock, events, p)

    def _forget(self, p: _Pending) -> None:
        fd = p.tls.sock.fileno()
        if self.pending.pop(fd, None) is None:
            return
        self._set_events(p, 0)
        if p.waiting:
            p.waiting = False
            try:
                self.queue.remove(p)
            except ValueError:
                pass

    def _grant(self) -> None:
        """Hand free reservations to the connections waiting longest."""
        while self.queue and self.large < self.limits.large_slots:
            p = self.queue.popleft()
            p.waiting = False
            p.large = True
            self.large += 1
            self._offload(p)

    def _offload(self, p: _Pending) -> None:
        """A handshake larger than SMALL_HANDSHAKE goes on in a thread of its
        own (at most ``large_slots`` of them: they parse megabytes)."""
        self.pending.pop(p.tls.sock.fileno(), None)
        self._set_events(p, 0)
        try:
            threading.Thread(target=self._large_handshake, args=(p,), name=f"tls handshake {p.peer}",
                             daemon=True).start()
        except RuntimeError as e:  # can't start new thread
            self.ep._log_failure(logging.ERROR, "error establishing TLS connection from %s: %s", p.peer, e)
            p.tls.close()
            self.ep._release(p.source)
            self.large -= 1

    def _large_handshake(self, p: _Pending) -> None:
        try:
            p.tls.handshake(deadline=p.deadline, max_received=self.limits.per_connection)
        except TlsTimeout:
            error = f"timeout (no authenticated client after {self.limits.handshake_timeout:g} s)"
        except Exception as e:  # noqa: BLE001 - this connection only
            error = _reason(e)
        else:
            error = None
        with self.lock:
            self.finished_large += 1
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass  # a byte is already waiting, or the loop is gone
        if error is not None:
            self.ep._log_failure(logging.ERROR, "error establishing TLS connection from %s: %s", p.peer, error)
            p.tls.close()
            self.ep._release(p.source)
            return
        self.ep._session(p.tls, p.source)

    def _large_finished(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self.lock:
            n, self.finished_large = self.finished_large, 0
        self.large -= n
        self._grant()

    def _fail(self, p: _Pending, reason: str) -> None:
        self.ep._log_failure(logging.ERROR, "error establishing TLS connection from %s: %s", p.peer, reason)
        self._drop(p)

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        try:
            p.tls.send_pending()  # an alert, if any, never blocking
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        p.tls.close()
        self.ep._release(p.source)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.pending:  # in accept order, which is deadline order
            p = next(iter(self.pending.values()))
            if p.deadline > now:
                return
            self._fail(p, f"timeout (no authenticated client after {self.limits.handshake_timeout:g} s)")

    def _authenticated(self, p: _Pending, flushed: bool) -> None:
        self._forget(p)
        tls = p.tls  # what is left to send goes with the session's first write or read
        try:
            threading.Thread(target=self.ep._session, args=(tls, p.source), name=f"tls {p.peer}",
                             daemon=True).start()
        except RuntimeError as e:  # can't start new thread
            self.ep._log_failure(logging.ERROR, "error serving %s: %s", p.peer, e)
            tls.close()
            self.ep._release(p.source)


def _refuse(sock: socket.socket) -> None:
    """Close at once with a reset: the client learns immediately."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


def _source(addr) -> str:
    """The address a per-source limit counts: IPv4 (also v4-mapped) or the IPv6 /64."""
    host = addr[0] if isinstance(addr, tuple) and addr else str(addr)
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _format_peer(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _format_listen(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        return f"{host}:{addr[1]}"
    return str(addr)


def _reason(e: BaseException) -> str:
    if isinstance(e, AlbatrossError):
        return e.message
    return str(e) or type(e).__name__


# ------------------------------------------------------------------ startup

def load_config(cacert: str, cert: str, key: str, max_chain: int = Limits.max_chain):
    """The server TLS context from the three files; StartupError on problems."""
    try:
        cas = pki.load_certs(cacert)
        chain = pki.load_certs(cert)
        priv = pki.load_key(key)
    except pki.PkiError as e:
        raise StartupError(e.message) from None
    if len(cas) != 1:
        raise StartupError("expect single ca as cacert")
    if not pki.key_matches(priv, chain[0]):
        raise StartupError("private key does not match the certificate")
    try:
        return server_context(cas[0], chain, priv, max_cert_list=max_chain)
    except Exception as e:  # noqa: BLE001 - OpenSSL refusing the key/cert
        raise StartupError(f"TLS configuration failed: {e}") from None


def listen_tcp(ip: str, port: int) -> socket.socket:
    addr = ipaddress.ip_address(ip)
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.set_inheritable(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((ip, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"unable to bind to {ip} port {port}: {e.strerror}") from None
    sock.listen(256)  # upstream: 10; a flood must not fill the queue ahead of legitimate clients
    return sock


def fit_descriptors(limits: Limits) -> Limits:
    """Raise RLIMIT_NOFILE to its hard limit, and lower max_connections to
    what the descriptors allow (a served connection uses two: the client and
    its daemon), so that the cap, not EMFILE, refuses the excess."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 2 * limits.max_connections + 64
        if soft != resource.RLIM_INFINITY and soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (OSError, ValueError):
        return limits
    if soft != resource.RLIM_INFINITY and 2 * limits.max_connections + 64 > soft:
        fit = max(1, (soft - 64) // 2)
        log.warning("--max-connections lowered from %d to %d (open file limit %d)", limits.max_connections, fit, soft)
        return dataclasses.replace(limits, max_connections=fit)
    return limits


def tune_malloc() -> None:
    """glibc: serve large buffers (certificate messages of up to 16 MiB)
    from mmap so that their memory returns to the system once freed,
    instead of the heap keeping it (issue 12 row 6: 1.5 GB never returned)."""
    try:
        import ctypes  # noqa: PLC0415
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 256 * 1024)  # a fixed threshold: no dynamic raise to 32 MiB
    mallopt(M_TRIM_THRESHOLD, 1 << 20)


def _ip(_ctx, _param, value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address") from None
    return value


@click.command("albatross-tls-endpoint")
@click.argument("cacert", metavar="CA", type=click.Path(exists=True, dir_okay=False))
@click.argument("cert", metavar="CERT", type=click.Path(exists=True, dir_okay=False))
@click.argument("key", metavar="KEY", type=click.Path(exists=True, dir_okay=False))
@click.option("--ip", default="::", callback=_ip, show_default=True, help="Listen IP address.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="TCP listen port (default 1025).")
@click.option("--inetd", is_flag=True, help="Inetd mode: serve one connection on stdin "
              "(use --syslog, or --quiet to disable logging).")
@click.option("--max-connections", type=click.IntRange(1), default=Limits.max_connections, show_default=True,
              help="Concurrent connections (handshaking or served); more are refused at once.")
@click.option("--max-connections-per-address", "max_per_address", type=click.IntRange(0),
              default=Limits.max_per_address, show_default=True,
              help="Concurrent connections from one IPv4 address or IPv6 /64 (0: no limit).")
@click.option("--handshake-timeout", type=click.FloatRange(0.1), default=Limits.handshake_timeout,
              show_default=True, metavar="SECONDS", help="Time from accept to an authenticated client.")
@click.option("--idle-timeout", type=click.FloatRange(0.1), default=Limits.idle_timeout, show_default=True,
              metavar="SECONDS", help="How long an authenticated client may send nothing while an upload "
              "is expected, or read nothing of what is sent to it.")
@click.option("--max-client-chain", "max_chain", type=click.IntRange(4096), default=Limits.max_chain,
              show_default=True, metavar="BYTES",
              help="Largest client certificate message (certificates may embed images of up to 16 MiB).")
@click.option("--handshake-memory", type=click.IntRange(0), default=Limits.handshake_memory,
              show_default=True, metavar="BYTES",
              help="Bytes all unauthenticated clients together may make the endpoint buffer beyond "
              "64 KiB each; clients sending more wait their turn (at least one at a time).")
@daemon_options
def command(cacert: str, cert: str, key: str, ip: str, port: int | None, inetd: bool,
            max_connections: int, max_per_address: int, handshake_timeout: float, idle_timeout: float,
            max_chain: int, handshake_memory: int,
            tmpdir: str, systemd: bool, verbosity: int, use_syslog: bool) -> None:
    """Remote albatross access: mutually authenticated TLS sessions whose client
    certificate carries an albatross command, forwarded to the daemons."""
    if inetd and not (use_syslog or verbosity == 0):
        sys.exit(3)
    if port is not None and systemd:
        raise click.UsageError("Options --port and --systemd-socket-activation are not compatible")
    setup_logging("albatross-tls-endpoint", verbosity, use_syslog)
    tune_malloc()
    limits = Limits(max_connections, max_per_address, handshake_timeout, idle_timeout, max_chain, handshake_memory)
    ctx = load_config(cacert, cert, key, max_chain)
    if inetd:
        ep = Endpoint(ctx, tmpdir, limits=limits)
        sock = socket.socket(fileno=os.dup(0))
        ep.serve_connection(sock, "inetd")
        return
    limits = fit_descriptors(limits)
    ep = Endpoint(ctx, tmpdir, limits=limits)
    listener = systemd_socket() if systemd else listen_tcp(ip, DEFAULT_PORT if port is None else port)
    # one line at start, shown at the default verbosity
    log.warning("listening on %s%s for TLS clients, daemons in %s (max %d connections, %s per address, "
                "handshake timeout %g s, idle timeout %g s)", _format_listen(listener.getsockname()),
                " (systemd socket)" if systemd else "", tmpdir, limits.max_connections,
                limits.max_per_address or "no limit", limits.handshake_timeout, limits.idle_timeout)
    sd_notify("READY=1")
    ep.serve_forever(listener)


def main(argv: list[str] | None = None) -> None:
    run_cli(command, argv, "albatross-tls-endpoint", startup_exit=INTERNAL_ERROR)


if __name__ == "__main__":
    main()
