"""albatross-stats: samples unikernel processes and taps, serves subscribers
(behaviour.md §4, wire.md §5.4).

It connects to albatrossd (``util/vmmd.sock``), announces itself with
``Stats_initial`` and then answers the ``Stats_add``/``Stats_remove``
commands albatrossd sends on that connection; it also serves its own socket
``util/stat.sock``.  Every ``--interval`` seconds each unikernel with a
subscriber is sampled: rusage and memory from /proc (pure mapping in
:mod:`.stats_core`), tap counters from one netlink link dump.  With
``--gather-bhyve-stats`` (upstream's flag: BHyve's vmm counters on FreeBSD)
the vmm counters of an hvt guest are KVM's statistics of that process's VM,
read from debugfs (``/sys/kernel/debug/kvm/<pid>-<fd>/``): they need debugfs
mounted and readable; counters the kernel refuses (lockdown) are left out,
and a guest without any gets none, like a spt one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import socket
from collections.abc import Callable

import click

from ..core import Stats, Timeval
from ..errors import AlbatrossError
from ..wire import Header, Wire, encode_wire, frame
from ..wire import messages as m
from ..policy.names import ROOT
from .common import (
    Conn, Peer, daemon_options, open_unix, run_cli, sd_notify, service_socket, setup_logging, socket_path,
)
from . import limits
from .metrics import influx_option, run_with_metrics
from .stats_core import ProcError, Registration, StatsState, ifdata_of_link, kvm_counters, linux_rusage

log = logging.getLogger("albatross.stats")

MAX_REQUEST = 64 * 1024

RECONNECT_DELAY = 1.0


# ---------------------------------------------------------------- sampling

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


def proc_rusage(pid: int):
    """rusage and kinfo_mem of ``pid`` from /proc, or a ProcError."""
    base = f"/proc/{pid}"
    try:
        ctime = os.stat(base).st_ctime
        stat, statm, status = _read(base + "/stat"), _read(base + "/statm"), _read(base + "/status")
    except OSError as e:
        return ProcError(f"error reading {base}: {e.strerror}")
    start = Timeval(int(ctime), int((ctime % 1) * 1_000_000))
    return linux_rusage(stat, statm, status, CLK_TCK, start)


class LinkCounters:
    """Interface counters by ifindex, from one netlink dump per round."""

    def __init__(self) -> None:
        self._ipr = None

    def dump(self) -> dict[int, tuple[int, int, dict]]:
        try:
            if self._ipr is None:
                from pyroute2 import IPRoute
                self._ipr = IPRoute()
            out = {}
            for link in self._ipr.get_links():
                st = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS") or {}
                out[link["index"]] = (link["flags"], link.get_attr("IFLA_MTU") or 0, dict(st))
            return out
        except Exception as e:  # noqa: BLE001 - netlink trouble only omits interfaces
            log.warning("netlink link dump failed: %s", e)
            self.close()
            return {}

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:  # noqa: BLE001
                pass
            self._ipr = None


KVM_DEBUGFS = "/sys/kernel/debug/kvm"
VmmOf = Callable[[int], "tuple[tuple[str, int], ...] | None"]
_KVM_VM_DIR = re.compile(r"(\d+)-\d+")


class KvmCounters:
    """KVM statistics of guests by tender pid, from debugfs.  Files that
    cannot be read (EPERM under kernel lockdown) are remembered and not
    tried again for that directory."""

    def __init__(self, root: str = KVM_DEBUGFS):
        self.root = root
        self.unreadable: dict[str, set[str]] = {}
        self.warned = False

    def scan(self) -> dict[int, str]:
        """{pid: VM directory} of the guests that exist now."""
        try:
            names = os.listdir(self.root)
        except OSError as e:
            if not self.warned:
                self.warned = True
                log.warning("KVM statistics unavailable (%s: %s); is debugfs mounted?", self.root, e.strerror)
            return {}
        out = {}
        for n in names:
            mo = _KVM_VM_DIR.fullmatch(n)
            if mo:
                out.setdefault(int(mo.group(1)), os.path.join(self.root, n))
        live = set(out.values())
        for gone in [d for d in self.unreadable if d not in live]:
            del self.unreadable[gone]
        return out

    def read(self, vmdir: str) -> tuple[tuple[str, int], ...] | None:
        skip = self.unreadable.setdefault(vmdir, set())
        entries = []
        try:
            names = os.listdir(vmdir)
        except OSError:
            return None
        for n in names:
            if n in skip:
                continue
            try:
                with open(os.path.join(vmdir, n), encoding="ascii", errors="replace") as fh:
                    entries.append((n, fh.read(64)))
            except (IsADirectoryError, PermissionError):  # a directory, or refused under lockdown
                skip.add(n)
            except OSError:  # the guest went away meanwhile
                return None
        return kvm_counters(entries)

    def reader(self) -> VmmOf:
        """Counters by tender pid for one sampling round (one scan of debugfs)."""
        dirs = self.scan()
        return lambda pid: self.read(dirs[pid]) if pid in dirs else None


def resolve_tap(tap: str) -> int | None:
    try:
        return socket.if_nametoindex(tap)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None


def no_vmm(_pid: int) -> None:
    return None


def make_sampler(links: dict[int, tuple[int, int, dict]], vmm_of: VmmOf = no_vmm):
    def sample(reg: Registration) -> Stats | ProcError:
        ru = proc_rusage(reg.pid)
        if isinstance(ru, ProcError):
            return ru
        ifd = []
        for netname, idx, tap in reg.nics:
            link = links.get(idx)
            if link is None:
                log.warning("failed to get ifdata for %s", tap)
                continue
            ifd.append(ifdata_of_link(netname, *link))
        ifd.reverse()  # upstream accumulates by prepending
        return Stats(ru[0], ru[1], vmm_of(reg.pid), tuple(ifd))
    return sample


# ------------------------------------------------------------------ daemon

class StatsDaemon:
    def __init__(self, tmpdir: str, interval: float, kvm: KvmCounters | None = None):
        self.tmpdir = tmpdir
        self.interval = interval
        self.state: StatsState[Peer] = StatsState(log.info)
        self.links = LinkCounters()
        self.kvm = kvm

    async def serve_conn(self, conn: Conn) -> None:
        """Answer commands on a connection until it fails or a failure is replied."""
        peer = Peer(conn)
        try:
            while True:
                try:
                    w = await conn.read_wire()
                except AlbatrossError as e:
                    log.error("bad message, closing the connection: %s", e.message)
                    return
                if w is None:
                    return
                res = self.state.handle(w, peer, resolve_tap)
                if res.failed:
                    log.warning("%s: %s", w.header.name, res.reply.message)
                await conn.write_wire(Wire(w.header, res.reply))
                if res.to_close is not None:
                    res.to_close.close()
                if res.failed:
                    return
        except (ConnectionError, OSError) as e:
            log.info("connection error: %s", e)
        finally:
            self.state.unsubscribe(peer)
            peer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.serve_conn(Conn(reader, writer, max_size=MAX_REQUEST))

    async def tick(self) -> int:
        """One sampling round; returns the number of messages sent."""
        links: dict = {}
        if any(r.nics for r in self.state.units.values()):
            # pyroute2's synchronous API refuses to run inside an event loop
            links = await asyncio.to_thread(self.links.dump)
        vmm_of = self.kvm.reader() if self.kvm is not None and self.state.units else no_vmm
        outs, _dropped = self.state.tick(make_sampler(links, vmm_of))
        sent = 0
        for peer, w in outs:
            if peer.send(frame(encode_wire(w))):
                sent += 1
            else:
                log.debug("removing subscriber (write failed or too slow)")
                self.state.unsubscribe(peer)
                peer.close()
        return sent

    async def timer(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.interval
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - one bad round must not stop sampling
                log.exception("statistics round failed")

    async def vmmd(self) -> None:
        """Keep the channel to albatrossd: connect, Stats_initial, serve; retry every 1 s."""
        path = socket_path(self.tmpdir, "vmmd")
        first = True
        while True:
            if not first:
                await asyncio.sleep(RECONNECT_DELAY)
            first = False
            try:
                conn = await open_unix(path)
            except OSError as e:
                log.error("cannot connect to %s: %s", path, e)
                continue
            conn.max_size = MAX_REQUEST
            header = Header(ROOT, 0)
            try:
                await conn.write_wire(Wire(header, m.StatsInitial()))
                reply = await conn.read_wire()
            except (AlbatrossError, ConnectionError, OSError) as e:
                log.error("error during stats initial with vmmd: %s", e)
                conn.close()
                continue
            if reply is None or reply.payload != m.Empty() or reply.header.sequence != header.sequence:
                log.error("issue reading from vmmd: %r", reply)
                conn.close()
                continue
            log.info("connected to vmmd")
            await self.serve_conn(conn)
            log.warning("lost the connection to vmmd, forgetting all unikernels")
            self.state.reset()


async def serve(tmpdir: str, systemd: bool, interval: float, kvm: KvmCounters | None = None) -> None:
    daemon = StatsDaemon(tmpdir, interval, kvm)
    limits.raise_nofile()
    limits.quiet_accept_errors()
    sock = service_socket(tmpdir, "stats", systemd)
    server = await asyncio.start_unix_server(daemon.handle, sock=sock, limit=MAX_REQUEST)
    tasks = [asyncio.create_task(daemon.vmmd()), asyncio.create_task(daemon.timer())]
    sd_notify("READY=1")
    try:
        async with server:
            await server.serve_forever()
    finally:
        for t in tasks:
            t.cancel()
        daemon.links.close()


def _interval(_ctx, _param, value: float) -> float:
    if value <= 0:
        raise click.BadParameter("interval must be positive")
    return value


@click.command("albatross-stats")
@daemon_options
@click.option("--interval", type=float, default=10, show_default=True, callback=_interval,
              help="Interval between statistics gatherings (in seconds).")
@click.option("--gather-bhyve-stats", is_flag=True,
              help="Gather hypervisor debug statistics (FreeBSD: BHyve's vmm counters; "
                   "Linux: KVM's from debugfs).")
@influx_option
def command(tmpdir: str, systemd: bool, verbosity: int, use_syslog: bool, interval: float,
            gather_bhyve_stats: bool, influx: str | None) -> None:
    """Statistics collection of unikernels."""
    setup_logging("albatross-stats", verbosity, use_syslog)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    kvm = None
    if gather_bhyve_stats:
        if platform.system() == "Linux":
            kvm = KvmCounters()
        else:
            log.warning("--gather-bhyve-stats: BHyve's vmm counters are not implemented here, ignored")
    asyncio.run(run_with_metrics(serve(tmpdir, systemd, interval, kvm), influx, "albatross_stats"))


def main(argv: list[str] | None = None) -> None:
    run_cli(command, argv, "albatross-stats")


if __name__ == "__main__":
    main()
