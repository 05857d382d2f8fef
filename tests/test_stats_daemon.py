"""albatross-stats end to end: a fake albatrossd, a busy process attached to a
tap in a test network namespace, real sockets in a temporary tmpdir."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from albatross.policy.names import Name
from albatross.wire import messages as m

from console_stats_helpers import BIN, Client, Daemon, FakeVmmd, make_tmpdir, request, wait_for

# The "unikernel": attaches to a tap, keeps sending frames into it, burns CPU, holds memory.
UNIKERNEL = r"""
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000))
ballast = bytearray(os.urandom(1 << 20)) * 16
frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"albatross" * 6
print("ready", flush=True)
while True:
    os.write(fd, frame)
    t = time.monotonic() + 0.01
    while time.monotonic() < t:
        pass
"""


def netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and taps"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no ip(8)"
    return None


@pytest.fixture
def netns():
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    ns = f"albstats{os.getpid()}"
    run = lambda *a: subprocess.run(["ip", "netns", "exec", ns, *a], check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        run("ip", "link", "add", "br0", "type", "bridge")
        run("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
        run("ip", "link", "set", "tap0", "master", "br0")
        run("ip", "link", "set", "tap0", "up")
        run("ip", "link", "set", "br0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def stats_daemon(tmp_path, tmpdir, ns: str | None, interval: str = "0.3") -> Daemon:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    sock = os.path.join(tmpdir, "util", "stat.sock")
    d = Daemon.__new__(Daemon)
    d.log_path = str(tmp_path / "stats.log")
    with open(d.log_path, "ab") as out:
        d.proc = subprocess.Popen([*prefix, os.path.join(BIN, "albatross-stats"), "--tmpdir", tmpdir,
                                   "--interval", interval, "-vv"], stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: d._connectable(sock), what="stat.sock")
    d.sock = sock
    return d


def add(channel: Client, name: str, pid: int, taps=(), seq: int = 1) -> None:
    channel.send(name, m.StatsAdd("", pid, tuple(taps)), seq)
    r = channel.recv()
    assert r.payload == m.String("added") and r.header.sequence == seq, r


def next_data(c: Client) -> m.Wire:
    while True:
        w = c.recv()
        assert w is not None, "subscription closed"
        if isinstance(w.payload, m.StatsData):
            return w


def test_samples_busy_process_and_tap_counters(tmp_path, netns):
    tmpdir = make_tmpdir(tmp_path)
    vmmd = FakeVmmd(os.path.join(tmpdir, "util", "vmmd.sock"))
    uk = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", UNIKERNEL, "tap0"],
                          stdout=subprocess.PIPE)
    d = None
    try:
        assert uk.stdout.readline() == b"ready\n"
        d = stats_daemon(tmp_path, tmpdir, netns)
        ch = vmmd.channel()
        w0 = vmmd.initials[0]
        assert isinstance(w0.payload, m.StatsInitial) and w0.header.sequence == 0 and w0.header.name.is_root
        add(ch, "foo:vm1", uk.pid, [("service", "tap0"), ("nope", "tapmissing")])
        with Client(d.sock) as sub, Client(d.sock) as root:
            sub.send("foo:", m.StatsSubscribe(), 1)
            assert sub.recv().payload == m.String("subscribed")
            root.send(":", m.StatsSubscribe(), 1, version=5)
            assert root.recv().payload == m.String("subscribed")
            first = next_data(sub)
            assert str(first.header.name) == ":vm1" and first.header.sequence == 0
            assert str(next_data(root).header.name) == "foo:vm1"
            time.sleep(0.5)
            later = next_data(sub)
            s1, s2 = first.payload.stats, later.payload.stats
            cpu = s2.rusage.utime.seconds * 10**6 + s2.rusage.utime.microseconds
            assert cpu > 0 and s2.kinfo_mem.rss * os.sysconf("SC_PAGE_SIZE") > 16 << 20
            assert s2.kinfo_mem.vsize > 0 and s2.kinfo_mem.runtime > 0 and s2.vmm is None
            assert [i.bridge for i in s2.ifdata] == ["service"]
            assert s2.ifdata[0].mtu == 1500
            assert s2.ifdata[0].input_packets > s1.ifdata[0].input_packets > 0
            assert s2.ifdata[0].input_bytes > s1.ifdata[0].input_bytes
            # remove: no more data for it; the channel keeps working
            ch.send("foo:vm1", m.StatsRemove(), 2)
            r = ch.recv()
            assert r.payload == m.String("removed") and r.header.sequence == 2
    finally:
        uk.kill()
        uk.wait()
        if d:
            d.stop()
        vmmd.close()


def test_reconnects_to_vmmd_and_exited_process_is_dropped(tmp_path):
    tmpdir = make_tmpdir(tmp_path)
    vmmd_path = os.path.join(tmpdir, "util", "vmmd.sock")
    d = stats_daemon(tmp_path, tmpdir, None, "0.2")  # vmmd not there yet: retries every second
    vmmd = FakeVmmd(vmmd_path)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ch = vmmd.channel(timeout=5)
        add(ch, "vm", sleeper.pid)
        with Client(d.sock) as sub:
            sub.send(":", m.StatsSubscribe())
            sub.recv()
            assert str(next_data(sub).header.name) == ":vm"
            # albatrossd goes away: stats forgets the unikernels, reconnects
            ch.close()
            ch = vmmd.channel(timeout=5)
            assert len(vmmd.initials) == 2
            time.sleep(0.5)
            sub.sock.settimeout(0.6)
            with pytest.raises(socket.timeout):
                sub.recv()  # nothing registered any more
            sub.sock.settimeout(5)
            add(ch, "vm", sleeper.pid, seq=5)
            assert str(next_data(sub).header.name) == ":vm"
            # the process exits: rusage fails, the unikernel is unregistered
            sleeper.kill()
            sleeper.wait()
            time.sleep(0.6)
            assert "failed to get rusage" in d.log()
            sub.sock.settimeout(0.5)
            with pytest.raises(socket.timeout):
                while True:
                    next_data(sub)
    finally:
        sleeper.kill()
        d.stop()
        vmmd.close()


def test_bad_input_and_unexpected_commands(tmp_path):
    tmpdir = make_tmpdir(tmp_path)
    d = stats_daemon(tmp_path, tmpdir, None)
    try:
        for payload, msg in ((m.StatsInitial(), "unexpected message initial"),
                             (m.ConsoleListInactive(), "unexpected command")):
            with Client(d.sock) as c:
                c.send(":", payload, 9)
                r = c.recv()
                assert r.payload == m.Failure(msg) and r.header.sequence == 9
                assert c.closed_by_peer()
        for raw in (struct.pack(">i", 3) + b"\x30\x01\x00", struct.pack(">i", 1 << 29)):
            with Client(d.sock) as c:
                c.send_raw(raw)
                assert c.closed_by_peer()
        # add/remove are accepted on stat.sock too (the client's stats-add)
        with Client(d.sock) as c:
            c.send("x:y", m.StatsAdd("", os.getpid(), ()), 1)
            assert c.recv().payload == m.String("added")
            c.send("x:y", m.StatsRemove(), 2)
            assert c.recv().payload == m.String("removed")
        # subscribing twice with the same name closes the older subscriber
        old, new = Client(d.sock), Client(d.sock)
        old.send("a:", m.StatsSubscribe())
        assert old.recv().payload == m.String("subscribed")
        new.send("a:", m.StatsSubscribe())
        assert new.recv().payload == m.String("subscribed")
        assert old.closed_by_peer()
        old.close()
        new.close()
        assert d.alive()
        assert request(d.sock, Name.of_string(":"), m.StatsRemove()).payload == m.String("removed")
    finally:
        d.stop()


def test_client_stats_add_remove_subscribe(tmp_path):
    tmpdir = make_tmpdir(tmp_path)
    d = stats_daemon(tmp_path, tmpdir, None, "0.2")
    exe = os.path.join(BIN, "albatross-client")
    try:
        r = subprocess.run([exe, "stats-add", str(os.getpid()), "-n", "c:me", "--bridge", "service:lo",
                            "--tmpdir", tmpdir], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and "added" in r.stdout, r.stdout + r.stderr
        r = subprocess.run([exe, "stats-add", "1", "--bridge", "nocolon", "--tmpdir", tmpdir],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 124 and "bridge:tap" in r.stdout + r.stderr
        proc = subprocess.Popen([exe, "stats", "-n", "c:", "--tmpdir", tmpdir], stdout=subprocess.PIPE, text=True)
        try:
            assert "subscribed" in proc.stdout.readline()
            line = proc.stdout.readline()
            assert line.startswith("stats: utime "), line
            rest = "".join(proc.stdout.readline() for _ in range(3))
            assert "bridge service" in rest and "mtu 65536" in rest
        finally:
            proc.terminate()
            proc.wait()
        r = subprocess.run([exe, "stats-remove", "-n", "c:me", "--tmpdir", tmpdir],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and "removed" in r.stdout
    finally:
        d.stop()


def test_kvm_counters_from_a_debugfs_tree(tmp_path, monkeypatch, caplog):
    """KvmCounters over a directory shaped like /sys/kernel/debug/kvm: one
    entry per VM named <pid>-<fd>, a file per statistic; directories and
    files the kernel refuses are skipped, a vanished guest gives None."""
    from albatross.daemons import stats

    root = tmp_path / "kvm"
    absent = stats.KvmCounters(str(root))
    assert absent.scan() == {} and absent.scan() == {}
    assert caplog.text.count("KVM statistics unavailable") == 1  # warned once
    root.mkdir()
    vm = root / "4242-11"
    vm.mkdir()
    (vm / "exits").write_text("17\n")
    (vm / "blocking").write_text("0\n")
    (vm / "halt_poll_fail_hist").write_text("0 1 2\n")
    (vm / "secret").write_text("5\n")
    (vm / "vcpu0").mkdir()
    (root / "efi").mkdir()  # not a VM directory
    (root / "mmu").write_text("x")
    empty = root / "5678-3"  # a VM without any statistics
    empty.mkdir()
    kvm = stats.KvmCounters(str(root))
    assert kvm.scan() == {4242: str(vm), 5678: str(empty)}

    real_open = open
    tried = []

    def refusing_open(path, *a, **kw):
        tried.append(os.path.basename(path))
        if os.path.basename(path) == "secret":  # as under kernel lockdown
            raise PermissionError(1, "Operation not permitted")
        return real_open(path, *a, **kw)
    monkeypatch.setattr(stats, "open", refusing_open, raising=False)
    assert kvm.read(str(vm)) == (("blocking", 0), ("exits", 17))
    assert kvm.unreadable[str(vm)] == {"secret", "vcpu0"}
    assert kvm.read(str(empty)) is None
    tried.clear()
    (vm / "exits").write_text("18\n")
    assert kvm.read(str(vm)) == (("blocking", 0), ("exits", 18))
    assert "secret" not in tried and "vcpu0" not in tried  # not tried again
    # one sampling round: counters by tender pid, None for a pid without a VM
    vmm_of = kvm.reader()
    assert vmm_of(4242) == (("blocking", 0), ("exits", 18)) and vmm_of(5678) is None and vmm_of(1) is None
    # the guest goes away: None now, and its remembered entries are dropped at the next scan
    shutil.rmtree(vm)
    assert kvm.read(str(vm)) is None
    assert kvm.scan() == {5678: str(empty)} and set(kvm.unreadable) == {str(empty)}
