"""What all daemons share: command-line flags, logging, listening sockets
(own or handed over by systemd), readiness notification, and reading and
writing framed wire messages on asyncio streams."""

from __future__ import annotations

import asyncio
import functools
import logging
import logging.handlers
import os
import platform
import socket
import stat
import sys
import time

import click

from .. import __version__
from ..errors import AlbatrossError, DecodeError, FrameError
from ..wire import END, Wire, decode_wire, encode_wire, frame
from ..wire.framing import DEFAULT_MAX_SIZE

log = logging.getLogger("albatross")


class StartupError(AlbatrossError):
    """A daemon cannot start (bad flags, missing directory, socket in use...)."""


CLI_ERROR = 124  #: exit code of a command-line error (cmdliner's)


def run_cli(command: click.Command, argv: list[str] | None, program: str, startup_exit: int = 1) -> None:
    """Run a daemon's click command with cmdliner-like exit codes."""
    try:
        command.main(args=argv, prog_name=program, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(CLI_ERROR)
    except click.exceptions.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(0)
    except StartupError as e:
        log.error("%s", e.message)
        print(f"{program}: {e.message}", file=sys.stderr)
        sys.exit(startup_exit)
    sys.exit(0)


# ---------------------------------------------------------------- defaults

def default_tmpdir() -> str:
    return "/run/albatross" if platform.system() == "Linux" else "/var/run/albatross"


def default_dbdir() -> str:
    return "/var/lib/albatross" if platform.system() == "Linux" else "/var/db/albatross"


def socket_path(tmpdir: str, service: str) -> str:
    return os.path.join(tmpdir, "util", {"vmmd": "vmmd", "console": "console", "stats": "stat"}[service] + ".sock")


# ----------------------------------------------------------------- logging

class TimestampFormatter(logging.Formatter):
    """Lines prefixed with an RFC 3339 timestamp in UTC, with milliseconds."""

    def formatTime(self, record, datefmt=None):  # noqa: N802 - logging's name
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def under_journald() -> bool:
    """stdout or stderr is the journal (systemd sets JOURNAL_STREAM to its device:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
    except ValueError:
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if (st.st_dev, st.st_ino) == (dev, ino):
            return True
    return False


def setup_logging(program: str, verbosity: int, use_syslog: bool) -> None:
    """verbosity: 0 quiet, 1 error, 2 warning (default), 3 info, 4 debug."""
    level = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING,
             3: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if use_syslog:
        try:
            handler: logging.Handler = logging.handlers.SysLogHandler(address="/dev/log")
        except OSError as e:
            print(f"ERROR: couldn't install syslog reporter: {e}", file=sys.stderr)
            sys.exit(2)
        handler.setFormatter(logging.Formatter(f"{program}[{os.getpid()}]: [%(levelname)s] %(message)s"))
    elif under_journald():  # journald adds its own timestamps
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"{program}: [%(levelname)s] %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(TimestampFormatter(f"%(asctime)s {program}: [%(levelname)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def daemon_options(f):
    """--tmpdir, --systemd-socket-activation and the logging flags."""
    @click.option("--tmpdir", default=None, metavar="DIR", help="Runtime directory (default /run/albatross).")
    @click.option("--systemd-socket-activation", is_flag=True, help="Use the socket passed by systemd.")
    @click.option("-v", "verbose", count=True, help="Increase verbosity (-v info, -vv debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Only log errors that stop the daemon.")
    @click.option("--verbosity", type=click.Choice(["quiet", "error", "warning", "info", "debug"]), default=None)
    @click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", hidden=True)
    @click.option("--syslog", "use_syslog", is_flag=True, help="Log to syslog instead of stdout.")
    @click.version_option(__version__, message="version %(version)s protocol version 5")
    @functools.wraps(f)
    def wrapper(*args, tmpdir, systemd_socket_activation, verbose, quiet, verbosity, color, use_syslog, **kw):
        if verbosity is not None:
            level = ["quiet", "error", "warning", "info", "debug"].index(verbosity)
        elif quiet:
            level = 0
        else:
            level = min(4, 2 + verbose)
        tmpdir = tmpdir or default_tmpdir()
        if not os.path.isdir(tmpdir):
            raise click.BadParameter(f"{tmpdir} is not a directory", param_hint="--tmpdir")
        return f(*args, tmpdir=tmpdir, systemd=systemd_socket_activation, verbosity=level,
                 use_syslog=use_syslog, **kw)
    return wrapper


# ----------------------------------------------------------------- sockets

def systemd_socket() -> socket.socket:
    """The single listening socket passed by systemd (fd 3)."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        fds = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        raise StartupError("Systemd socket activation error") from None
    if pid != os.getpid() or fds != 1:
        raise StartupError("Systemd socket activation error")
    sock = socket.socket(fileno=3)
    sock.setblocking(False)
    return sock


def listen_unix(path: str) -> socket.socket:
    """Create the service socket: stale file unlinked, group bits never masked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket")
        try:
            os.unlink(path)
        except PermissionError as e:
            raise StartupError(f"unable to remove {path} ({e}); are you running as the right user?") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0)
    os.umask(old & 0o707)
    try:
        sock.bind(path)
    except OSError as e:
        raise StartupError(f"unable to create server socket {path}: {e}") from None
    finally:
        os.umask(old)
    sock.listen(socket.SOMAXCONN)  # a flood of connections must not make legitimate ones fail
    sock.setblocking(False)
    log.info("listening on %s", path)
    return sock


def service_socket(tmpdir: str, service: str, systemd: bool) -> socket.socket:
    return systemd_socket() if systemd else listen_unix(socket_path(tmpdir, service))


def sd_notify(message: str = "READY=1") -> None:
    """Tell systemd we are ready (Type=notify); a no-op without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify failed: %s", e)


# ---------------------------------------------------- framed wire messages

class Conn:
    """A framed albatross connection over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_size: int = DEFAULT_MAX_SIZE):
        self.reader = reader
        self.writer = writer
        self.max_size = max_size

    async def read_frame(self):
        """bytes, END (zero-length chunk), or None at EOF; FrameError if oversized/negative."""
        try:
            head = await self.reader.readexactly(4)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = int.from_bytes(head, "big", signed=True)
        if length == 0:
            return END
        if length < 0:
            raise FrameError(f"invalid negative frame length {length}")
        if length > self.max_size:
            raise FrameError(f"frame of {length} bytes exceeds the maximum of {self.max_size} bytes")
        try:
            return await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def read_wire(self) -> Wire | None:
        """The next message, None at EOF/end marker; DecodeError/FrameError on bad input."""
        body = await self.read_frame()
        if body is None or body is END:
            return None
        return decode_wire(body)

    async def write_wire(self, w: Wire) -> None:
        self.writer.write(frame(encode_wire(w)))
        await self.writer.drain()

    async def write_raw(self, data: bytes) -> None:
        self.writer.write(frame(data) if data else b"\x00\x00\x00\x00")
        await self.writer.drain()

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass


class Peer:
    """A client connection that is written to without waiting (subscribers).

    ``send`` queues a framed message and reports False when the peer is
    gone or has more than ``max_pending`` bytes unsent (a too slow reader
    is treated like one whose write failed).
    """

    __slots__ = ("conn", "version", "closed", "max_pending")

    def __init__(self, conn: Conn, version: int = 5, max_pending: int = 1 << 20):
        self.conn = conn
        self.version = version
        self.closed = False
        self.max_pending = max_pending

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        transport = self.conn.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > self.max_pending:
            return False
        try:
            self.conn.writer.write(data)
        except (OSError, RuntimeError):
            return False
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()


async def open_unix(path: str) -> Conn:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    return Conn(reader, writer)


__all__ = [
    "run_cli", "CLI_ERROR", "Conn", "Peer", "open_unix", "service_socket", "listen_unix", "systemd_socket", "sd_notify",
    "setup_logging", "daemon_options", "default_tmpdir", "default_dbdir", "socket_path",
    "StartupError", "DecodeError", "FrameError",
]
