"""What every albatross-client subcommand shares.

* exit codes (behaviour.md §7.8),
* the destination options: local ``--socket``, remote ``--destination``,
  ``--csr`` (mutually exclusive),
* output through a tiny logger on stdout (app messages unprefixed, others
  prefixed ``albatross-client: [LEVEL]``),
* :class:`ReplyHandler`, which turns the replies of a command into output
  and an exit code, shared by the local and the remote transport,
* :func:`run_command`, which sends one command and handles its replies.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import os
import platform
import socket
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Callable

import click

from .. import pretty
from ..errors import AlbatrossError
from ..policy.names import Name
from ..wire import (
    END, FrameReader, Header, Wire, decode_wire, encode_wire, endpoint, frame,
)
from ..wire import messages as m
from ..wire.framing import END_CHUNK
from ..wire import inflate as Z

# exit codes
SUCCESS = 0
CHAIN_FAILURE = 116
REMOTE_COMMAND_FAILED = 117
HTTP_ERROR = 118
LOCAL_AUTHENTICATION_FAILED = 119
REMOTE_AUTHENTICATION_FAILED = 120
COMMUNICATION_FAILED = 121
CONNECT_FAILED = 122
CLI_FAILED = 124
INTERNAL_ERROR = 125


class CliError(AlbatrossError):
    """A command-line problem: printed as an error, exit 124."""


class Exit(Exception):
    """Stop the client with this exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# ------------------------------------------------------------------- output

LEVELS = {"quiet": 0, "error": 1, "warning": 2, "info": 3, "debug": 4}
_level = LEVELS["warning"]


def set_level(level: int) -> None:
    global _level
    _level = level


def verbose() -> bool:
    return _level >= LEVELS["debug"]


def app(msg: str) -> None:
    if _level > 0:
        click.echo(msg)


def _log(level: str, msg: str) -> None:
    if _level >= LEVELS[level.lower()]:
        click.echo(f"albatross-client: [{level}] {msg}")


def warn(msg: str) -> None:
    _log("WARNING", msg)


def error(msg: str) -> None:
    _log("ERROR", msg)


def info(msg: str) -> None:
    _log("INFO", msg)


def debug(msg: str) -> None:
    _log("DEBUG", msg)


def hexdump(data: bytes) -> str:
    """A hex dump in the style upstream's client prints for ``--socket -``."""
    lines = []
    for off in range(0, len(data), 16):
        row = data[off:off + 16]
        hx = ""
        for i, b in enumerate(row):
            hx += f"{b:02x}"
            if i % 2 == 1:
                hx += " "
            if i % 8 == 7:
                hx += " "
        chars = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{off:06x}  {hx:<42}{chars}")
    return "\n".join(lines)


# ---------------------------------------------------------------- defaults

def default_tmpdir() -> str:
    return "/run/albatross" if platform.system() == "Linux" else "/var/run/albatross"


def default_dbdir() -> str:
    return "/var/lib/albatross" if platform.system() == "Linux" else "/var/db/albatross"


SOCKET_NAMES = {"vmmd": "vmmd", "console": "console", "stats": "stat"}


def socket_path(tmpdir: str, service: str) -> str:
    return os.path.join(tmpdir, "util", SOCKET_NAMES[service] + ".sock")


_START_TS = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S-00:00")


def dump_filename(name: Name) -> str:
    """``<tmp>/<name>.<timestamp of program start>`` as upstream names dumps."""
    return os.path.join(tempfile.gettempdir(), f"{name.to_string()}.{_START_TS}")


# ---------------------------------------------------------- target options

@dataclasses.dataclass
class Target:
    """Where a command goes, from the destination options."""

    socket: str | None = None
    destination: str | None = None
    csr: bool = False
    tmpdir: str = dataclasses.field(default_factory=default_tmpdir)
    ca: str = "ca.pem"
    ca_key: str = "ca.key"
    server_ca: str = "cacert.pem"
    key_type: str = "ed25519"

    @property
    def local(self) -> bool:
        return self.destination is None and not self.csr

    def compression(self, level: int | None) -> int:
        """The compression level: as given, else 0 locally and 9 remotely."""
        if level is not None:
            return level
        return 0 if self.local else 9


KEY_TYPES = ["rsa2048", "rsa4096", "ed25519", "p256", "p384", "p521"]


def logging_options(f):
    @click.option("-v", "verbosity_v", count=True, help="Increase verbosity (-v info, -vv debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Be quiet.")
    @click.option("--verbosity", type=click.Choice(list(LEVELS)), default=None, help="Log level.")
    @click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", hidden=True)
    @functools.wraps(f)
    def wrapper(*args, verbosity_v, quiet, verbosity, color, **kwargs):
        if verbosity is not None:
            set_level(LEVELS[verbosity])
        elif quiet:
            set_level(0)
        else:
            set_level(min(LEVELS["debug"], LEVELS["warning"] + verbosity_v))
        return f(*args, **kwargs)
    return wrapper


def tmpdir_option(f):
    return click.option("--tmpdir", default=None, metavar="DIR",
                        help="Runtime directory of the daemons (default /run/albatross on Linux).")(f)


def target_options(f):
    """--socket / --destination / --csr and the certificate options."""
    @click.option("--socket", "socket_", default=None, metavar="PATH",
                  help="Local socket to use ('-' prints the encoded request).")
    @click.option("-d", "--destination", default=None, metavar="HOST[:PORT]",
                  help="Remote albatross-tls-endpoint ('-' prints the certificate chain).")
    @click.option("--csr", is_flag=True, help="Write a certificate signing request instead.")
    @click.option("--ca", default="ca.pem", show_default=True, help="CA certificate (chain) to sign with.")
    @click.option("--ca-key", default="ca.key", show_default=True, help="Private key of the CA.")
    @click.option("--server-ca", default="cacert.pem", show_default=True, help="Trust anchor of the server.")
    @click.option("--key-type", type=click.Choice(KEY_TYPES), default="ed25519", show_default=True)
    @tmpdir_option
    @logging_options
    @functools.wraps(f)
    def wrapper(*args, socket_, destination, csr, ca, ca_key, server_ca, key_type, tmpdir, **kwargs):
        chosen = [x for x in (socket_ is not None, destination is not None, csr) if x]
        if len(chosen) > 1:
            raise CliError("The options --csr, --destination, and --socket are mutually exclusive")
        target = Target(socket_, destination, csr, tmpdir or default_tmpdir(), ca, ca_key, server_ca, key_type)
        return f(*args, target=target, **kwargs)
    return wrapper


def parse_name(s: str) -> Name:
    try:
        return Name.of_string(s)
    except AlbatrossError as e:
        raise CliError(f"invalid name {s!r}: {e.message}") from None


# ---------------------------------------------------------- reply handling

class DumpProgress:
    """Bytes received so far while a block device is dumped, on one
    rewritten line of stderr (only when it is a terminal: the dump size is
    not known in advance, so this counts rather than draws a bar)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.received = 0
        self.shown = -1

    @staticmethod
    def human(n: int) -> str:
        if n < 1024:
            return f"{n} B"
        size, unit = n / 1024, "KiB"
        for bigger in ("MiB", "GiB"):
            if size < 1024:
                break
            size, unit = size / 1024, bigger
        return f"{size:.1f} {unit}"

    def update(self, n: int) -> None:
        self.received += n
        if self.received - self.shown >= 1 << 20 or self.shown < 0:
            self._show()

    def _show(self) -> None:
        self.shown = self.received
        self.stream.write(f"\r{self.label}: {self.human(self.received)} received")
        self.stream.flush()

    def finish(self) -> None:
        if self.shown >= 0:
            self._show()
            self.stream.write("\n")
            self.stream.flush()


class ReplyHandler:
    """Consumes the replies to one command; tells when and how it ends.

    ``handle(wire)`` returns None to keep reading or an exit code;
    ``eof()`` is called when the stream ends first.
    """

    def __init__(self, cmd: m.Cmd, name: Name):
        self.cmd = cmd
        self.name = name
        self.mode = endpoint(cmd)[1]
        self.dump_file = None
        self.dump_path: str | None = None
        self.inflater = None
        self.on_reply: Callable[[Wire], None] | None = None
        self.progress: DumpProgress | None = None

    def handle(self, w: Wire) -> int | None:
        p = w.payload
        if self.on_reply is not None:
            self.on_reply(w)
        if isinstance(p, m.Failure):
            warn(pretty.wire(w, verbose()))
            return REMOTE_COMMAND_FAILED
        if isinstance(p, m.Cmd):
            error(f"received unexpected command {pretty.wire(w, verbose())}")
            return INTERNAL_ERROR
        if isinstance(p, m.Reply):
            app(pretty.wire_wrapped(w, verbose()))
            if isinstance(p, (m.UnikernelImage, m.OldBlockDeviceImage)):
                blob = p.image if isinstance(p, m.UnikernelImage) else p.data
                self._write_file(w.header.name, p.compressed, blob)
                return SUCCESS
            if isinstance(p, m.BlockDeviceImage):
                self.dump_path = dump_filename(w.header.name)
                self.dump_file = open(self.dump_path, "wb")
                # pieces of at most 1 MiB go to the file: a "zlib bomb" never fills memory
                self.inflater = Z.BoundedInflater(1 << 62, "block dump") if p.compressed else None
                if sys.stderr.isatty():
                    self.progress = DumpProgress(f"dumping {w.header.name}")
                return None
            return None if self.mode in ("read", "dump") else SUCCESS
        if isinstance(p, m.BlockData):
            if self.dump_file is None:
                warn("Unexpected block dump data received")
                return COMMUNICATION_FAILED
            if p.data is None:
                self.dump_file.close()
                if self.progress is not None:
                    self.progress.finish()
                app(f"dumped to {self.dump_path}")
                return SUCCESS
            try:
                if self.inflater is not None:
                    self.inflater.feed(p.data, self.dump_file.write)
                else:
                    self.dump_file.write(p.data)
            except Z.InflateError as e:
                error(f"{e.message} while dumping {self.dump_path}")
                return COMMUNICATION_FAILED
            if self.progress is not None:
                self.progress.update(len(p.data))
            return None
        if self.mode == "read":
            app(pretty.wire(w, verbose()))
            return None
        warn("Unexpected console data received")
        return COMMUNICATION_FAILED

    def eof(self) -> int:
        if self.mode == "read":
            return SUCCESS
        return COMMUNICATION_FAILED

    def _write_file(self, name: Name, compressed: bool, blob: bytes) -> None:
        if compressed:
            try:
                blob = Z.inflate(blob, Z.DEFAULT_MAX_IMAGE, "image")
            except Z.InflateError as e:
                error(f"failed to uncompress image: {e.message}")
                return
        path = dump_filename(name)
        try:
            with open(path, "wb") as fh:
                fh.write(blob)
        except OSError as e:
            error(f"failed to write image: {e}")
            return
        app(f"dumped image to {path}")


# ------------------------------------------------------------- transports

def _recv_messages(sock: socket.socket) -> Iterator[Wire | None]:
    reader = FrameReader()
    while True:
        frame_ = reader.next_frame()
        if frame_ is None:
            data = sock.recv(1 << 16)
            if not data:
                return
            reader.feed(data)
            continue
        if frame_ is END:
            return
        yield decode_wire(frame_)


def run_local(target: Target, name: Name, cmd: m.Cmd, upload: Iterable[bytes] | None = None,
              handler: ReplyHandler | None = None) -> int:
    body = encode_wire(Wire(Header(name), cmd))
    if target.socket == "-":
        app("out:\n" + hexdump(body))
        return COMMUNICATION_FAILED
    service = endpoint(cmd)[0]
    path = target.socket or socket_path(target.tmpdir, service)
    handler = handler or ReplyHandler(cmd, name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        error(f"connect to {path} failed: {e}")
        sock.close()
        return CONNECT_FAILED
    try:
        sock.sendall(frame(body))
        if upload is not None:
            for chunk in upload:
                if chunk:
                    sock.sendall(frame(chunk))
            sock.sendall(END_CHUNK)
        for w in _recv_messages(sock):
            code = handler.handle(w)
            if code is not None:
                return code
        return handler.eof()
    except (OSError, AlbatrossError) as e:
        error(f"communication failure: {e}")
        return COMMUNICATION_FAILED
    finally:
        sock.close()


def run_command(target: Target, name: Name, cmd: m.Cmd, upload: Iterable[bytes] | None = None,
                handler: ReplyHandler | None = None) -> int:
    """Send ``cmd`` for ``name`` locally, remotely or as a CSR; return the exit code."""
    if target.local:
        return run_local(target, name, cmd, upload, handler)
    from . import remote  # the TLS / PKI side
    if target.csr:
        return remote.write_csr(target, name, cmd)
    return remote.run_remote(target, name, cmd, upload, handler or ReplyHandler(cmd, name))


def file_chunks(path: str, level: int, size: int = 4096,
                on_read: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Read a file in ``size`` pieces, zlib-deflated when ``level`` > 0.

    ``on_read`` is told how many raw bytes each read returned (progress bars).
    """
    comp = zlib.compressobj(level) if level > 0 else None
    with open(path, "rb") as fh:
        while True:
            piece = fh.read(size)
            if not piece:
                break
            if on_read is not None:
                on_read(len(piece))
            out = comp.compress(piece) if comp else piece
            if out:
                yield out
    if comp:
        tail = comp.flush()
        if tail:
            yield tail


def exit_with(code: int):
    raise Exit(code)


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
