"""albatross-console: reads unikernel console fifos, keeps ring buffers and
streams lines to subscribers (behaviour.md §3, wire.md §5.3).

All state lives in :class:`~.console_core.ConsoleState`; this module only
does the I/O: the listening socket, the fifos (non-blocking, via
``loop.add_reader``) and the subscriber connections.  Writes to subscribers
never block the daemon.  Like upstream (which awaits every write), a
subscriber that reads slower than its unikernel prints holds back that
unikernel's console: once it has :data:`PAUSE_AT` unsent bytes, the fifo is
not read until they are written (the tender then blocks on its full pipe).
A subscriber that takes nothing for :data:`STALL_TIMEOUT` seconds meanwhile,
or has more than :data:`MAX_PENDING` bytes unsent, is dropped like one whose
write failed.  All congested subscribers are waited for at once, so stalled
subscribers hold a unikernel back for at most :data:`STALL_TIMEOUT` seconds
per pause however many they are (upstream, and this port before, waited for
them one after another).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat

import click

from ..core import Ptime
from ..errors import AlbatrossError
from ..policy.names import Name
from ..wire import Header, Wire, encode_wire, frame
from ..wire import messages as m
from . import limits
from .common import Conn, Peer, daemon_options, run_cli, sd_notify, service_socket, setup_logging
from .metrics import influx_option, run_with_metrics
from .console_core import LINE_LIMIT, ConsoleState, LineSplitter, Ring

log = logging.getLogger("albatross.console")

#: the largest request accepted on console.sock (requests are tiny)
MAX_REQUEST = 64 * 1024
#: unsent bytes a subscriber may have before it is dropped as too slow
MAX_PENDING = 1 << 20
#: unsent bytes to one subscriber at which its unikernel's fifo is no longer read
PAUSE_AT = 256 * 1024
#: seconds a subscriber may take nothing while its unikernel's fifo is not read
STALL_TIMEOUT = 3.0
#: how often progress of congested subscribers is looked at
STALL_TICK = 0.1
#: bytes taken from a fifo per wake-up (split in 512-byte pieces like upstream)
READ_SIZE = 32 * LINE_LIMIT
#: seconds subscribers get to take their pending output at SIGTERM
FLUSH_TIMEOUT = 2.0



Subscriber = Peer  #: one subscribed client connection (with its wire version)


def _unsent(sub: Subscriber) -> int:
    return sub.conn.writer.transport.get_write_buffer_size()


def data_frame(name: Name, version: int, ts: Ptime, line: bytes) -> bytes:
    return frame(encode_wire(Wire(Header(name, 0, version), m.ConsoleData(ts, line))))


class FifoReader:
    """Reads one unikernel's fifo until EOF, feeding the state."""

    def __init__(self, daemon: "ConsoleDaemon", name: Name, fd: int, ring: Ring):
        self.daemon = daemon
        self.name = name
        self.fd = fd
        self.ring = ring
        self.splitter = LineSplitter()
        self.paused = False
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(fd, self._readable)  # raises for non-pollable files

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            log.error("%s error while reading: %s", self.name, e)
            self.stop()
            return
        if not data:
            log.debug("%s end of file while reading", self.name)
            self.stop()
            return
        lines = self.splitter.feed_chunked(data)
        if lines:
            congested = self.daemon.output(self.name, self.ring, lines)
            if congested:
                self.pause()
                self.loop.create_task(self.daemon.relieve(self, congested))

    def pause(self) -> None:
        if self.fd >= 0 and not self.paused:
            self.loop.remove_reader(self.fd)
            self.paused = True

    def resume(self) -> None:
        if self.fd >= 0 and self.paused:
            self.paused = False
            self.loop.add_reader(self.fd, self._readable)

    def stop(self) -> None:
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
        self.daemon.fifo_finished(self)


class ConsoleDaemon:
    def __init__(self, tmpdir: str, max_subscribers: int = 5):
        self.tmpdir = tmpdir
        self.state: ConsoleState[Subscriber] = ConsoleState(max_subscribers, log.info)
        self.readers: dict[Name, FifoReader] = {}

    # -- fifos -------------------------------------------------------------------
    def fifo_path(self, name: Name) -> str:
        return os.path.join(self.tmpdir, "fifo", name.fifo_file())

    def add(self, name: Name, n: int) -> m.Reply | m.Failure:
        path = self.fifo_path(name)
        log.debug("opening %s for reading", path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.error("%s error in open: %s", path, e.strerror)
            return m.Failure("opening")
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            log.error("%s is not a fifo", path)
            os.close(fd)
            return m.Failure("opening")
        ring, to_close = self.state.add(name, n)
        for sub in to_close:
            sub.close()
        try:
            reader = FifoReader(self, name, fd, ring)
        except (OSError, ValueError) as e:
            log.error("%s cannot be polled: %s", path, e)
            os.close(fd)
            self.state.finished(name)
            return m.Failure("opening")
        old = self.readers.get(name)
        self.readers[name] = reader
        if old is not None:
            old.stop()  # the previous tender's fifo; the new one is active
        return m.Empty()

    def fifo_finished(self, reader: FifoReader) -> None:
        if self.readers.get(reader.name) is reader:
            del self.readers[reader.name]
            self.state.finished(reader.name)

    def output(self, name: Name, ring: Ring, lines: list[bytes]) -> list[Subscriber]:
        """Store and send lines; returns the subscribers with :data:`PAUSE_AT` bytes unsent."""
        now = Ptime.now()
        subs = self.state.output(name, ring, lines, now)
        frames: dict[int, list[bytes]] = {}
        congested = []
        for version, sub in subs:
            data = frames.get(version)
            if data is None:
                data = frames[version] = [data_frame(name, version, now, line) for line in lines]
            if not sub.send(b"".join(data)):
                self._drop(name, sub, "write failed or too slow")
            elif _unsent(sub) >= PAUSE_AT:
                congested.append(sub)
        return congested

    def _drop(self, name: Name, sub: Subscriber, why: str) -> None:
        log.info("dropping subscriber of %s (%s)", name, why)
        sub.close()
        self.state.unsubscribe(name, sub)

    async def relieve(self, reader: FifoReader, congested: list[Subscriber]) -> None:
        """Read the paused fifo of ``reader`` again once ``congested`` took their output
        (or were dropped for taking nothing for :data:`STALL_TIMEOUT` seconds).

        The subscribers are waited for together: the pause lasts at most
        :data:`STALL_TIMEOUT` seconds without progress, whatever their number.
        """
        loop = asyncio.get_running_loop()
        progress = {id(sub): (_unsent(sub), loop.time()) for sub in congested}
        try:
            waiting = list(congested)
            while waiting:
                still = []
                for sub in waiting:
                    transport = sub.conn.writer.transport
                    if sub.closed or transport.is_closing():
                        continue
                    now_unsent = _unsent(sub)
                    if now_unsent < PAUSE_AT // 2:
                        continue  # it took most of it: read on
                    last, at = progress[id(sub)]
                    if now_unsent < last:
                        progress[id(sub)] = (now_unsent, loop.time())
                    elif loop.time() - at >= STALL_TIMEOUT:
                        self._drop(reader.name, sub, f"took nothing for {STALL_TIMEOUT:g} s")
                        continue
                    still.append(sub)
                waiting = still
                if waiting:
                    await asyncio.sleep(STALL_TICK)
        finally:
            reader.resume()

    async def flush_subscribers(self, timeout: float) -> None:
        """Let every subscriber take what was sent to it (at most ``timeout`` seconds)."""
        writers = [sub.conn.writer for entry in self.state.paths.values()
                   for console in entry.consoles.values() for _, sub in console.subscribers
                   if not sub.closed]

        async def drain(w: asyncio.StreamWriter) -> None:
            try:
                await w.drain()
            except (ConnectionError, OSError, RuntimeError):
                pass
        if writers:
            await asyncio.wait([asyncio.ensure_future(drain(w)) for w in writers], timeout=timeout)

    # -- connections ----------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer, max_size=MAX_REQUEST)
        log.info("handling connection")
        try:
            await self._serve(conn)
        except (ConnectionError, OSError) as e:
            log.info("connection error: %s", e)
        finally:
            conn.close()
            log.info("disconnected")

    async def _serve(self, conn: Conn) -> None:
        while True:
            try:
                w = await conn.read_wire()
            except AlbatrossError as e:
                log.error("bad message, closing the connection: %s", e.message)
                return
            if w is None:
                return
            p, name = w.payload, w.header.name
            if not isinstance(p, (m.ConsoleAdd, m.ConsoleSubscribe, m.ConsoleListInactive)):
                log.error("unexpected wire %s", type(p).__name__)
                return
            if isinstance(p, m.ConsoleListInactive):
                reply = m.Failure("name used") if name.label is not None else \
                    m.Consoles(tuple(self.state.list_inactive(name.path)))
                await conn.write_wire(Wire(w.header, reply))
                return
            if name.label is None:
                await conn.write_wire(Wire(w.header, m.Failure("path used instead of name")))
                return
            if isinstance(p, m.ConsoleAdd):
                await conn.write_wire(Wire(w.header, self.add(name, p.max_unikernels)))
                continue
            await self._subscribe(conn, w.header, p)
            return

    async def _subscribe(self, conn: Conn, header: Header, cmd: m.ConsoleSubscribe) -> None:
        name, version = header.name, header.version
        sub = Subscriber(conn, version, MAX_PENDING)
        res = self.state.subscribe(name, version, sub, cmd.since, cmd.count)
        for old in res.to_close:
            old.close()
        try:
            if sub.closed:  # upstream may drop the new subscriber itself
                return
            await conn.write_wire(Wire(header, m.String(res.reply)))
            for i, (ts, line) in enumerate(res.history):
                conn.writer.write(data_frame(name, version, ts, line))
                if i % 64 == 63:
                    await conn.writer.drain()
            await conn.writer.drain()
            # live lines flow from the fifo readers; any input ends the subscription
            try:
                await conn.read_frame()
            except AlbatrossError:
                pass
        finally:
            self.state.unsubscribe(name, sub)
            sub.close()


async def serve(tmpdir: str, systemd: bool, max_subscribers: int,
                ready: asyncio.Event | None = None) -> None:
    daemon = ConsoleDaemon(tmpdir, max_subscribers)
    limits.raise_nofile()
    limits.quiet_accept_errors()
    sock = service_socket(tmpdir, "console", systemd)
    server = await asyncio.start_unix_server(daemon.handle, sock=sock, limit=MAX_REQUEST)
    sd_notify("READY=1")
    if ready is not None:
        ready.set()
    # SIGTERM is handled between two callbacks, never between reading a fifo and
    # sending what was read: a line is either delivered or still waits in the fifo
    # for the next albatross-console (albatrossd keeps a read end open meanwhile)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        serving = loop.create_task(server.serve_forever())
        await stop.wait()
        log.info("terminating")
        for reader in list(daemon.readers.values()):
            reader.pause()
        server.close()
        await daemon.flush_subscribers(FLUSH_TIMEOUT)
        serving.cancel()


def _max_subscribers(_ctx, _param, value: int) -> int:
    if value < 1:
        raise click.BadParameter("max subscribers must be greater than or equal to 1")
    return value


@click.command("albatross-console")
@daemon_options
@click.option("--max-subscribers", type=int, default=5, show_default=True, callback=_max_subscribers,
              help="Maximum subscribers per unikernel console.")
@influx_option
def command(tmpdir: str, systemd: bool, verbosity: int, use_syslog: bool, max_subscribers: int,
            influx: str | None) -> None:
    """Reads unikernel consoles, keeps the last 1024 lines of each and streams them."""
    setup_logging("albatross-console", verbosity, use_syslog)
    asyncio.run(run_with_metrics(serve(tmpdir, systemd, max_subscribers), influx, "albatross_console"))


def main(argv: list[str] | None = None) -> None:
    run_cli(command, argv, "albatross-console")


if __name__ == "__main__":
    main()
