"""albatross-stats' pure parts: /proc mapping, netlink mapping, registrations,
subscriptions and sampling rounds."""

import os

from hypothesis import given
from hypothesis import strategies as st

from albatross.core import Ifdata, Rusage, Stats, Timeval
from albatross.daemons.stats_core import (
    kvm_counter, kvm_counters,
    ProcError, Registration, StatsState, ifdata_of_link, linux_rusage, parse_proc_stat, ticks_to_timeval,
)
from albatross.policy.names import Name
from albatross.wire import Header, Wire
from albatross.wire import messages as m

# a real /proc/<pid>/stat line (Linux 6.x), comm with spaces and parentheses
STAT = ("4242 (solo5-hvt (x) y) S 1 4242 4242 0 -1 4194560 912 0 3 0 42 13 0 0 20 0 1 0 12345 "
        "541065216 3104 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
STATM = "132096 3104 1000 117 0 131178 0\n"
STATUS = ("Name:\tsolo5-hvt\nUmask:\t0022\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t1520\n"
          "nonvoluntary_ctxt_switches:\t31\n")
START = Timeval(1_700_000_000, 250_000)


def test_parse_proc_stat_fields_are_one_based():
    f = parse_proc_stat(STAT)
    assert f[0] == "4242" and f[1] == "solo5-hvt (x) y" and f[2] == "S"
    assert f[9] == "912" and f[13] == "42" and f[22] == "541065216"
    assert len(f) == 52


def test_linux_mapping_exact():
    ru, mem = linux_rusage(STAT, STATM, STATUS, 100, START)
    assert ru == Rusage(utime=Timeval(0, 420000), stime=Timeval(0, 130000), maxrss=3104, minflt=912,
                        majflt=3, nswap=0, nvcsw=1520, nivcsw=31)
    assert (mem.vsize, mem.rss, mem.tsize, mem.dsize, mem.ssize, mem.runtime, mem.cow, mem.start) == \
        (541065216, 3104, 117, 131178, 131178, 550000, 0, START)


def test_clock_tick_conversion():
    assert ticks_to_timeval(12345, 100) == Timeval(123, 450000)
    assert ticks_to_timeval(7, 3) == Timeval(2, 333333)
    ru, mem = linux_rusage(STAT.replace(" 42 13 ", " 250 1000 "), STATM, STATUS, 250, START)
    assert ru.utime == Timeval(1, 0) and ru.stime == Timeval(4, 0) and mem.runtime == 5_000_000


def test_errors_are_values():
    assert isinstance(linux_rusage("garbage", STATM, STATUS, 100, START), ProcError)
    short = STAT.rsplit(" ", 5)[0]
    assert linux_rusage(short, STATM, STATUS, 100, START) == ProcError("couldn't read /proc/<pid>/stat")
    assert linux_rusage(STAT, "1 2 3", STATUS, 100, START) == ProcError("couldn't read /proc/<pid>/stat")
    assert linux_rusage(STAT.replace(" 912 ", " x12 "), STATM, STATUS, 100, START) == \
        ProcError("couldn't parse integer")
    assert linux_rusage(STAT, STATM, "Name:\tx\n", 100, START) == ProcError("error parsing /proc/<pid>/status")


def test_mapping_of_this_process():
    pid = os.getpid()
    texts = [open(f"/proc/{pid}/{f}").read() for f in ("stat", "statm", "status")]
    res = linux_rusage(*texts, os.sysconf("SC_CLK_TCK"), START)
    assert not isinstance(res, ProcError), res
    ru, mem = res
    assert mem.rss > 0 and mem.vsize > mem.rss and ru.nvcsw >= 0 and ru.maxrss == mem.rss


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=1, max_value=10_000))
def test_ticks_to_timeval_consistent(ticks, hz):
    tv = ticks_to_timeval(ticks, hz)
    assert 0 <= tv.microseconds < 1_000_000
    assert tv.seconds * 1_000_000 + tv.microseconds == ticks * 1_000_000 // hz


def test_ifdata_of_link():
    d = ifdata_of_link("service", 0x1003, 1500, {"rx_packets": 120, "tx_packets": 80, "rx_bytes": 9000,
                                                  "tx_bytes": 7000, "multicast": 2, "rx_dropped": 1})
    assert d == Ifdata(bridge="service", flags=0x1003, mtu=1500, input_packets=120, output_packets=80,
                       input_bytes=9000, output_bytes=7000, input_mcast=2, input_dropped=1)


# ---------------------------------------------------------------- state

def N(s):
    return Name.of_string(s)


STATS = Stats(Rusage(Timeval(1, 0), Timeval(0, 5)))


def add(state, name, pid, taps=(), resolve=lambda t: {"tap0": 7}.get(t)):
    return state.handle(Wire(Header(N(name), 3), m.StatsAdd("", pid, taps)), None, resolve)


def test_commands_replies():
    s = StatsState()
    r = add(s, "foo:vm", 10, (("service", "tap0"), ("gone", "tapX")))
    assert r.reply == m.String("added") and not r.failed
    assert s.units[(b"foo", b"vm")].nics == (("service", 7, "tap0"),)
    assert s.handle(Wire(Header(N("foo:vm")), m.StatsRemove()), None, None).reply == m.String("removed")
    assert s.units == {}
    assert s.handle(Wire(Header(N(":")), m.StatsInitial()), None, None).reply == \
        m.Failure("unexpected message initial")
    assert s.handle(Wire(Header(N("x")), m.ConsoleListInactive()), None, None).reply == \
        m.Failure("unexpected command")
    # adding twice replaces (upstream asserts)
    add(s, "foo:vm", 10)
    add(s, "foo:vm", 11)
    assert s.units[(b"foo", b"vm")].pid == 11


def test_subscribe_replaces_same_name_only():
    s = StatsState()
    a, b, c = object(), object(), object()
    assert s.handle(Wire(Header(N("foo:")), m.StatsSubscribe()), a, None).reply == m.String("subscribed")
    assert s.handle(Wire(Header(N("foo:")), m.StatsSubscribe()), b, None).to_close is a
    assert s.handle(Wire(Header(N("bar:")), m.StatsSubscribe()), c, None).to_close is None
    s.unsubscribe(a)  # a stale close does not remove the newer subscriber
    assert [x.sub for x in s.listeners(N("foo:vm"))] == [b]


def test_tick_relative_names_and_unsubscribed_not_sampled():
    s = StatsState()
    root, foo, named, other = object(), object(), object(), object()
    for name in ("foo:vm", "foo:bar:deep", "lonely:x"):
        add(s, name, 1)
    s.subscribe(N(":"), 4, root)
    s.subscribe(N("foo:"), 5, foo)
    s.subscribe(N("foo:bar"), 5, named)  # a name: its path is foo
    s.subscribe(N("zzz:"), 5, other)
    sampled = []

    def sample(reg):
        sampled.append(str(reg.name))
        return STATS
    outs, dropped = s.tick(sample)
    got = sorted((str(w.header.name), w.header.version, {id(root): "root", id(foo): "foo",
                  id(named): "named"}[id(sub)]) for sub, w in outs)
    assert got == sorted([
        ("foo:bar:deep", 4, "root"), ("bar:deep", 5, "foo"), ("bar:deep", 5, "named"),
        ("foo:vm", 4, "root"), (":vm", 5, "foo"), ("lonely:x", 4, "root")])
    assert all(isinstance(w.payload, m.StatsData) and w.header.sequence == 0 for _, w in outs)
    assert dropped == []
    s.unsubscribe(root)
    sampled.clear()
    s.tick(sample)
    assert sorted(sampled) == ["foo:bar:deep", "foo:vm"]  # lonely:x has no listener


def test_tick_failure_unregisters():
    s = StatsState()
    add(s, "vm", 99)
    s.subscribe(N(":"), 5, object())
    outs, dropped = s.tick(lambda reg: ProcError("gone"))
    assert outs == [] and [r.name for r in dropped] == [N("vm")] and s.units == {}


def test_reset_forgets_unikernels_keeps_subscribers():
    s = StatsState()
    add(s, "vm", 1)
    sub = object()
    s.subscribe(N(":"), 5, sub)
    s.reset()
    assert s.units == {} and s.listeners(N("vm"))[0].sub is sub
    assert isinstance(Registration(N("a"), 1, "", ()), Registration)


# ------------------------------------------------------------ KVM counters

def test_kvm_counter_takes_single_decimal_integers_only():
    assert kvm_counter("42\n") == 42
    assert kvm_counter("0") == 0
    assert kvm_counter(str(2**64 - 1)) == (1 << 62) - 1  # u64 counters are clamped to the wire's range
    for bad in ("", "\n", "-1", "1 2 3\n", "0x10", "1.5", "١٢", "abc"):
        assert kvm_counter(bad) is None, bad


def test_kvm_counters_sorted_scalars_or_none():
    assert kvm_counters([("exits", "7\n"), ("halt_poll_fail_hist", "0 0 0\n"), ("blocking", "0\n")]) == \
        (("blocking", 0), ("exits", 7))
    assert kvm_counters([("hist", "1 2\n")]) is None
    assert kvm_counters([]) is None
