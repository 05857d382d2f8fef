"""albatross-console end to end: a real daemon process, real fifos and sockets."""

from __future__ import annotations

import os
import struct
import subprocess
import time

import psutil
import pytest

from albatross.core import Ptime
from albatross.wire import messages as m

from console_stats_helpers import BIN, Client, Daemon, make_tmpdir, request, wait_for


@pytest.fixture
def console(tmp_path):
    tmpdir = make_tmpdir(tmp_path)
    sock = os.path.join(tmpdir, "util", "console.sock")
    d = Daemon("albatross-console", ["--tmpdir", tmpdir, "-vv", "--max-subscribers", "2"], sock,
               str(tmp_path / "console.log"))
    d.tmpdir, d.sock = tmpdir, sock
    yield d
    d.stop()


class Unikernel:
    """The albatrossd side: fifo, console add on a long-lived connection, a writer."""

    def __init__(self, d: Daemon, adder: Client, name: str, n: int = 5, seq: int = 1):
        self.path = os.path.join(d.tmpdir, "fifo", name if ":" in name else ":" + name)
        if not os.path.exists(self.path):
            os.mkfifo(self.path, 0o640)
        adder.send(name, m.ConsoleAdd(n), seq)
        reply = adder.recv()
        assert reply is not None and reply.payload == m.Empty(), reply
        assert reply.header.sequence == seq
        self.fd = os.open(self.path, os.O_WRONLY)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def exit(self) -> None:
        os.close(self.fd)


def lines_of(c: Client, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        w = c.recv()
        assert w is not None and isinstance(w.payload, m.ConsoleData), w
        out.append(w.payload.line)
    return out


def test_add_subscribe_history_live_and_inactive(console):
    adder = Client(console.sock)
    uk = Unikernel(console, adder, "foo:hello")
    uk.write(b"one\ntwo\n\nthree\npartial")
    time.sleep(0.2)
    with Client(console.sock) as sub:
        sub.send("foo:hello", m.ConsoleSubscribe(count=2), sequence=7, version=5)
        reply = sub.recv()
        assert reply.payload == m.String("subscribed") and reply.header.sequence == 7
        hist = [sub.recv() for _ in range(2)]
        assert [w.payload.line for w in hist] == [b"two", b"three"]
        assert str(hist[0].header.name) == "foo:hello" and hist[0].header.sequence == 0
        uk.write(b" line\n" + b"x" * 600 + b"\nafter\n")
        assert lines_of(sub, 3) == [b"partial line", b"x" * 600, b"after"]
        # a second add on the same connection works (albatrossd keeps it open)
        uk2 = Unikernel(console, adder, "foo:other", seq=2)
        uk.exit()
        uk2.exit()
    got = wait_for(lambda: (request(console.sock, "foo:", m.ConsoleListInactive()).payload.names or None),
                   what="inactive consoles")
    assert sorted(str(n) for n in got) == [":hello", ":other"]
    # history survives the unikernel exit and a restart
    uk = Unikernel(console, adder, "foo:hello", seq=3)
    with Client(console.sock) as sub:
        sub.send("foo:hello", m.ConsoleSubscribe(since=Ptime(0, 0)))
        assert sub.recv().payload == m.String("subscribed")
        assert lines_of(sub, 5) == [b"one", b"two", b"three", b"partial line", b"x" * 600]
    uk.exit()
    adder.close()


def test_subscribe_before_vm_exists_gets_live_output(console):
    with Client(console.sock) as sub:
        sub.send("early", m.ConsoleSubscribe(count=10))
        assert sub.recv().payload == m.String("waiting for VM")
        adder = Client(console.sock)
        uk = Unikernel(console, adder, "early")
        uk.write(b"booting\n" + b"L" * 2000 + b"\nok\n")
        assert lines_of(sub, 3) == [b"booting", b"L" * 512 + b" [truncated]", b"ok"]
        uk.exit()
        adder.close()


def test_errors_and_bad_input_keep_daemon_serving(console):
    r = request(console.sock, "foo:", m.ConsoleSubscribe(count=1))
    assert r.payload == m.Failure("path used instead of name")
    r = request(console.sock, "foo:", m.ConsoleAdd(1))
    assert r.payload == m.Failure("path used instead of name")
    r = request(console.sock, "foo:bar", m.ConsoleListInactive())
    assert r.payload == m.Failure("name used")
    r = request(console.sock, "nofifo", m.ConsoleAdd(1))
    assert r.payload == m.Failure("opening")
    # a regular file cannot be polled: also "opening", no crash
    open(os.path.join(console.tmpdir, "fifo", ":plain"), "w").close()
    assert request(console.sock, "plain", m.ConsoleAdd(1)).payload == m.Failure("opening")
    # wrong command: closed without reply
    assert request(console.sock, "foo:bar", m.StatsSubscribe()) is None
    # garbage frame, oversized frame, negative length: closed
    for raw in (struct.pack(">i", 5) + b"\xff" * 5, struct.pack(">i", 1 << 30), struct.pack(">i", -4)):
        with Client(console.sock) as c:
            c.send_raw(raw)
            assert c.closed_by_peer()
    assert console.alive()
    assert request(console.sock, ":", m.ConsoleListInactive()).payload == m.Consoles(())
    assert "bad message" in console.log() or "exceeds" in console.log()


def test_subscriber_limit_and_end_on_input(console):
    adder = Client(console.sock)
    uk = Unikernel(console, adder, "lim")
    subs = []
    for _ in range(4):  # --max-subscribers 2: effective cap 3 (upstream off-by-one)
        c = Client(console.sock)
        c.send("lim", m.ConsoleSubscribe(count=0))
        assert c.recv().payload == m.String("subscribed")
        subs.append(c)
    assert subs[0].closed_by_peer()  # the oldest was dropped
    uk.write(b"hi\n")
    for c in subs[1:]:
        assert lines_of(c, 1) == [b"hi"]
    # sending anything ends a subscription
    subs[1].send("lim", m.ConsoleListInactive())
    assert subs[1].closed_by_peer()
    uk.write(b"again\n")
    for c in subs[2:]:
        assert lines_of(c, 1) == [b"again"]
    for c in subs:
        c.close()
    uk.exit()
    adder.close()


def test_negative_count_with_full_ring_terminates(console):
    adder = Client(console.sock)
    uk = Unikernel(console, adder, "full")
    uk.write(b"".join(b"line %d\n" % i for i in range(1500)))
    with Client(console.sock) as c:  # wait until all is in
        c.send("full", m.ConsoleSubscribe(count=1))
        assert c.recv().payload == m.String("subscribed")
        wait_for(lambda: True)
    time.sleep(0.3)
    with Client(console.sock) as c:
        c.send("full", m.ConsoleSubscribe(count=-5))
        assert c.recv().payload == m.String("subscribed")
        c.send("full", m.ConsoleListInactive())  # ends the subscription
        assert c.recv() is None  # no history at all
    with Client(console.sock) as c:
        c.send("full", m.ConsoleSubscribe(count=1 << 40))
        c.recv()
        got = lines_of(c, 1024)
        assert got[0] == b"line 476" and got[-1] == b"line 1499"
    uk.exit()
    adder.close()


def test_cli_rejects_zero_subscribers(tmp_path):
    tmpdir = make_tmpdir(tmp_path)
    r = subprocess.run([os.path.join(BIN, "albatross-console"), "--tmpdir", tmpdir, "--max-subscribers", "0"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 124
    assert "max subscribers must be greater than or equal to 1" in r.stderr


def rss(d: Daemon) -> int:
    return psutil.Process(d.pid).memory_info().rss


def test_memory_bounded_whatever_unikernels_print(console):
    """Endless line, flood of short lines, many short-lived chatty unikernels."""
    adder = Client(console.sock)
    seq = iter(range(1, 10_000))
    # warm up: fill one ring, so steady-state structures exist
    uk = Unikernel(console, adder, "warm", seq=next(seq))
    uk.write(b"w" * 100 + b"\n" * 1 + b"".join(b"%d\n" % i for i in range(2000)))
    uk.exit()
    time.sleep(0.3)
    base = rss(console)

    # 1. an endless line: 32 MiB without a newline
    uk = Unikernel(console, adder, "endless", seq=next(seq))
    chunk = b"E" * (1 << 20)
    for _ in range(32):
        uk.write(chunk)
    uk.write(b"\nend\n")
    uk.exit()
    # 2. a flood of short lines (~200k lines, 1.4 MB... in one unikernel)
    uk = Unikernel(console, adder, "flood", seq=next(seq))
    uk.write(b"".join(b"f%05d\n" % (i % 100000) for i in range(200_000)))
    uk.exit()
    # 3. many short-lived chatty unikernels in a path limited to 3 consoles
    for i in range(120):
        uk = Unikernel(console, adder, f"many:vm{i}", n=3, seq=next(seq))
        uk.write(b"".join(b"chatty %d %s\n" % (j, b"y" * 200) for j in range(1100)))
        uk.exit()
    wait_for(lambda: len(request(console.sock, "many:", m.ConsoleListInactive()).payload.names) <= 4,
             what="old consoles dropped")
    with Client(console.sock) as c:
        c.send("endless", m.ConsoleSubscribe(count=5))
        c.recv()
        assert lines_of(c, 2) == [b"E" * 512 + b" [truncated]", b"end"]
    with Client(console.sock) as c:
        c.send("flood", m.ConsoleSubscribe(count=1))
        c.recv()
        assert lines_of(c, 1) == [b"f99999"]
    last = "many:vm119"
    wait_for(lambda: any(str(n) == ":vm119" for n in
                         request(console.sock, "many:", m.ConsoleListInactive()).payload.names),
             what=f"{last} finished")
    with Client(console.sock) as c:
        c.send(last, m.ConsoleSubscribe(count=2000))
        c.recv()
        got = lines_of(c, 1024)
        assert got[-1] == b"chatty 1099 " + b"y" * 200 and got[0].startswith(b"chatty 76 ")
    growth = rss(console) - base
    print(f"RSS base {base / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB")
    # 3 limited rings of 1024 ~220-byte lines plus 3 others: a few MB at most
    assert growth < 24 * 1024 * 1024, f"daemon RSS grew by {growth / 2**20:.1f} MiB"
    names = request(console.sock, "many:", m.ConsoleListInactive()).payload.names
    assert 1 <= len(names) <= 4
    adder.close()


# ------------------------------------------------------------------ client

def client(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "albatross-client"), *args], capture_output=True, text=True,
                          timeout=20, **kw)


def test_parse_since():
    from albatross.client.console_stats import parse_since
    from albatross.client.common import CliError
    assert parse_since("2023-03-12") == Ptime(1678579200, 0)
    assert parse_since("2023-03-12T23:42:15Z") == Ptime(1678664535, 0)
    assert parse_since("2023-03-12T23:42:15+01:00") == Ptime(1678664535 - 3600, 0)
    for bad in ("yesterday", "2023-03-12T23:42:15", "2023-13-01"):
        with pytest.raises(CliError):
            parse_since(bad)


def test_client_console_and_inactive_consoles(console):
    adder = Client(console.sock)
    uk = Unikernel(console, adder, "cli:vm")
    uk.write(b"first\nsecond\nthird\n")
    time.sleep(0.2)
    proc = subprocess.Popen([os.path.join(BIN, "albatross-client"), "console", "cli:vm", "--count", "2",
                             "--tmpdir", console.tmpdir], stdout=subprocess.PIPE, text=True)
    try:
        out = [proc.stdout.readline() for _ in range(3)]
        assert "subscribed" in out[0]
        assert out[1].rstrip().endswith(": second") and out[2].rstrip().endswith(": third")
        uk.write(b"live \x1b[31m\n")
        assert proc.stdout.readline().rstrip().endswith(": live \\027[31m")  # escaped
    finally:
        proc.terminate()
        proc.wait()
    uk.exit()
    wait_for(lambda: "cli:vm" in client("inactive-consoles", "--tmpdir", console.tmpdir).stdout,
             what="inactive console listed")
    r = client("inactive-consoles", "-p", "cli", "--tmpdir", console.tmpdir)
    assert r.returncode == 0 and "[unikernel: :vm]" in r.stdout, r.stdout
    r = client("console", "cli:vm", "--since", "not a date", "--tmpdir", console.tmpdir)
    assert r.returncode == 124 and "invalid timestamp" in r.stdout + r.stderr
    adder.close()
