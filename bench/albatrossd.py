"""Benchmark albatrossd (not a test; needs root).

* median latency from sending ``create`` until the tender runs, against a bare
  posix_spawn of the same ``taskset ... tender ...`` command line (ratio);
* ``info`` requests per second with N unikernels supervised (default 1000);
* the daemon's RSS with N unikernels.

A tiny shell tender (placed in the bench dbdir, where albatrossd looks first)
creates ``<image>.running`` and then sleeps, so thousands of them are cheap.
Run: .venv/bin/python bench/albatrossd.py [--count 1000] [--samples 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "src"))

from albatross.core import UnikernelConfig  # noqa: E402
from albatross.policy.names import Name  # noqa: E402
from albatross.wire import decode_wire, encode_wire, frame  # noqa: E402
from albatross.wire import messages as m  # noqa: E402
from albatross.wire.framing import FrameReader  # noqa: E402
from albatross.wire.messages import Header, Wire  # noqa: E402
from solo5_fixtures import build_image  # noqa: E402

TENDER = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "solo5-hvt v0.0 (bench)"; echo "ABI version 2"; exit 0; fi
for a in "$@"; do case "$a" in *.img) img="$a";; esac; done
: > "$img.running"
exec sleep 100000
"""


def request(sock_path: str, name: str, cmd: m.Cmd) -> m.Reply | m.Failure:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(frame(encode_wire(Wire(Header(Name.of_string(name)), cmd))))
    reader = FrameReader()
    try:
        while True:
            f = reader.next_frame()
            if isinstance(f, bytes):
                return decode_wire(f).payload
            data = s.recv(1 << 20)
            if not data:
                raise RuntimeError("connection closed")
            reader.feed(data)
    finally:
        s.close()


def wait_file(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.0002)


def bare_latency(tender: str, image: str, samples: int) -> list[float]:
    out = []
    taskset = shutil.which("taskset")
    for i in range(samples):
        img = f"{image}.{i}.img"
        shutil.copyfile(image, img)
        argv = [taskset, "-c", "0", tender, "--mem=16", "--", img, "--name=bare"]
        t0 = time.perf_counter()
        subprocess.run([tender, "--version"], capture_output=True)  # albatrossd checks the version too
        pid = os.posix_spawn(taskset, argv, os.environ)
        wait_file(img + ".running")
        out.append(time.perf_counter() - t0)
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.unlink(img)
        os.unlink(img + ".running")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--info-requests", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 8 * args.count + 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))

    base = tempfile.mkdtemp(prefix="alb-bench-")
    tmpdir, dbdir = os.path.join(base, "run"), os.path.join(base, "db")
    for d in (os.path.join(tmpdir, "util"), os.path.join(tmpdir, "fifo"), os.path.join(dbdir, "block")):
        os.makedirs(d)
    tender = os.path.join(dbdir, "solo5-hvt")
    with open(tender, "w") as fh:
        fh.write(TENDER)
    os.chmod(tender, 0o755)
    image = build_image(devices=())
    image_file = os.path.join(base, "bench.hvt")
    with open(image_file, "wb") as fh:
        fh.write(image)

    stub = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "console_stub.py"), tmpdir],
                            stdout=subprocess.PIPE)
    stub.stdout.readline()
    daemon = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "albatrossd"), "--tmpdir", tmpdir,
                               "--dbdir", dbdir, "-q"])
    sock = os.path.join(tmpdir, "util", "vmmd.sock")
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if time.monotonic() > deadline:
            sys.exit("albatrossd did not start")
        time.sleep(0.05)
    time.sleep(0.2)
    try:
        cfg = UnikernelConfig(image=image, memory=16, argv=None)
        # create -> running latency
        lat = []
        for i in range(args.samples):
            name = f"lat{i}"
            t0 = time.perf_counter()
            r = request(sock, name, m.UnikernelCreate(cfg))
            assert r == m.String("created unikernel"), r
            wait_file(os.path.join(tmpdir, f":{name}.img.running"))
            lat.append(time.perf_counter() - t0)
            request(sock, name, m.UnikernelDestroy())
        bare = bare_latency(tender, image_file, args.samples)
        med, bmed = statistics.median(lat), statistics.median(bare)
        print(f"create->running median: albatrossd {med * 1000:.1f} ms, bare spawn {bmed * 1000:.1f} ms, "
              f"ratio {med / bmed:.1f}x")

        t0 = time.perf_counter()
        for i in range(args.count):
            r = request(sock, f"u{i}", m.UnikernelCreate(cfg))
            assert r == m.String("created unikernel"), (i, r)
        print(f"created {args.count} unikernels in {time.perf_counter() - t0:.1f} s")
        rss = psutil.Process(daemon.pid).memory_info().rss
        print(f"albatrossd RSS with {args.count} unikernels: {rss / 2**20:.1f} MiB")
        for label, name in (("single name", "u1"), (f"all {args.count}", ":")):
            n = args.info_requests if name != ":" else max(10, args.info_requests // 10)
            t0 = time.perf_counter()
            for _ in range(n):
                r = request(sock, name, m.UnikernelInfoCmd())
            dt = time.perf_counter() - t0
            print(f"info ({label}, {len(r.unikernels)} entries): {n / dt:.0f} requests/s")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
        stub.terminate()
        stub.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
