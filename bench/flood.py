"""Flood benchmark of albatross-tls-endpoint (issue 12 rows 5 and 6): the
real endpoint process in front of the tests' stand-in daemons, on loopback.

Scenarios (the endpoint runs with its default limits, no flags, so the same
script measures another source tree: PYTHONPATH=OTHER/src .venv/bin/python
bench/flood.py):

* ``idle``: 2,000 TCP connections from 127.0.0.2 that never handshake;
* ``idle-1024``: the same with the endpoint under ``ulimit -n 1024``
  (systemd's default LimitNOFILE);
* ``bigcerts``: 30 concurrent clients presenting a 15 MB certificate from
  a CA the endpoint does not know.

During each, a legitimate client on 127.0.0.1 runs remote ``info`` in a
loop.  Printed: connections held and refused, legitimate-client latency
(median, 95th percentile, maximum) and failures during the flood, endpoint
RSS (peak and after), threads, descriptors, and log lines.

Usage: .venv/bin/python bench/flood.py [idle] [idle-1024] [bigcerts]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "security"))

from tls_helpers import (EndpointProcess, big_certificate, big_clients_in_subprocess,  # noqa: E402
                         connect_from, raise_nofile, state)

from albatross.tls import pki  # noqa: E402

FLOOD = 2000
BIG_CLIENTS = 30
MB = 1 << 20


class Legit:
    """Remote ``info`` in a loop from 127.0.0.1: (start, seconds, exit code) of each."""

    def __init__(self, ep: EndpointProcess):
        self.ep = ep
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                rc = self.ep.info()
            except Exception:  # noqa: BLE001 - counted as a failure
                rc = -1
            self.samples.append((start, time.monotonic() - start, rc))

    def between(self, t0: float, t1: float) -> str:
        xs = [(d, rc) for s, d, rc in self.samples if t0 <= s <= t1]
        ok = sorted(d for d, rc in xs if rc == 0)
        failed = len(xs) - len(ok)
        if not ok:
            return f"{len(xs)} requests, {failed} failed, none served"
        p95 = ok[min(len(ok) - 1, int(len(ok) * 0.95))]
        return (f"{len(xs)} requests, {failed} failed; latency median {statistics.median(ok) * 1000:.0f} ms, "
                f"p95 {p95 * 1000:.0f} ms, max {ok[-1] * 1000:.0f} ms")


class Sampler:
    """Peak threads and descriptors of the endpoint, every 50 ms."""

    def __init__(self, ep: EndpointProcess):
        self.ep = ep
        self.peak = {"Threads": 0, "fds": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                st = self.ep.status()
            except (OSError, ValueError):
                return
            for k in self.peak:
                self.peak[k] = max(self.peak[k], st[k])
            time.sleep(0.05)


def quiet():
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def idle(nofile: int | None) -> None:
    label = f"{FLOOD} never-handshaking connections" + (f", endpoint under ulimit -n {nofile}" if nofile else "")
    print(f"== {label}")
    raise_nofile(FLOOD + 500)
    ep = EndpointProcess(nofile=nofile)
    socks = []
    try:
        base = ep.status()
        lines0 = len(ep.log().splitlines())
        legit, sampler = Legit(ep), Sampler(ep)
        with quiet():
            legit.thread.start()
            sampler.thread.start()
            time.sleep(1)
            t0 = time.monotonic()
            failed_connects = 0
            for _ in range(FLOOD):
                try:
                    socks.append(connect_from("127.0.0.2", ep.port))
                except OSError:
                    failed_connects += 1
            t_connected = time.monotonic() - t0
            time.sleep(3)
            t1 = time.monotonic()
            during = ep.status()
            legit.stop.set()
            sampler.stop.set()
            legit.thread.join(30)
            sampler.thread.join(5)
        states = [state(s) for s in socks]
        log = ep.log()
        print(f"  connects: {len(socks)} made in {t_connected:.1f} s ({failed_connects} failed to connect)")
        print(f"  held by the endpoint 3 s later: {states.count('open')}; refused or closed: "
              f"{FLOOD - failed_connects - states.count('open')}")
        print(f"  legitimate client during the flood: {legit.between(t0, t1)}")
        print(f"  endpoint: RSS {during['VmRSS'] // 1024} MB (base {base['VmRSS'] // 1024} MB), threads peak "
              f"{sampler.peak['Threads']} (base {base['Threads']}), descriptors peak {sampler.peak['fds']}")
        print(f"  endpoint log: {len(log.splitlines()) - lines0} lines, {len(log) // 1024} KiB "
              f"(EMFILE lines: {log.count('Too many open files')})")
    finally:
        for s in socks:
            s.close()
        ep.close()


def bigcerts() -> None:
    print(f"== {BIG_CLIENTS} concurrent 15 MB client certificates from an unknown CA")
    ep = EndpointProcess()
    try:
        cert, key = big_certificate(15 * MB)
        pki.write_file(ep.path("big.pem"), pki.pem_chain([cert]))
        pki.write_file(ep.path("big.key"), pki.key_pem(key))
        base = ep.status()
        legit, sampler = Legit(ep), Sampler(ep)
        with quiet():
            legit.thread.start()
            sampler.thread.start()
            time.sleep(1)
            t0 = time.monotonic()
            results = big_clients_in_subprocess(ep.port, BIG_CLIENTS, ep.path("big.pem"), ep.path("big.key"))
            t1 = time.monotonic()
            after = ep.status()
            time.sleep(3)
            later = ep.status()
            legit.stop.set()
            sampler.stop.set()
            legit.thread.join(30)
            sampler.thread.join(5)
        alerts = sum("unknown ca" in r.get("error", "") for r in results)
        accepted = sum(r["ok"] for r in results)
        print(f"  {BIG_CLIENTS} clients done in {t1 - t0:.1f} s: {alerts} refused with 'unknown ca', "
              f"{BIG_CLIENTS - alerts - accepted} closed (handshake timeout while waiting), {accepted} accepted")
        print(f"  legitimate client during the flood: {legit.between(t0, t1)}")
        print(f"  endpoint: peak RSS {after['VmHWM'] // 1024} MB (base {base['VmRSS'] // 1024} MB), RSS after "
              f"{after['VmRSS'] // 1024} MB, 3 s later {later['VmRSS'] // 1024} MB; threads peak "
              f"{sampler.peak['Threads']} (base {base['Threads']})")
    finally:
        ep.close()


def main(argv: list[str]) -> None:
    chosen = argv or ["idle", "idle-1024", "bigcerts"]
    for name in chosen:
        {"idle": lambda: idle(None), "idle-1024": lambda: idle(1024), "bigcerts": bigcerts}[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
