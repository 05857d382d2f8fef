"""Own metrics of a daemon (``--influx HOST[:PORT]``), pushed every 10 s in
InfluxDB line protocol over TCP, reconnecting when the receiver goes away.

Every line is tagged ``vm=<process name>`` (``albatross``,
``albatross_console``, ``albatross_stats``) like upstream's.  A daemon may
add its own measurements through ``extra``: a function returning complete
lines without the ``vm`` tag, which is inserted here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from typing import Callable

import click

from ..errors import AlbatrossError

log = logging.getLogger("albatross.metrics")

DEFAULT_PORT = 8094
INTERVAL = 10.0


def parse_target(text: str) -> tuple[str, int]:
    """``HOST[:PORT]``; the last ':' separates the port (bracket IPv6 literals)."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p)
    if not host:
        raise AlbatrossError(f"invalid influx address {text!r}")
    return host, port


def _port(p: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise AlbatrossError(f"invalid port {p!r}")
    return int(p)


def tag_lines(lines: list[str], vm: str) -> list[str]:
    """Insert the ``vm`` tag after each line's measurement name."""
    out = []
    for line in lines:
        head, sep, rest = line.partition(" ")
        out.append(f"{head},vm={vm}{sep}{rest}")
    return out


def process_lines() -> list[str]:
    """Resource usage and memory of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    lines = [
        f"resource_usage utime={ru.ru_utime:.6f},stime={ru.ru_stime:.6f},maxrss={ru.ru_maxrss}i,"
        f"minflt={ru.ru_minflt}i,majflt={ru.ru_majflt}i,nvcsw={ru.ru_nvcsw}i,nivcsw={ru.ru_nivcsw}i"
    ]
    try:
        with open("/proc/self/statm") as fh:
            size, rss = (int(x) for x in fh.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        lines.append(f"memory vsize={size * page}i,rss={rss * page}i")
    except (OSError, ValueError):
        pass
    return lines


async def push_forever(target: str, vm: str, extra: Callable[[], list[str]] | None = None,
                       interval: float = INTERVAL) -> None:
    host, port = parse_target(target)
    writer: asyncio.StreamWriter | None = None
    while True:
        if writer is None:
            try:
                _, writer = await asyncio.open_connection(host, port)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError as e:
                log.warning("influx %s:%d unreachable: %s", host, port, e)
                writer = None
        if writer is not None:
            lines = process_lines() + (extra() if extra else [])
            try:
                writer.write(("\n".join(tag_lines(lines, vm)) + "\n").encode())
                await writer.drain()
            except OSError as e:
                log.warning("influx write failed: %s", e)
                writer.close()
                writer = None
        await asyncio.sleep(interval)


def start(target: str | None, vm: str, extra: Callable[[], list[str]] | None = None) -> asyncio.Task | None:
    """Start pushing metrics if a target was given (call inside the event loop)."""
    if not target:
        return None
    return asyncio.get_running_loop().create_task(push_forever(target, vm, extra))


async def run_with_metrics(main, target: str | None, vm: str, extra: Callable[[], list[str]] | None = None):
    """Await the daemon's main coroutine while pushing its metrics."""
    task = start(target, vm, extra)
    try:
        return await main
    finally:
        if task is not None:
            task.cancel()


def _validate(_ctx, _param, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_target(value)
        except AlbatrossError as e:
            raise click.BadParameter(e.message) from None
    return value


def influx_option(f):
    """``--influx HOST[:PORT]``: where the daemon pushes its own metrics."""
    return click.option("--influx", default=None, metavar="HOST[:PORT]", callback=_validate,
                        help="Push own metrics to this InfluxDB/Telegraf line-protocol listener "
                             "(port 8094 by default).")(f)


def resource_lines(resources) -> list[str]:
    """albatrossd's per-domain figures: policy limits and what is in use below each path."""
    lines = []
    for name, pol in resources.policies.items():
        domain = name.to_string()
        count, memory = resources.unikernel_usage(name.path)
        block = "" if pol.block is None else f",block={pol.block}i"
        lines.append(f"albatross-policies,domain={domain} unikernels={pol.unikernels}i,memory={pol.memory}i{block}")
        lines.append(f"albatross-unikernels,domain={domain} running={count}i,memory={memory}i,"
                     f"block={resources.total_block_usage(name.path)}i")
    return lines
