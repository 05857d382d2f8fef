"""InfluxDB line protocol for albatross statistics (behaviour.md §5.3), and
the parsing of the ``--influx`` target.

The encoding follows upstream's albatross-influx byte for byte: fixed
measurement and field names (``maxflt`` carries majflt), integers printed
unsigned with an ``i`` suffix, times as ``<sec>.<6-digit µs>``, no
timestamps, tag values not escaped, vmm counter names with ``,`` `` `` and
``=`` backslash-escaped; lines joined by ``\\n`` and terminated by one.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from dataclasses import dataclass

from ..core import Ifdata, KinfoMem, Rusage, Stats, Timeval
from ..policy.names import Name

DEFAULT_PORT = 8094


def u64(v: int) -> str:
    return f"{v & 0xFFFFFFFFFFFFFFFF}i"


def u32(v: int) -> str:
    return f"{v & 0xFFFFFFFF}i"


def tv(t: Timeval) -> str:
    return f"{t.seconds & 0xFFFFFFFFFFFFFFFF}.{t.microseconds:06d}"


def escape_key(s: str) -> str:
    return s.replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


def _line(measurement: str, tags: str, fields: list[tuple[str, str]]) -> str:
    return f"{measurement},{tags} " + ",".join(f"{k}={v}" for k, v in fields)


def encode_rusage(vm: str, r: Rusage) -> str:
    return _line("resource_usage", f"vm={vm}", [
        ("utime", tv(r.utime)), ("stime", tv(r.stime)), ("maxrss", u64(r.maxrss)),
        ("ixrss", u64(r.ixrss)), ("idrss", u64(r.idrss)), ("isrss", u64(r.isrss)),
        ("minflt", u64(r.minflt)), ("maxflt", u64(r.majflt)), ("nswap", u64(r.nswap)),
        ("inblock", u64(r.inblock)), ("outblock", u64(r.outblock)), ("msgsnd", u64(r.msgsnd)),
        ("msgrcv", u64(r.msgrcv)), ("nsignals", u64(r.nsignals)), ("nvcsw", u64(r.nvcsw)),
        ("nivcsw", u64(r.nivcsw))])


def encode_kinfo_mem(vm: str, k: KinfoMem, now: float) -> str:
    uptime = now - (k.start.seconds + k.start.microseconds / 1_000_000)
    return _line("kinfo_mem", f"vm={vm}", [
        ("vsize", u64(k.vsize)), ("rss", u64(k.rss)), ("tsize", u64(k.tsize)), ("dsize", u64(k.dsize)),
        ("ssize", u64(k.ssize)), ("cow_faults", u64(k.cow)), ("runtime", u64(k.runtime)),
        ("uptime", "%f" % uptime)])


def encode_vmm(vm: str, counters: tuple[tuple[str, int], ...]) -> str:
    return _line("vmm", f"vm={vm}", [(escape_key(k), u64(v)) for k, v in counters])


def encode_ifdata(vm: str, i: Ifdata) -> str:
    return _line("interface", f"vm={vm},bridge={i.bridge}", [
        ("send_queue_length", u32(i.send_length)), ("max_send_queue_length", u32(i.max_send_length)),
        ("send_queue_drops", u32(i.send_drops)), ("mtu", u32(i.mtu)), ("baudrate", u64(i.baudrate)),
        ("vm_to_host_packets", u64(i.input_packets)), ("vm_to_host_errors", u64(i.input_errors)),
        ("vm_to_host_bytes", u64(i.input_bytes)), ("vm_to_host_mcast", u64(i.input_mcast)),
        ("vm_to_host_dropped", u64(i.input_dropped)), ("collisions", u64(i.collisions)),
        ("host_to_vm_packets", u64(i.output_packets)), ("host_to_vm_errors", u64(i.output_errors)),
        ("host_to_vm_bytes", u64(i.output_bytes)), ("host_to_vm_mcast", u64(i.output_mcast)),
        ("host_to_vm_dropped", u64(i.output_dropped))])


def vm_tag(name: Name, drop_path: bool = True) -> str:
    if drop_path and name.label is not None:
        return name.label
    return name.to_string()


def encode_stats(name: Name, stats: Stats, drop_path: bool = True, now: float | None = None) -> str:
    """All lines of one sample, each terminated by a newline."""
    vm = vm_tag(name, drop_path)
    lines = [encode_rusage(vm, stats.rusage)]
    if stats.kinfo_mem is not None:
        lines.append(encode_kinfo_mem(vm, stats.kinfo_mem, time.time() if now is None else now))
    if stats.vmm is not None:
        lines.append(encode_vmm(vm, stats.vmm))
    lines.extend(encode_ifdata(vm, i) for i in stats.ifdata)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- targets

@dataclass(frozen=True)
class TcpTarget:
    host: str
    port: int


@dataclass(frozen=True)
class HttpTarget:
    url: str  # http://HOST:PORT/write?db=NAME


Target = TcpTarget | HttpTarget


def parse_target(s: str) -> Target | str:
    """``HOST[:PORT]`` (IPv4/IPv6 address, port 8094) or an http:// write URL; else an error message."""
    if s.startswith(("http://", "https://")):
        u = urllib.parse.urlsplit(s)
        if not u.hostname:
            return f"invalid influx URL {s!r}"
        return HttpTarget(s)
    host, port = s, DEFAULT_PORT
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            return f"invalid influx address {s!r}"
        host, rest = s[1:close], s[close + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return f"invalid influx port in {s!r}"
            port = int(rest[1:])
    elif s.count(":") == 1:
        host, p = s.split(":")
        if not p.isdigit():
            return f"invalid influx port in {s!r}"
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"invalid influx address {host!r} (an IPv4 or IPv6 address is expected)"
    if not 0 < port < 65536:
        return f"invalid influx port {port}"
    return TcpTarget(host, port)
