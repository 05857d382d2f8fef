"""Benchmarks of albatross-console and albatross-stats.

* console lines/s ingested from 1 and from 100 fifos (daemon subprocess),
* fifo write -> subscriber latency,
* CPU time of one stats round for 100 and 1,000 unikernels (in process:
  /proc reads, netlink dump, encoding),
* RSS of the daemons.

Run: .venv/bin/python bench/console_stats.py
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from albatross.daemons.stats import LinkCounters, make_sampler
from albatross.daemons.stats_core import Registration, StatsState
from albatross.policy.names import Name
from albatross.wire import FrameReader, Header, Wire, decode_wire, encode_wire, frame
from albatross.wire import messages as m

BIN = os.path.dirname(sys.executable)


class Client:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.reader = FrameReader()

    def send(self, name: str, payload, seq: int = 0) -> None:
        self.sock.sendall(frame(encode_wire(Wire(Header(Name.of_string(name), seq), payload))))

    def recv(self):
        while True:
            f = self.reader.next_frame()
            if f is not None:
                return decode_wire(f)
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self.reader.feed(data)


def start_console(tmpdir: str) -> subprocess.Popen:
    for sub in ("util", "fifo"):
        os.makedirs(os.path.join(tmpdir, sub), exist_ok=True)
    sock = os.path.join(tmpdir, "util", "console.sock")
    p = subprocess.Popen([os.path.join(BIN, "albatross-console"), "--tmpdir", tmpdir, "-q"])
    for _ in range(500):
        try:
            Client(sock).sock.close()
            return p
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("console did not start")


def inactive(sock: str, path: str) -> int:
    c = Client(sock)
    c.send(path + ":", m.ConsoleListInactive())
    w = c.recv()
    c.sock.close()
    return len(w.payload.names)


def ingest(tmpdir: str, fifos: int, lines_per_fifo: int, tag: str) -> float:
    sock = os.path.join(tmpdir, "util", "console.sock")
    adder = Client(sock)
    fds = []
    for i in range(fifos):
        name = f"{tag}:vm{i}"
        path = os.path.join(tmpdir, "fifo", name)
        os.mkfifo(path)
        adder.send(name, m.ConsoleAdd(10_000), i + 1)
        assert adder.recv().payload == m.Empty()
        fds.append(os.open(path, os.O_WRONLY))
    payload = b"".join(b"console line number %08d of a unikernel\n" % j for j in range(lines_per_fifo))
    t0 = time.perf_counter()
    # write round-robin in 64 KiB pieces so all fifos are busy at once
    views = {fd: memoryview(payload) for fd in fds}
    for fd in fds:
        os.set_blocking(fd, False)
    while views:
        for fd in list(views):
            v = views[fd]
            try:
                n = os.write(fd, v[:65536])
            except BlockingIOError:
                continue
            v = v[n:]
            if v:
                views[fd] = v
            else:
                del views[fd]
                os.close(fd)
    while inactive(sock, tag) < fifos:
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    adder.sock.close()
    return fifos * lines_per_fifo / dt


def latency(tmpdir: str, samples: int = 300) -> list[float]:
    sock = os.path.join(tmpdir, "util", "console.sock")
    adder = Client(sock)
    path = os.path.join(tmpdir, "fifo", "lat:vm")
    os.mkfifo(path)
    adder.send("lat:vm", m.ConsoleAdd(1), 1)
    adder.recv()
    fd = os.open(path, os.O_WRONLY)
    sub = Client(sock)
    sub.send("lat:vm", m.ConsoleSubscribe(count=0))
    sub.recv()
    out = []
    for i in range(samples):
        t0 = time.perf_counter()
        os.write(fd, b"ping %d\n" % i)
        w = sub.recv()
        out.append(time.perf_counter() - t0)
        assert w.payload.line == b"ping %d" % i
    os.close(fd)
    sub.sock.close()
    adder.sock.close()
    return out


class NullSub:
    closed = False

    def send(self, data: bytes) -> bool:
        return True


def stats_round(n: int, rounds: int = 5) -> float:
    """Mean CPU seconds of one round with n unikernels, each with a tap (lo)."""
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(min(n, 50))]
    try:
        state: StatsState = StatsState()
        lo = socket.if_nametoindex("lo")
        for i in range(n):
            state.add(Registration(Name.of_string(f"p:vm{i}"), sleepers[i % len(sleepers)].pid, "",
                                   (("service", lo, "lo"),)))
        state.subscribe(Name.of_string(":"), 5, NullSub())
        links = LinkCounters()
        times = []
        for _ in range(rounds):
            t0 = time.process_time()
            outs, _ = state.tick(make_sampler(links.dump()))
            for sub, w in outs:
                sub.send(frame(encode_wire(w)))
            times.append(time.process_time() - t0)
            assert len(outs) == n
        links.close()
        return statistics.mean(times)
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        console = start_console(tmpdir)
        proc = psutil.Process(console.pid)
        try:
            rss0 = proc.memory_info().rss
            cpu0 = sum(proc.cpu_times()[:2])
            one = ingest(tmpdir, 1, 200_000, "one")
            hundred = ingest(tmpdir, 100, 5_000, "hundred")
            lat = latency(tmpdir)
            rss1 = proc.memory_info().rss
            cpu1 = sum(proc.cpu_times()[:2])
        finally:
            console.terminate()
            console.wait()
    print(f"console ingest, 1 fifo:     {one:12,.0f} lines/s")
    print(f"console ingest, 100 fifos:  {hundred:12,.0f} lines/s")
    lat.sort()
    print(f"fifo write -> subscriber:   median {statistics.median(lat) * 1e6:,.0f} us, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1e6:,.0f} us")
    print(f"console daemon RSS:         {rss0 / 2**20:.1f} MiB idle, {rss1 / 2**20:.1f} MiB after "
          f"101 full rings ({cpu1 - cpu0:.2f} s CPU)")
    for n in (100, 1000):
        print(f"stats round, {n:5d} unikernels: {stats_round(n) * 1e3:8.1f} ms CPU")


if __name__ == "__main__":
    main()
