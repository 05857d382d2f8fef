"""albatross-stats without I/O (behaviour.md §4, wire.md §5.4).

* :func:`linux_rusage` maps the texts of ``/proc/<pid>/stat``, ``statm`` and
  ``status`` to the wire's rusage and kinfo_mem exactly as upstream does
  (rss and maxrss stay in pages, like upstream; no page-size conversion).
* :func:`ifdata_of_link` maps netlink link counters to an ``Ifdata``.
* :func:`kvm_counters` picks the scalar KVM statistics of a guest out of
  its debugfs files (Linux's counterpart of BHyve's vmm counters).
* :class:`StatsState` holds the registered unikernels and the subscribers
  and decides what each command replies and what each sampling round sends.

Errors are values (:class:`ProcError`), never exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..core import MAX_INT, Ifdata, KinfoMem, Rusage, Stats, Timeval
from ..policy.names import Name
from ..wire import Header, Wire
from ..wire import messages as m

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class ProcError:
    message: str


# ------------------------------------------------------------ /proc mapping

def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def parse_proc_stat(text: str) -> list[str] | ProcError:
    """pid, comm and the fields after ``(comm)``: index i is proc(5) field i+1."""
    line = _first_line(text)
    a, b = line.find("("), line.rfind(")")
    if a < 1 or b < a:
        return ProcError("unable to parse /proc/<pid>/stat")
    return [line[:a - 1], line[a + 1:b]] + line[b + 2:].split(" ")


def parse_proc_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, _, value = line.partition(":")
        out.setdefault(key, value.strip())
    return out


def _int(s: str) -> int | None:
    try:
        return int(s, 10)
    except ValueError:
        return None


def ticks_to_timeval(ticks: int, clk_tck: int) -> Timeval:
    return Timeval(ticks // clk_tck, (ticks % clk_tck) * 1_000_000 // clk_tck)


def linux_rusage(stat: str, statm: str, status: str, clk_tck: int,
                 start: Timeval) -> tuple[Rusage, KinfoMem] | ProcError:
    """Upstream's Linux mapping (behaviour.md §4.4); ``start`` = ctime of /proc/<pid>."""
    fields = parse_proc_stat(stat)
    if isinstance(fields, ProcError):
        return fields
    statm_vals = _first_line(statm).split(" ")
    if len(fields) < 52 or len(statm_vals) < 7:
        return ProcError("couldn't read /proc/<pid>/stat")
    if clk_tck <= 0:
        return ProcError(f"invalid clock tick {clk_tck}")
    values = [_int(fields[i]) for i in (9, 11, 13, 14, 22, 23, 35)] + [_int(statm_vals[i]) for i in (3, 5)]
    if any(v is None for v in values):
        return ProcError("couldn't parse integer")
    minflt, majflt, utime, stime, vsize, rss, nswap, tsize, dsize = values  # type: ignore[misc]
    st = parse_proc_status(status)
    ctx = [_int(st.get(k, "")) for k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")]
    if ctx[0] is None or ctx[1] is None:
        return ProcError("error parsing /proc/<pid>/status")
    rusage = Rusage(
        utime=ticks_to_timeval(utime, clk_tck), stime=ticks_to_timeval(stime, clk_tck),
        maxrss=rss, minflt=minflt, majflt=majflt, nswap=nswap, nvcsw=ctx[0], nivcsw=ctx[1])
    kinfo = KinfoMem(vsize=vsize, rss=rss, tsize=tsize, dsize=dsize, ssize=dsize,
                     runtime=(utime + stime) * 1_000_000 // clk_tck, cow=0, start=start)
    return rusage, kinfo


def ifdata_of_link(bridge: str, flags: int, mtu: int, counters: Mapping[str, int]) -> Ifdata:
    """Netlink link statistics (IFLA_STATS64 keys) as upstream's libnl mapping."""
    c = lambda k: int(counters.get(k, 0) or 0)  # noqa: E731
    return Ifdata(
        bridge=bridge, flags=flags & 0xFFFFFFFF, mtu=mtu & 0xFFFFFFFF,
        input_packets=c("rx_packets"), input_errors=c("rx_errors"),
        output_packets=c("tx_packets"), output_errors=c("tx_errors"),
        collisions=c("collisions"), input_bytes=c("rx_bytes"), output_bytes=c("tx_bytes"),
        input_mcast=c("multicast"), output_mcast=0,
        input_dropped=c("rx_dropped"), output_dropped=c("tx_dropped"))


def kvm_counter(text: str) -> int | None:
    """One KVM statistic as debugfs shows it: a single non-negative decimal
    integer (histograms and other shapes give None).  Clamped to the wire's
    integer range."""
    t = text.strip()
    if not t.isascii() or not t.isdigit():
        return None
    return min(int(t), MAX_INT)


def kvm_counters(entries: Iterable[tuple[str, str]]) -> tuple[tuple[str, int], ...] | None:
    """(name, value) pairs of the scalar counters among debugfs ``entries``
    (file name, content), sorted by name; None when there are none."""
    out = sorted((name, v) for name, text in entries if (v := kvm_counter(text)) is not None)
    return tuple(out) or None


# ------------------------------------------------------------------ state

@dataclass(frozen=True, slots=True)
class Registration:
    name: Name
    pid: int
    vmmdev: str
    nics: tuple[tuple[str, int, str], ...]  # (unikernel-side net name, ifindex, tap)


@dataclass(frozen=True, slots=True)
class Subscription(Generic[S]):
    name: Name
    version: int
    sub: S


@dataclass(frozen=True, slots=True)
class Handled(Generic[S]):
    """What to answer (and whom to close) for one request."""

    reply: m.Reply | m.Failure
    to_close: S | None = None

    @property
    def failed(self) -> bool:
        return isinstance(self.reply, m.Failure)


def _key(name: Name) -> tuple[bytes, ...]:
    return tuple(x.encode("utf-8", "surrogateescape") for x in name.labels())


class StatsState(Generic[S]):
    def __init__(self, log: Callable[[str], None] | None = None):
        self.units: dict[tuple[bytes, ...], Registration] = {}
        self.subs: dict[tuple[bytes, ...], Subscription[S]] = {}
        self.log = log or (lambda _msg: None)

    # -- commands --------------------------------------------------------------
    def handle(self, w: Wire, sub: S, resolve: Callable[[str], int | None]) -> Handled[S]:
        """Answer one request arriving on connection ``sub``; ``resolve`` maps tap -> ifindex."""
        p, name = w.payload, w.header.name
        if isinstance(p, m.StatsInitial):
            return Handled(m.Failure("unexpected message initial"))
        if isinstance(p, m.StatsAdd):
            nics = []
            for netname, tap in p.taps:
                idx = resolve(tap)
                if idx is None:
                    self.log(f"failed to get ifindex for: {tap!r}")
                else:
                    nics.append((netname, idx, tap))
            self.add(Registration(name, p.pid, p.vmmdev, tuple(nics)))
            return Handled(m.String("added"))
        if isinstance(p, m.StatsRemove):
            self.remove(name)
            return Handled(m.String("removed"))
        if isinstance(p, m.StatsSubscribe):
            return Handled(m.String("subscribed"), self.subscribe(name, w.header.version, sub))
        return Handled(m.Failure("unexpected command"))

    def add(self, reg: Registration) -> None:
        # upstream asserts the name is new (and crashes); the port replaces
        if self.units.get(_key(reg.name)) is not None:
            self.log(f"replacing the registration of {reg.name}")
        self.units[_key(reg.name)] = reg

    def remove(self, name: Name) -> Registration | None:
        reg = self.units.pop(_key(name), None)
        if reg is None:
            self.log(f"no pid found for {name}")
        return reg

    def reset(self) -> None:
        """The albatrossd connection is gone: forget all unikernels (subscribers stay)."""
        self.units.clear()

    def subscribe(self, name: Name, version: int, sub: S) -> S | None:
        """Store a subscriber; return the one it replaces (to be closed)."""
        old = self.subs.get(_key(name))
        self.subs[_key(name)] = Subscription(name, version, sub)
        return None if old is None or old.sub is sub else old.sub

    def unsubscribe(self, sub: S) -> None:
        for k in [k for k, s in self.subs.items() if s.sub is sub]:
            del self.subs[k]

    def listeners(self, name: Name) -> list[Subscription[S]]:
        """Subscriptions on the nodes from the root down to ``name``."""
        key = _key(name)
        return [s for i in range(len(key) + 1) if (s := self.subs.get(key[:i])) is not None]

    # -- sampling ----------------------------------------------------------------
    def tick(self, sample: Callable[[Registration], Stats | ProcError]
             ) -> tuple[list[tuple[S, Wire]], list[Registration]]:
        """One round: (subscriber, data message) pairs and the unikernels dropped.

        Only unikernels with a listener are sampled; a failing sample
        unregisters the unikernel.  Data is named relative to the listener's path.
        """
        outs: list[tuple[S, Wire]] = []
        dropped: list[Registration] = []
        for key in sorted(self.units):
            reg = self.units[key]
            listeners = self.listeners(reg.name)
            if not listeners:
                continue
            stats = sample(reg)
            if isinstance(stats, ProcError):
                self.log(f"failed to get rusage for {reg.pid}: {stats.message}")
                dropped.append(reg)
                continue
            for s in listeners:
                rel = reg.name.drop_prefix(s.name.path)
                outs.append((s.sub, Wire(Header(rel, 0, s.version), m.StatsData(stats))))
        for reg in dropped:
            self.units.pop(_key(reg.name), None)
        return outs, dropped
