"""The real albatross daemons side by side, for system tests.

:class:`System` runs albatross-console, albatrossd (the stand-in tenders of
tests/tender/bin first on PATH), albatross-stats and albatross-influx as
subprocesses in one temporary tmpdir/dbdir, optionally inside a network
namespace (:func:`make_netns`), and drives them with the real
albatross-client.  Everything is bounded in time: waits poll with deadlines,
streaming clients are read through a queue with timeouts.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import psutil

from albatross.policy.names import Name
from albatross.wire import END, FrameReader, Header, Wire, decode_wire, encode_wire, frame

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
TENDERS = os.path.join(HERE, "tender", "bin")

SOCKETS = {"albatrossd": "vmmd.sock", "albatross-console": "console.sock", "albatross-stats": "stat.sock"}
#: stop order: the consumers first
ORDER = ("albatross-influx", "albatross-stats", "albatrossd", "albatross-console")


def missing_privileges(netns: bool = False) -> str | None:
    """Why the system tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "albatrossd needs root (taps, taskset)"
    for tool in ("taskset", "ip"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    if netns:
        if not os.path.exists("/dev/net/tun"):
            return "needs /dev/net/tun"
        if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
            return "needs ip netns"
    return None


def wait(cond, what: str, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


class Stream:
    """A long-running client (console, stats) whose output lines are read with timeouts."""

    def __init__(self, argv: list[str], env: dict):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                  errors="replace")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, pattern: str, timeout: float = 15.0) -> list[str]:
        """Lines read up to and including the first one matching ``pattern``."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"stream ended (exit {self.p.wait()}) before {pattern!r}; got {got[-10:]}")
            got.append(line)
            self.seen.append(line)
            if re.search(pattern, line):
                return got
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got {got[-10:]}")

    def rest(self, timeout: float = 15.0) -> list[str]:
        """All remaining lines until the stream ends."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                return got
            got.append(line)
            self.seen.append(line)
        raise AssertionError(f"stream did not end within {timeout}s; got {got[-10:]}")

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


class Wired:
    """A raw connection to a daemon's socket, speaking wire messages."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = FrameReader()

    def send(self, name: str | Name, payload, sequence: int = 0, version: int = 5) -> None:
        if isinstance(name, str):
            name = Name.of_string(name)
        self.sock.sendall(frame(encode_wire(Wire(Header(name, sequence, version), payload))))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Wire | None:
        """The next message; None when the peer closed (or reset) the connection."""
        while True:
            f = self.reader.next_frame()
            if f is END:
                return None
            if f is not None:
                return decode_wire(f)
            try:
                data = self.sock.recv(1 << 16)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not data:
                return None
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Processes:
    """What a harness needs to find its tenders and stop everything: it has
    ``tmpdir`` (images live there), ``streams``, ``procs`` (stopped in
    ``order``) and ``stop(program)``."""

    order: tuple[str, ...] = ORDER

    def tenders(self) -> list[psutil.Process]:
        """Tender processes running an image of this system (it lives in our tmpdir)."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if any(a.startswith(self.tmpdir + "/") and a.endswith(".img") for a in cmd):
                out.append(p)
        return out

    def teardown(self) -> None:
        for s in self.streams:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass
        for program in self.order:
            if program in self.procs:
                try:
                    self.stop(program)
                except AssertionError:
                    pass
        for p in self.tenders():
            try:
                p.kill()
            except psutil.Error:
                pass


class System(Processes):
    """albatross-console, albatrossd, albatross-stats (and albatross-influx) together."""

    def __init__(self, base, netns: str | None = None):
        self.base = base
        self.netns = netns
        self.tmpdir = str(base / "run")
        self.dbdir = str(base / "db")
        for d in (f"{self.tmpdir}/util", f"{self.tmpdir}/fifo", f"{self.dbdir}/block"):
            os.makedirs(d, exist_ok=True)
        self.env = dict(os.environ, PATH=f"{TENDERS}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.procs: dict[str, subprocess.Popen] = {}
        self.streams: list[Stream] = []

    # -- daemons -----------------------------------------------------------------
    def sock(self, program_or_file: str) -> str:
        return os.path.join(self.tmpdir, "util", SOCKETS.get(program_or_file, program_or_file))

    def log_path(self, program: str) -> str:
        return str(self.base / f"{program}.log")

    def log(self, program: str) -> str:
        try:
            with open(self.log_path(program), errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def start(self, program: str, *args: str, in_netns: bool = True) -> subprocess.Popen:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns and in_netns else []
        sock = SOCKETS.get(program)
        if sock is not None and os.path.exists(self.sock(program)):
            os.unlink(self.sock(program))  # so that waiting below sees the new daemon
        with open(self.log_path(program), "a") as log:
            log.write(f"---- start {program} {' '.join(args)}\n")
            log.flush()
            p = subprocess.Popen([*prefix, os.path.join(BIN, program), "--tmpdir", self.tmpdir, "-vv", *args],
                                 stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs[program] = p
        if sock is not None:
            wait(lambda: p.poll() is not None or accepts(self.sock(program)), f"{program} to listen")
            assert p.poll() is None, f"{program} exited with {p.returncode}:\n{self.log(program)}"
        return p

    def start_console(self) -> subprocess.Popen:
        return self.start("albatross-console")

    def start_albatrossd(self) -> subprocess.Popen:
        return self.start("albatrossd", "--dbdir", self.dbdir)

    def start_stats(self, interval: float = 0.5, *extra: str) -> subprocess.Popen:
        return self.start("albatross-stats", "--interval", str(interval), *extra)

    def start_influx(self, url: str) -> subprocess.Popen:
        # outside the namespace: influxd listens on the host's loopback
        return self.start("albatross-influx", "--influx", url, "--retry-delay", "0.3", in_netns=False)

    def start_all(self, interval: float = 0.5, stats_args: tuple[str, ...] = ()) -> None:
        self.start_console()
        self.start_albatrossd()
        self.start_stats(interval, *stats_args)
        # albatross-stats has handshaken with albatrossd
        wait(lambda: "connected to vmmd" in self.log("albatross-stats"), "albatross-stats to reach albatrossd")

    def stop(self, program: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        p = self.procs.pop(program)
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"{program} did not stop on signal {sig} within {timeout}s")

    def alive(self, program: str) -> bool:
        p = self.procs.get(program)
        return p is not None and p.poll() is None

    # -- clients -----------------------------------------------------------------
    def client(self, *args: str, code: int | None = 0) -> str:
        p = subprocess.run([os.path.join(BIN, "albatross-client"), *args, "--tmpdir", self.tmpdir],
                           capture_output=True, text=True, timeout=60, env=self.env, errors="replace")
        if code is not None:
            assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
        return p.stdout + p.stderr

    def stream(self, *args: str) -> Stream:
        s = Stream([os.path.join(BIN, "albatross-client"), *args, "--tmpdir", self.tmpdir], self.env)
        self.streams.append(s)
        return s

    def wired(self, program: str) -> Wired:
        return Wired(self.sock(program))


def make_netns(bridge: str = "service") -> str:
    """A fresh network namespace with loopback up and an up bridge ``bridge``."""
    name = "albsys-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", bridge, "up"], check=True)
    except subprocess.CalledProcessError:
        delete_netns(name)
        raise
    return name


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


SEND_FRAMES = """
import socket, sys
iface, n = sys.argv[1], int(sys.argv[2])
frame = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x99" + b"\\x88\\xb5" + b"frame from the host side".ljust(100, b".")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for _ in range(n):
    s.send(frame)
"""


def send_frames(netns: str, iface: str, n: int) -> int:
    """Send ``n`` broadcast Ethernet frames (114 bytes each) out of ``iface`` in ``netns``."""
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SEND_FRAMES, iface, str(n)],
                   check=True, timeout=30)
    return 114
