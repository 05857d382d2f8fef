"""albatross-influx: forwards albatross-stats samples to InfluxDB (behaviour.md §5).

``--influx=HOST[:PORT]`` writes line protocol over TCP (Telegraf's
socket_listener, port 8094 by default) as upstream does;
``--influx=http://HOST:PORT/write?db=NAME`` (a port extension) POSTs each
sample to InfluxDB's HTTP write API instead.  Both the stats socket and the
sink are retried every 5 seconds when they go away.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import urllib.error
import urllib.request

import click

from ..errors import AlbatrossError
from ..policy.names import ROOT, Name
from ..wire import Header, Wire
from ..wire import messages as m
from .common import Conn, daemon_options, open_unix, run_cli, setup_logging, socket_path
from .influx_core import HttpTarget, Target, TcpTarget, encode_stats, parse_target

log = logging.getLogger("albatross.influx")

RETRY_DELAY = 5.0
MAX_MESSAGE = 1 << 20
SOME_ERROR = 123  # cmdliner's exit code for a term error


class SinkError(Exception):
    pass


class TcpSink:
    def __init__(self, target: TcpTarget):
        self.target = target
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        _reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.writer = writer

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def write(self, data: bytes) -> None:
        assert self.writer is not None
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise SinkError(str(e)) from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def describe(self) -> str:
        return f"{self.target.host}:{self.target.port}"


class HttpSink:
    """One POST per sample; the HTTP API has no connection to keep."""

    def __init__(self, target: HttpTarget):
        self.target = target
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    def _post(self, data: bytes) -> None:
        req = urllib.request.Request(self.target.url, data=data, method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status // 100 != 2:
                raise SinkError(f"HTTP status {resp.status}")

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._post, data)
        except urllib.error.HTTPError as e:
            raise SinkError(f"HTTP {e.code}: {e.read(200).decode(errors='replace')}") from None
        except (OSError, ValueError) as e:
            raise SinkError(str(e)) from None

    def close(self) -> None:
        self.connected = False

    def describe(self) -> str:
        return self.target.url


def make_sink(target: Target) -> TcpSink | HttpSink:
    return HttpSink(target) if isinstance(target, HttpTarget) else TcpSink(target)


async def connect_stats(path: str, delay: float) -> Conn:
    while True:
        try:
            conn = await open_unix(path)
            conn.max_size = MAX_MESSAGE
            return conn
        except OSError as e:
            log.warning("error connecting to socket %s: %s, retrying in %gs", path, e, delay)
            await asyncio.sleep(delay)


async def run(target: Target, name: Name, drop_path: bool, tmpdir: str,
              delay: float = RETRY_DELAY) -> str | None:
    """Forward samples forever; returns an error message when it must stop."""
    path = socket_path(tmpdir, "stats")
    sequence = 1
    sink = make_sink(target)
    while True:
        conn = await connect_stats(path, delay)
        log.info("connected to %s, subscribing to %s", path, name)
        try:
            await conn.write_wire(Wire(Header(name, sequence), m.StatsSubscribe()))
        except (ConnectionError, OSError) as e:
            return f"error {e} while writing to stat socket"
        sequence += 1
        while True:
            while not sink.connected:
                try:
                    await sink.connect()
                except OSError as e:
                    log.warning("error connecting to influxd %s: %s, retrying in %gs",
                                sink.describe(), e, delay)
                    await asyncio.sleep(delay)
            try:
                w = await conn.read_wire()
            except (AlbatrossError, ConnectionError, OSError) as e:
                log.error("error %s while reading the stats socket", e)
                w = None
            if w is None:
                log.warning("stats socket closed, starting over")
                sink.close()
                conn.close()
                break
            if not isinstance(w.payload, m.StatsData):
                log.info("ignoring %s", type(w.payload).__name__)
                continue
            out = encode_stats(w.header.name, w.payload.stats, drop_path).encode("utf-8", "surrogateescape")
            try:
                await sink.write(out)
                log.debug("wrote %d bytes", len(out))
            except SinkError as e:
                log.error("error %s while writing to influx (%s)", e, w.header.name)
                sink.close()


def _name(_ctx, _param, value: str) -> Name:
    try:
        return Name.of_string(value)
    except AlbatrossError as e:
        raise click.BadParameter(e.message) from None


@click.command("albatross-influx")
@daemon_options
@click.option("--influx", default=None, metavar="HOST[:PORT]|URL",
              help="InfluxDB/Telegraf line-protocol TCP listener (port 8094), or http://HOST:PORT/write?db=DB.")
@click.option("-n", "--name", default=":", callback=_name, help="Name (prefix) to subscribe to.")
@click.option("--no-drop-path", is_flag=True, help="Do not drop the unikernel path, use the full name.")
@click.option("--retry-delay", type=float, default=RETRY_DELAY, hidden=True)
def command(tmpdir: str, systemd: bool, verbosity: int, use_syslog: bool, influx: str | None,
            name: Name, no_drop_path: bool, retry_delay: float) -> None:
    """Albatross Influx connector: pushes albatross-stats samples to InfluxDB."""
    setup_logging("albatross-influx", verbosity, use_syslog)
    if influx is None:
        print("albatross-influx: influx host not provided", file=sys.stderr)
        sys.exit(SOME_ERROR)
    target = parse_target(influx)
    if isinstance(target, str):
        raise click.BadParameter(target, param_hint="--influx")
    err = asyncio.run(run(target, name or ROOT, not no_drop_path, tmpdir, retry_delay))
    if err:
        print(f"albatross-influx: {err}", file=sys.stderr)
        sys.exit(SOME_ERROR)


def main(argv: list[str] | None = None) -> None:
    run_cli(command, argv, "albatross-influx")


if __name__ == "__main__":
    main()
