"""albatross-tls-endpoint: remote access over mutually authenticated TLS 1.3
(behaviour.md §6, wire.md §6, certificates.md §3).

One command per connection: the client's certificate chain is validated
against the single CA, the albatross processing of the chain gives the
name, the policies and the command, the policies are (re)installed in
albatrossd, the command is proxied to its daemon and the replies are sent
back with rewritten headers.

Each connection is served in its own thread on a non-blocking socket with a
handshake deadline, so a slow, half-open or misbehaving client only ever
holds its own thread.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
import os
import select
import socket
import sys
import threading

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
    while True:
        r, _, _ = select.select([daemon, client.sock], [], [])
        if daemon in r:
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


class Endpoint:
    """The per-connection logic, independent of how connections arrive."""

    def __init__(self, ctx, tmpdir: str, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_image: int = DEFAULT_MAX_SIZE):
        self.ctx = ctx
        self.tmpdir = tmpdir
        self.handshake_timeout = handshake_timeout
        self.max_image = max_image
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def next_sequence(self) -> int:
        """The process-global sequence counter (starts at 0)."""
        with self._lock:
            return next(self._counter)

    # -- one connection ----------------------------------------------------
    def serve_connection(self, sock: socket.socket, peer: str = "") -> None:
        """Handshake, handle, close; logs problems, never raises."""
        tls = TlsStream(self.ctx, sock, server=True)
        try:
            tls.handshake(self.handshake_timeout)
        except Exception as e:  # noqa: BLE001 - any handshake problem closes this connection only
            log.error("error establishing TLS connection%s: %s", f" from {peer}" if peer else "", _reason(e))
            tls.close()
            return
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
        tls.write_chunk(encode_wire(Wire(Header(req.name, 0, req.version), reply)))

    def read_image(self, tls: TlsStream) -> bytes | None:
        """Chunks until an empty one; None on EOF or an oversized image."""
        buf = bytearray()
        while True:
            chunk = tls.read_chunk()
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

    @staticmethod
    def copy_stream(tls: TlsStream, daemon: DaemonConn) -> str | None:
        while True:
            try:
                chunk = tls.read_chunk()
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

    @staticmethod
    def forward(tls: TlsStream, daemon: DaemonConn, version: int):
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
                tls.write_chunk(encode_wire(Wire(dataclasses.replace(w.header, version=version), w.payload)))
            except Exception:  # noqa: BLE001 - the TLS client is gone
                return m.Failure("exception")

    # -- many connections ----------------------------------------------------
    def serve_forever(self, listener: socket.socket, stop: threading.Event | None = None) -> None:
        listener.setblocking(True)
        listener.settimeout(0.5 if stop is not None else None)
        while stop is None or not stop.is_set():
            try:
                sock, addr = listener.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if stop is not None and stop.is_set():
                    return
                log.error("Unix error %s in accept", e.strerror or e)
                continue
            peer = _format_peer(addr)
            threading.Thread(target=self.serve_connection, args=(sock, peer),
                             name=f"tls {peer}", daemon=True).start()


def _format_peer(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _reason(e: BaseException) -> str:
    if isinstance(e, AlbatrossError):
        return e.message
    return str(e) or type(e).__name__


# ------------------------------------------------------------------ startup

def load_config(cacert: str, cert: str, key: str):
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
        return server_context(cas[0], chain, priv)
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
    sock.listen(10)
    return sock


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
@daemon_options
def command(cacert: str, cert: str, key: str, ip: str, port: int | None, inetd: bool,
            tmpdir: str, systemd: bool, verbosity: int, use_syslog: bool) -> None:
    """Remote albatross access: mutually authenticated TLS sessions whose client
    certificate carries an albatross command, forwarded to the daemons."""
    if inetd and not (use_syslog or verbosity == 0):
        sys.exit(3)
    if port is not None and systemd:
        raise click.UsageError("Options --port and --systemd-socket-activation are not compatible")
    setup_logging("albatross-tls-endpoint", verbosity, use_syslog)
    ctx = load_config(cacert, cert, key)
    ep = Endpoint(ctx, tmpdir)
    if inetd:
        sock = socket.socket(fileno=os.dup(0))
        ep.serve_connection(sock, "inetd")
        return
    listener = systemd_socket() if systemd else listen_tcp(ip, DEFAULT_PORT if port is None else port)
    log.info("listening on %s", _format_peer(listener.getsockname()))
    sd_notify("READY=1")
    ep.serve_forever(listener)


def main(argv: list[str] | None = None) -> None:
    run_cli(command, argv, "albatross-tls-endpoint", startup_exit=INTERNAL_ERROR)


if __name__ == "__main__":
    main()
