"""albatross-influx: line protocol (unit) and end to end against a real influxd."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from albatross.core import Ifdata, KinfoMem, Rusage, Stats, Timeval
from albatross.daemons.influx_core import (
    HttpTarget, TcpTarget, encode_stats, escape_key, parse_target, vm_tag,
)
from albatross.policy.names import Name
from albatross.wire.messages import StatsAdd

from console_stats_helpers import BIN, Daemon, FakeVmmd, make_tmpdir, wait_for
from influxd_fixture import INFLUXD, Influxd, free_port

# ------------------------------------------------------------------- unit

EXAMPLE = Stats(
    Rusage(Timeval(0, 420000), Timeval(0, 130000), maxrss=3104, minflt=912, nvcsw=1520, nivcsw=31),
    KinfoMem(vsize=541065216, rss=3104, tsize=117, dsize=131178, ssize=131178, runtime=550000, cow=0,
             start=Timeval(1000, 0)),
    None,
    (Ifdata("service", mtu=1500, input_packets=120, input_bytes=9000, output_packets=80, output_bytes=7000),))

EXPECTED = (
    "resource_usage,vm=hello utime=0.420000,stime=0.130000,maxrss=3104i,ixrss=0i,idrss=0i,isrss=0i,"
    "minflt=912i,maxflt=0i,nswap=0i,inblock=0i,outblock=0i,msgsnd=0i,msgrcv=0i,nsignals=0i,nvcsw=1520i,nivcsw=31i\n"
    "kinfo_mem,vm=hello vsize=541065216i,rss=3104i,tsize=117i,dsize=131178i,ssize=131178i,cow_faults=0i,"
    "runtime=550000i,uptime=3605.123456\n"
    "interface,vm=hello,bridge=service send_queue_length=0i,max_send_queue_length=0i,send_queue_drops=0i,"
    "mtu=1500i,baudrate=0i,vm_to_host_packets=120i,vm_to_host_errors=0i,vm_to_host_bytes=9000i,"
    "vm_to_host_mcast=0i,vm_to_host_dropped=0i,collisions=0i,host_to_vm_packets=80i,host_to_vm_errors=0i,"
    "host_to_vm_bytes=7000i,host_to_vm_mcast=0i,host_to_vm_dropped=0i\n")


def test_spec_example_exactly():
    assert encode_stats(Name.of_string("foo:hello"), EXAMPLE, now=4605.123456) == EXPECTED


def test_vm_tag_naming():
    assert vm_tag(Name.of_string("foo:bar:hello")) == "hello"
    assert vm_tag(Name.of_string("foo:bar:hello"), drop_path=False) == "foo:bar:hello"
    assert vm_tag(Name.of_string("hello"), drop_path=False) == ":hello"
    assert vm_tag(Name.of_string("foo:")) == "foo:"


def test_vmm_counters_escaped_and_unsigned():
    st_ = Stats(Rusage(Timeval(1, 5), Timeval(2, 0), nvcsw=-1), None,
                (("vcpu total runtime", 7), ("a,b=c", -1)), ())
    out = encode_stats(Name.of_string("x"), st_)
    lines = out.split("\n")
    assert lines[0].startswith("resource_usage,vm=x utime=1.000005,stime=2.000000,")
    assert "nvcsw=18446744073709551615i" in lines[0]
    assert lines[1] == "vmm,vm=x vcpu\\ total\\ runtime=7i,a\\,b\\=c=18446744073709551615i"
    assert out.endswith("\n") and lines[2] == ""


@given(st.text(max_size=30))
def test_escape_key_leaves_no_bare_separators(s):
    e = escape_key(s)
    stripped = e.replace("\\,", "").replace("\\ ", "").replace("\\=", "")
    assert not any(c in stripped for c in ", =") or "\\" in s


def test_parse_target():
    assert parse_target("127.0.0.1") == TcpTarget("127.0.0.1", 8094)
    assert parse_target("10.0.0.1:9000") == TcpTarget("10.0.0.1", 9000)
    assert parse_target("::1") == TcpTarget("::1", 8094)
    assert parse_target("[::1]:1234") == TcpTarget("::1", 1234)
    assert parse_target("http://127.0.0.1:8086/write?db=x") == HttpTarget("http://127.0.0.1:8086/write?db=x")
    for bad in ("localhost", "1.2.3.4:x", "1.2.3.4:70000", "[::1"):
        assert isinstance(parse_target(bad), str)


def test_cli_without_influx_fails(tmp_path):
    r = subprocess.run([os.path.join(BIN, "albatross-influx"), "--tmpdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 123 and "influx host not provided" in r.stderr


# ------------------------------------------------------------ end to end

class LineListener:
    """A TCP line-protocol listener (like Telegraf's socket_listener)."""

    def __init__(self, port: int = 0):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.data = bytearray()
        self.connections = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(c)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        while True:
            try:
                b = c.recv(65536)
            except OSError:
                return
            if not b:
                return
            self.data += b

    def lines(self) -> list[str]:
        return [x for x in bytes(self.data).decode().split("\n") if x]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


@pytest.fixture
def influxd(tmp_path):
    if INFLUXD is None:
        pytest.skip("influxd not installed (Debian package 'influxdb')")
    d = Influxd(str(tmp_path / "influx"))
    yield d
    d.stop()


@pytest.fixture
def stats_setup(tmp_path):
    """A running albatross-stats with a fake albatrossd and one registered process."""
    tmpdir = make_tmpdir(tmp_path / "run")
    vmmd = FakeVmmd(os.path.join(tmpdir, "util", "vmmd.sock"))
    sleeper = subprocess.Popen(["sleep", "120"])
    sock = os.path.join(tmpdir, "util", "stat.sock")
    args = ["--tmpdir", tmpdir, "--interval", "0.2", "-vv"]
    stats = Daemon("albatross-stats", args, sock, str(tmp_path / "stats.log"))
    ch = vmmd.channel()
    ch.send("foo:hello", StatsAdd("", sleeper.pid), 1)
    assert ch.recv() is not None

    class Setup:
        pass
    s = Setup()
    s.tmpdir, s.vmmd, s.sleeper, s.stats, s.channel, s.args, s.sock = tmpdir, vmmd, sleeper, stats, ch, args, sock
    s.log_path = str(tmp_path / "stats.log")
    yield s
    s.stats.stop()  # the test may have replaced the daemon
    sleeper.kill()
    sleeper.wait()
    vmmd.close()


def influx_daemon(tmp_path, tmpdir: str, *args: str) -> Daemon:
    return Daemon("albatross-influx", ["--tmpdir", tmpdir, "--retry-delay", "0.3", "-vv", *args],
                  None, str(tmp_path / "influx-daemon.log"))


def test_http_mode_into_real_influxd(tmp_path, influxd, stats_setup):
    influxd.create_db("albatross")
    d = influx_daemon(tmp_path, stats_setup.tmpdir, "--influx", influxd.write_url("albatross"))
    try:
        rows = wait_for(lambda: influxd.points("albatross", "resource_usage"), timeout=15,
                        what="points in influxd")
        assert rows[0]["vm"] == "hello"
        assert {"utime", "stime", "maxrss", "maxflt", "nvcsw", "nivcsw"} <= set(rows[0])
        assert rows[0]["maxrss"] > 0
        keys = influxd.query('SHOW FIELD KEYS FROM "resource_usage"', "albatross")["results"][0]["series"][0]
        types = dict(keys["values"])
        assert types["utime"] == "float" and types["maxrss"] == "integer" and types["maxflt"] == "integer"
        mem = wait_for(lambda: influxd.points("albatross", "kinfo_mem"), what="kinfo_mem")
        assert mem[0]["vm"] == "hello" and mem[0]["rss"] > 0 and mem[0]["uptime"] >= 0
        # albatross-stats restarts: albatross-influx reconnects and data keeps coming
        stats_setup.stats.stop()
        n = len(influxd.points("albatross", "resource_usage"))
        stats_setup.stats = Daemon("albatross-stats", stats_setup.args, stats_setup.sock, stats_setup.log_path)
        ch = stats_setup.vmmd.channel()
        ch.send("foo:hello", StatsAdd("", stats_setup.sleeper.pid), 1)
        ch.recv()
        wait_for(lambda: len(influxd.points("albatross", "resource_usage")) > n + 2, timeout=15,
                 what="points after a stats restart")
        assert d.alive()
    finally:
        d.stop()


def test_tcp_mode_line_protocol_accepted_by_influxd(tmp_path, influxd, stats_setup):
    # influxd 1.x has no TCP line-protocol listener (graphite/opentsdb speak other
    # protocols): collect what albatross-influx sends on a local listener, then
    # check that influxd accepts exactly those bytes.
    listener = LineListener()
    d = influx_daemon(tmp_path, stats_setup.tmpdir, "--influx", f"127.0.0.1:{listener.port}",
                      "--no-drop-path", "-n", "foo:")
    try:
        wait_for(lambda: len(listener.lines()) >= 4, what="lines over TCP")
        lines = listener.lines()
        assert lines[0].startswith("resource_usage,vm=:hello utime=")
        assert lines[1].startswith("kinfo_mem,vm=:hello vsize=")
        # the TCP listener goes away and comes back on the same port: reconnect
        port = listener.port
        listener.close()
        time.sleep(0.5)
        listener2 = LineListener(port)
        wait_for(lambda: len(listener2.lines()) >= 2, timeout=15, what="lines after reconnect")
        assert listener2.connections >= 1 and d.alive()
        body = "\n".join(lines[:4]).encode() + b"\n"
        influxd.create_db("tcp")
        assert influxd.write("tcp", body) == 204
        rows = influxd.points("tcp", "resource_usage")
        assert rows and rows[0]["vm"] == ":hello"
        listener2.close()
    finally:
        d.stop()


def test_influx_waits_for_stats_socket(tmp_path):
    """No stats daemon yet: keeps retrying, no crash."""
    tmpdir = make_tmpdir(tmp_path)
    listener = LineListener()
    d = influx_daemon(tmp_path, tmpdir, "--influx", f"127.0.0.1:{listener.port}")
    try:
        deadline = time.monotonic() + 30
        while "error connecting to socket" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "error connecting to socket" in d.log()
        assert d.alive()
    finally:
        d.stop()
        listener.close()
    assert free_port() > 0
