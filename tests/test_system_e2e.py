"""System tests: the real albatross-console, albatrossd (with the stand-in
tender), albatross-stats and albatross-influx together, driven with the real
albatross-client (and raw sockets where the client cannot show something).

Covers the issue "albatross-console, albatross-stats and albatross-influx":
console output live and from history, inactive consoles; statistics with CPU
time, memory and tap counters that follow real traffic (inside a network
namespace of the test's own); samples stored in a real influxd; restarting
any one daemon; bad input on every socket.
"""

from __future__ import annotations

import array
import datetime as dt
import fcntl
import os
import re
import socket
import subprocess
import termios
import time
import urllib.request

import pytest

from albatross.wire import messages as m

from influxd_fixture import INFLUXD, Influxd
from solo5_fixtures import build_image
from system_fixtures import (
    System, delete_netns, make_netns, missing_privileges, send_frames, wait,
)

_why = missing_privileges()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-00:00"


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "plain.hvt"
    p.write_bytes(build_image(devices=()))
    return str(p)


@pytest.fixture
def system(tmp_path):
    s = System(tmp_path)
    try:
        s.start_all()
        yield s
    finally:
        s.teardown()


@pytest.fixture
def netns():
    why = missing_privileges(netns=True)
    if why is not None:
        pytest.skip(why)
    name = make_netns("service")
    yield name
    delete_netns(name)


@pytest.fixture
def net_system(tmp_path, netns):
    s = System(tmp_path, netns)
    try:
        s.start_all(interval=0.3)
        s.image = str(tmp_path / "net.hvt")
        with open(s.image, "wb") as fh:
            fh.write(build_image(devices=[("service", "NET_BASIC")]))
        yield s
    finally:
        s.teardown()


def fifo_pending(path: str) -> int:
    """Bytes waiting in the fifo at ``path`` (opening a read end consumes nothing)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return buf[0]
    finally:
        os.close(fd)


def console_line(text: str) -> str:
    """The regexp of a console line as albatross-client prints it."""
    return rf"console {TS}: {re.escape(text)}"


def stats_data(sub, name: str | None = None, timeout: float = 10) -> m.StatsData:
    """The next Stats_data on a raw stats subscription (optionally for ``name``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w = sub.recv()
        assert w is not None, "albatross-stats closed the subscription"
        if isinstance(w.payload, m.StatsData) and (name is None or w.header.name.label == name):
            return w.payload
    raise AssertionError(f"no stats for {name} within {timeout}s")


def subscribe_stats(system: System, name: str = ":"):
    sub = system.wired("albatross-stats")
    sub.sock.settimeout(10)
    sub.send(name, m.StatsSubscribe())
    reply = sub.recv()
    assert reply is not None and reply.payload == m.String("subscribed"), reply
    return sub


def cpu_seconds(st) -> float:
    r = st.rusage
    return r.utime.seconds + r.utime.microseconds / 1e6 + r.stime.seconds + r.stime.microseconds / 1e6


# ------------------------------------------------------------------ 1. console

def test_console_live_history_since_and_inactive(system, image):
    before = system.stream("console", "echo")  # the unikernel does not exist yet
    assert before.until("success: ")[-1] == "host [unikernel: :echo]: success: waiting for VM"
    weird = 'hi\athere\\x"y\u00fc'  # BEL, backslash, quote, UTF-8
    system.client("create", "echo", image, f"--arg=print {weird}", "--arg=print first", "--arg=sleep 3",
                  "--arg=print second", "--arg=spam 3", "--arg=sleep 1.5", "--arg=print last", "--arg=exit 3")
    lines = before.until(console_line("first"))
    escaped = r'hi\007there\\x\"y\195\188'
    assert any(re.fullmatch(console_line(escaped), x) for x in lines), lines
    # a subscriber arriving while it runs gets recent history, then live output
    after = system.stream("console", "echo")
    got = after.until(console_line("first"))
    assert got[0] == "host [unikernel: :echo]: success: subscribed"
    assert all(re.fullmatch(rf"console {TS}: .*", x) for x in got[1:]), got
    assert "second" not in " ".join(got)
    for s in (before, after):
        s.until(console_line("second"))
        s.until(console_line("spam 2"))
        s.until(re.escape("Solo5: solo5_exit(3) called"))
    # exited: albatrossd forgets it, albatross-console keeps its history
    wait(lambda: "echo" not in system.client("info"), "the unikernel to exit")
    wait(lambda: "[unikernel: :echo]" in system.client("inactive-consoles"), "an inactive console")
    assert "[unikernel: :echo]" in system.client("inactive-consoles", "-p", "")

    last2 = system.stream("console", "echo", "--count", "2")
    got = last2.until(re.escape("Solo5: solo5_exit(3) called"))
    assert len(got) == 3 and re.fullmatch(console_line("last"), got[1]), got

    full = system.stream("console", "echo", "--count", "1000")
    history = full.until(re.escape("Solo5: solo5_exit(3) called"))
    texts = [re.sub(rf"^console {TS}: ", "", x) for x in history[1:]]
    assert texts[-8:] == [escaped, "first", "second", "spam 0", "spam 1", "spam 2", "last",
                          "Solo5: solo5_exit(3) called"]
    # --since: the timestamp of "second" (3 s after "first") excludes "first"
    second_ts = re.search(rf"console ({TS}): second$", history[texts.index("second") + 1]).group(1)
    since = system.stream("console", "echo", f"--since={second_ts}")
    got = since.until(re.escape("Solo5: solo5_exit(3) called"))
    texts = [re.sub(rf"^console {TS}: ", "", x) for x in got[1:]]
    assert texts == ["second", "spam 0", "spam 1", "spam 2", "last", "Solo5: solo5_exit(3) called"], got
    # a --since in the future: nothing (but still subscribed)
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    nothing = system.stream("console", "echo", f"--since={future}")
    nothing.until("success: subscribed")
    time.sleep(0.3)
    assert nothing.lines.empty()


# -------------------------------------------------------------------- 2. stats

def test_stats_cpu_time_and_memory(system, image):
    system.client("create", "cpu", image, "--arg=busy 60")
    stream = system.stream("stats", "-n", "cpu")
    assert stream.until("success: subscribed")[-1] == "host [unikernel: :cpu]: success: subscribed"

    def sample() -> tuple[float, int, int]:
        ru = stream.until(r"^stats: utime ")[-1]
        mem = stream.until(r"^virtual-size ")[-1]
        g = re.search(r"utime (\d+\.\d+) stime (\d+\.\d+) maxrss (\d+)", ru)
        k = re.search(r"virtual-size (\d+) rss (\d+)", mem)
        return float(g.group(1)) + float(g.group(2)), int(g.group(3)), int(k.group(2))
    cpu1, maxrss, rss = sample()
    assert maxrss > 0 and rss > 0
    deadline = time.monotonic() + 10
    cpu2 = cpu1
    while cpu2 < cpu1 + 0.5 and time.monotonic() < deadline:  # the unikernel burns a CPU
        cpu2 = sample()[0]
    assert cpu2 >= cpu1 + 0.5, (cpu1, cpu2)
    # the same through a raw subscription: kinfo_mem, no taps
    with subscribe_stats(system, "cpu") as sub:
        st = stats_data(sub).stats
        assert cpu_seconds(st) >= cpu2 and st.kinfo_mem.rss > 0 and st.kinfo_mem.vsize > st.kinfo_mem.rss
        assert st.ifdata == ()
    system.client("destroy", "cpu")


def kvm_debugfs() -> str | None:
    """Why KVM statistics cannot be had here, or None (mounts debugfs as
    systemd does at boot when it is missing and we are root)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible"
    if not os.path.isdir("/sys/kernel/debug/kvm"):
        if os.geteuid() == 0 and not os.listdir("/sys/kernel/debug"):
            subprocess.run(["mount", "-t", "debugfs", "debugfs", "/sys/kernel/debug"], capture_output=True)
        if not os.path.isdir("/sys/kernel/debug/kvm"):
            return "debugfs with KVM statistics (/sys/kernel/debug/kvm) is not available"
    return None


def test_kvm_counters_of_an_hvt_guest(tmp_path, image):
    why = kvm_debugfs()
    if why is not None:
        pytest.skip(why)
    s = System(tmp_path)
    try:
        s.start_all(stats_args=("--gather-bhyve-stats",))
        s.client("create", "guest", image, "--arg=kvm", "--arg=forever")
        s.client("create", "plain", image, "--arg=forever")
        with subscribe_stats(s) as sub:
            for _ in range(10):  # the first rounds may come before the VM exists
                guest = stats_data(sub, "guest").stats
                if guest.vmm is not None:
                    break
            assert guest.vmm is not None, "no KVM counters for the hvt guest"
            plain = stats_data(sub, "plain").stats
        (pid,) = [p.pid for p in s.tenders() if "kvm" in p.cmdline()]
        vmdirs = [d for d in os.listdir("/sys/kernel/debug/kvm") if d.startswith(f"{pid}-")]
        assert len(vmdirs) == 1
        names = [k for k, _ in guest.vmm]
        assert names == sorted(names) and len(names) >= 1 and all(v >= 0 for _, v in guest.vmm)
        # exactly the scalar counters the kernel lets us read
        readable = []
        for n in os.listdir(f"/sys/kernel/debug/kvm/{vmdirs[0]}"):
            try:
                text = open(f"/sys/kernel/debug/kvm/{vmdirs[0]}/{n}").read().strip()
            except OSError:
                continue
            if text.isdigit():
                readable.append(n)
        assert names == sorted(readable)
        assert plain.vmm is None  # no VM of its own
    finally:
        s.teardown()


def test_interface_counters_follow_traffic_both_ways(net_system):
    s = net_system
    # the unikernel reads its net device and, after a while, sends 30 frames itself
    s.client("create", "web", s.image, "--net", "service", "--arg=netrecv", "--arg=sleep 2", "--arg=netsend 30",
             "--arg=forever")
    with subscribe_stats(s, "web") as sub:
        first = stats_data(sub).stats
        assert [i.bridge for i in first.ifdata] == ["service"]
        assert first.ifdata[0].input_packets < 30 and first.ifdata[0].mtu > 0
        # vm -> host: the tap receives what the unikernel sends
        t0 = time.monotonic()
        while (st := stats_data(sub).stats).ifdata[0].input_packets < 30:
            assert time.monotonic() - t0 < 15, st.ifdata
        base = st.ifdata[0]
        # host -> vm: frames sent out of the bridge are flooded to the tap
        size = send_frames(s.netns, "service", 40)
        t0 = time.monotonic()
        while (st := stats_data(sub).stats).ifdata[0].output_packets < base.output_packets + 40:
            assert time.monotonic() - t0 < 15, (base, st.ifdata)
        now = st.ifdata[0]
        assert now.output_bytes >= base.output_bytes + 40 * size
        assert now.input_packets >= base.input_packets
    # albatross-client shows the same counters
    stream = s.stream("stats", "-n", "web")
    line = stream.until(r"^bridge service ")[-1]
    g = re.search(r"input_packets (\d+) .* output_packets (\d+) ", line)
    assert int(g.group(1)) >= 30 and int(g.group(2)) >= now.output_packets
    stream.close()
    # a restarted albatross-stats is told the unikernel's taps again
    s.stop("albatross-stats")
    s.start_stats(0.3)
    with subscribe_stats(s, "web") as sub:
        st = stats_data(sub).stats
        assert [i.bridge for i in st.ifdata] == ["service"]
        assert st.ifdata[0].output_packets >= now.output_packets


# ----------------------------------------------------------------- 3. influx

@pytest.mark.skipif(INFLUXD is None, reason="influxd not installed (Debian package 'influxdb')")
def test_influx_stores_the_samples(tmp_path, net_system):
    s = net_system
    influxd = Influxd(str(tmp_path / "influxd"))
    try:
        influxd.create_db("albatross")
        s.start_influx(influxd.write_url("albatross"))
        s.client("create", "web", s.image, "--net", "service", "--arg=netrecv", "--arg=busy 1",
                 "--arg=netsend 25", "--arg=forever")

        def rows(measurement: str) -> list[dict]:
            return [r for r in influxd.points("albatross", measurement) if r.get("vm") == "web"]
        ru = wait(lambda: rows("resource_usage"), "resource_usage points", timeout=20)
        assert ru[-1]["maxrss"] > 0 and ru[-1]["utime"] + ru[-1]["stime"] > 0
        mem = wait(lambda: rows("kinfo_mem"), "kinfo_mem points")
        assert mem[-1]["rss"] > 0 and mem[-1]["vsize"] > 0
        iface = wait(lambda: [r for r in rows("interface") if r["vm_to_host_packets"] >= 25],
                     "interface points with the unikernel's frames", timeout=20)
        assert iface[-1]["bridge"] == "service" and iface[-1]["mtu"] > 0
        send_frames(s.netns, "service", 10)
        wait(lambda: [r for r in rows("interface") if r["host_to_vm_bytes"] > 0], "host to vm bytes")
        # albatross-stats restarts: albatross-influx reconnects and points keep coming
        n = len(rows("resource_usage"))
        s.stop("albatross-stats")
        s.start_stats(0.3)
        wait(lambda: len(rows("resource_usage")) > n + 2, "points after a stats restart", timeout=20)
        # albatrossd restarts: the unikernel comes back and its new process is reported
        n = len(rows("kinfo_mem"))
        s.stop("albatrossd")
        s.start_albatrossd()
        wait(lambda: "[unikernel: :web]" in s.client("info"), "the unikernel to come back")
        wait(lambda: len(rows("kinfo_mem")) > n + 2, "points after an albatrossd restart", timeout=20)
        # albatross-influx itself restarts
        s.stop("albatross-influx")
        n = len(rows("resource_usage"))
        s.start_influx(influxd.write_url("albatross"))
        wait(lambda: len(rows("resource_usage")) > n + 2, "points after an influx restart", timeout=20)
        # influxd goes away for a while: albatross-influx keeps running and writes again later
        influxd.stop()
        time.sleep(1)
        assert s.alive("albatross-influx")
        restart_influxd(influxd)
        n = len(rows("resource_usage"))
        wait(lambda: len(rows("resource_usage")) > n + 2, "points after an influxd restart", timeout=20)
        assert s.alive("albatross-influx")
    finally:
        influxd.stop()


def restart_influxd(influxd: Influxd) -> None:
    """Start the stopped influxd again: same configuration, ports and data."""
    with open(influxd.log_path, "ab") as out:
        influxd.proc = subprocess.Popen([INFLUXD, "-config", os.path.join(influxd.dir, "influxdb.conf")],
                                        stdout=out, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert influxd.proc.poll() is None, "influxd exited"
        try:
            with urllib.request.urlopen(influxd.url("/ping"), timeout=1) as r:
                return r.status == 204
        except OSError:
            return False
    wait(up, "influxd to come back", timeout=30, interval=0.1)


# --------------------------------------------------------------- 4. restarts

def test_restart_stats(system, image):
    system.client("create", "alpha", image, "--arg=print alpha-up", "--arg=forever")
    with subscribe_stats(system) as sub:
        stats_data(sub, "alpha")
    system.stop("albatross-stats")
    # albatrossd and albatross-console carry on without it
    system.client("create", "beta", image, "--arg=print beta-up", "--arg=forever")
    con = system.stream("console", "alpha", "--count", "100")
    con.until(console_line("alpha-up"))
    system.start_stats()
    # the new albatross-stats re-handshakes and is told about both running unikernels
    with subscribe_stats(system) as sub:
        stats_data(sub, "alpha")
        stats_data(sub, "beta")
    assert "[unikernel: :alpha]" in system.client("info")
    con.until(r"tick \d+")  # the console subscription was not disturbed
    assert system.alive("albatrossd") and system.alive("albatross-console")


def test_restart_console(system, image):
    system.client("create", "first", image, "--arg=print first-up", "--arg=forever")
    live = system.stream("console", "first")
    live.until(console_line("first-up"))
    live.until(r"tick \d+")
    pid = [p.pid for p in system.tenders()]
    assert len(pid) == 1
    stats = subscribe_stats(system, "first")
    system.stop("albatross-console")
    # "first" keeps printing while nobody reads its fifo: wait until a line waits there
    fifo = os.path.join(system.tmpdir, "fifo", ":first")
    wait(lambda: fifo_pending(fifo) > 0, "a console line waiting in the fifo")
    live.rest()  # the subscription ends with albatross-console
    ticks = [int(x.rsplit(" ", 1)[1]) for x in live.seen if re.search(r": tick \d+$", x)]
    # without albatross-console a create fails cleanly (as upstream) and leaves nothing behind
    out = system.client("create", "early", image, "--arg=forever", code=117)
    assert "console failed" in out, out
    assert len(system.tenders()) == 1 and "early" not in system.client("info")
    system.start_console()
    # right away (before albatrossd's idle check notices): a create reconnects to the console
    system.client("create", "second", image, "--arg=print second-up", "--arg=forever")
    hist = system.stream("console", "second", "--count", "100")
    hist.until(console_line("second-up"))
    # the running unikernel is registered again: its output reaches the new console
    again = system.stream("console", "first")
    again.until(r"tick \d+")
    assert [p.pid for p in system.tenders() if "first" in " ".join(p.cmdline())] == pid
    # what albatross-console forgot is its own history from before the restart; what
    # "first" printed while it was away waited in the fifo and is not lost
    assert not any("first-up" in x for x in again.seen)
    hist = system.stream("console", "first", "--count", "1000")
    got = [int(x.rsplit(" ", 1)[1]) for x in hist.until(r"tick \d+") if re.search(r": tick \d+$", x)]
    # the first line the new console read is the one after the last the old one sent
    assert got[0] == ticks[-1] + 1, (ticks, got)
    # albatrossd and albatross-stats lost nothing
    info = system.client("info")
    assert "[unikernel: :first]" in info and "[unikernel: :second]" in info
    stats_data(stats, "first")
    stats.close()
    assert "reconnected to albatross-console" in system.log("albatrossd")


def test_restart_albatrossd(system, image):
    system.client("create", "keep", image, "--arg=print keep-up", "--arg=busy 0.2", "--arg=forever")
    live = system.stream("console", "keep")
    live.until(console_line("keep-up"))
    with subscribe_stats(system, "keep") as sub:
        before = stats_data(sub).stats
        old = [p.pid for p in system.tenders()]
        assert system.stop("albatrossd") == 0  # SIGTERM: tenders stopped, state kept
        wait(lambda: not system.tenders(), "the tender to stop")
        system.start_albatrossd()
        wait(lambda: "[unikernel: :keep]" in system.client("info"), "the unikernel to come back")
        new = [p.pid for p in system.tenders()]
        assert new and new != old
        # the console subscriber of the same name sees the new run
        live.until(console_line("keep-up"))
        # albatross-stats reconnected by itself; the old subscriber gets the new process
        t0 = time.monotonic()
        while (after := stats_data(sub).stats).kinfo_mem.start == before.kinfo_mem.start:
            assert time.monotonic() - t0 < 15
        assert after.kinfo_mem.rss > 0
    # albatross-console kept the history of both runs
    hist = system.stream("console", "keep", "--count", "1000")
    lines = hist.until(console_line("keep-up"))
    lines += hist.until(console_line("keep-up"))
    assert sum("keep-up" in x for x in lines) == 2
    assert system.alive("albatross-console") and system.alive("albatross-stats")


# -------------------------------------------------------------- 5. bad input

def test_a_stalled_console_subscriber_stalls_nobody(system, image):
    stalled = system.wired("albatross-console")
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.send("loud", m.ConsoleSubscribe(count=0))
    assert stalled.recv().payload == m.String("waiting for VM")
    # about 5 MB of console messages that the stalled subscriber never reads: it holds the
    # unikernel's console back (as upstream) until it is dropped for taking nothing
    system.client("create", "loud", image, "--arg=spam 100000", "--arg=print done", "--arg=forever")
    other = system.stream("console", "loud", "--count", "5")
    got = other.until(console_line("done"), timeout=240)  # 100,000 lines on a loaded machine
    other.until(r"tick 3")
    assert "took nothing for" in system.log("albatross-console")
    # a subscriber that reads, even slower than the unikernel prints, loses nothing
    spam = [int(x.rsplit(" ", 1)[1]) for x in got if re.search(r": spam \d+$", x)]
    assert spam == list(range(spam[0], 100000)), (spam[:3], len(spam))
    assert "dropping subscriber of :loud (write failed" not in system.log("albatross-console")
    stalled.close()
    with subscribe_stats(system, "loud") as sub:
        stats_data(sub)
    assert "[unikernel: :loud]" in system.client("info")


GARBAGE = b"\x00\x00\x00\x08\xde\xad\xbe\xef\x00\x01\x02\x03"
OVERSIZED = b"\x7f\xff\xff\xff" + b"x" * 64
NEGATIVE = b"\xff\xff\xff\xf0"
TRUNCATED = b"\x00\x00\x01\x00abc"

WRONG_COMMAND = {
    # a valid frame with a command the daemon does not serve -> reply (or close)
    "albatrossd": (m.ConsoleSubscribe(count=3), m.Failure("unknown command")),
    "albatross-console": (m.StatsSubscribe(), None),  # logged, connection closed
    "albatross-stats": (m.ConsoleAdd(2), m.Failure("unexpected command")),
}


def reply_or_close(conn, timeout: float = 5):
    conn.sock.settimeout(timeout)
    t0 = time.monotonic()
    w = conn.recv()  # a timeout raises: the daemon must neither hang nor wait for 2 GB
    if w is not None:
        assert conn.recv() is None, "the connection stays open after a failure"
    assert time.monotonic() - t0 < timeout
    return w


@pytest.mark.parametrize("program", ["albatrossd", "albatross-console", "albatross-stats"])
def test_bad_input_on_every_socket(system, image, program):
    system.client("create", "ok", image, "--arg=print still-here", "--arg=forever")
    idle = system.wired(program)  # a client that says nothing must not block the others
    for junk in (GARBAGE, OVERSIZED, NEGATIVE):
        with system.wired(program) as c:
            c.send_raw(junk)
            w = reply_or_close(c)
            assert w is None or isinstance(w.payload, m.Failure), (junk, w)
    with system.wired(program) as c:
        c.send_raw(TRUNCATED)
        c.sock.shutdown(1)  # and then EOF in the middle of the frame
        assert reply_or_close(c) is None
    cmd, expected = WRONG_COMMAND[program]
    with system.wired(program) as c:
        c.send("ok", cmd, sequence=7)
        w = reply_or_close(c)
        if expected is None:
            assert w is None
        else:
            assert w is not None and w.payload == expected and w.header.sequence == 7, w
    if program == "albatross-stats":
        with system.wired(program) as c:
            c.send(":", m.StatsInitial())
            assert reply_or_close(c).payload == m.Failure("unexpected message initial")
    for p in ("albatrossd", "albatross-console", "albatross-stats"):
        assert system.alive(p), system.log(p)
    # everything keeps working for everybody
    assert "[unikernel: :ok]" in system.client("info")
    con = system.stream("console", "ok", "--count", "50")
    con.until(console_line("still-here"))
    with subscribe_stats(system, "ok") as sub:
        stats_data(sub)
    system.client("create", "ok2", image, "--arg=print fine", "--arg=exit 0")
    wait(lambda: "[unikernel: :ok2]" in system.client("inactive-consoles"), "ok2 to finish")
    idle.close()
    if program == "albatrossd":
        # the stats channel (over vmmd.sock) survived the bad clients
        assert "lost the connection to vmmd" not in system.log("albatross-stats")
