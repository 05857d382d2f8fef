"""The real daemons together: albatross-console, albatrossd (with the stand-in
tender) and albatross-stats, driven by albatross-client as an operator would."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from solo5_fixtures import build_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin") if os.path.isdir(os.path.join(ROOT, ".venv", "bin")) else os.path.dirname(
    shutil.which("albatross-client") or "")
TENDERS = os.path.join(ROOT, "tests", "tender", "bin")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("taskset") or not shutil.which("ip"),
    reason="albatrossd needs root and the taskset and ip commands")


class Host:
    def __init__(self, base, netns: str | None = None):
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.tmpdir = str(base / "run")
        self.dbdir = str(base / "db")
        for d in (f"{self.tmpdir}/util", f"{self.tmpdir}/fifo", f"{self.dbdir}/block"):
            os.makedirs(d)
        self.env = dict(os.environ, PATH=f"{TENDERS}:{os.environ['PATH']}")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = base

    def start(self, program: str, *args: str, sock: str | None = None) -> None:
        log = open(self.logs / f"{program}.log", "a")
        p = subprocess.Popen([*self.prefix, os.path.join(BIN, program), "--tmpdir", self.tmpdir, *args, "-v"],
                             stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs[program] = p
        if sock is not None:
            path = os.path.join(self.tmpdir, "util", sock)
            wait(lambda: _accepts(path) or p.poll() is not None, f"{program} to listen")
            assert p.poll() is None, open(self.logs / f"{program}.log").read()

    def stop(self, program: str) -> None:
        p = self.procs.pop(program)
        p.send_signal(signal.SIGTERM)
        p.wait(20)

    def client(self, *args: str, code: int = 0) -> str:
        p = subprocess.run([os.path.join(BIN, "albatross-client"), *args, "--tmpdir", self.tmpdir],
                           capture_output=True, text=True, timeout=60, env=self.env)
        assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
        return p.stdout

    def stream(self, *args: str) -> "Stream":
        return Stream([os.path.join(BIN, "albatross-client"), *args, "--tmpdir", self.tmpdir], self.env)

    def teardown(self) -> None:
        for program in ("albatross-stats", "albatrossd", "albatross-console"):
            if program in self.procs:
                self.stop(program)


class Stream:
    """A streaming client (console, stats) whose output lines are read with a timeout."""

    def __init__(self, argv, env):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, pattern: str, timeout: float = 15) -> list[str]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(line)
            if re.search(pattern, line):
                return seen
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got {seen[-10:]}")

    def close(self):
        self.p.kill()
        self.p.wait()


def _accepts(path: str) -> bool:
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def wait(cond, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    h.start("albatross-console", sock="console.sock")
    h.start("albatrossd", "--dbdir", h.dbdir, sock="vmmd.sock")
    h.start("albatross-stats", "--interval", "0.3", sock="stat.sock")
    image = tmp_path / "hello.hvt"
    image.write_bytes(build_image(devices=()))
    h.image = str(image)
    yield h
    h.teardown()


def test_console_live_and_history(host):
    live = host.stream("console", "hello")  # subscribed before the unikernel exists
    try:
        assert "created unikernel" in host.client("create", "hello", host.image, "--arg=print", "--arg=hi\athere",
                                                  "--arg=forever")
        lines = live.until(r"tick 2")
        assert any(re.fullmatch(r"console \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-00:00: hi\\007there", x) for x in lines)
    finally:
        live.close()
    history = host.stream("console", "hello", "--count", "3")
    try:
        got = history.until(r"tick")
        assert got[0] == "host [unikernel: :hello]: success: subscribed"
        assert all(x.startswith("console ") for x in got[1:])
    finally:
        history.close()
    assert "destroyed unikernel" in host.client("destroy", "hello")
    wait(lambda: "[unikernel: :hello]" in host.client("inactive-consoles"), "an inactive console")


def test_stats_arrive_and_survive_a_stats_restart(host):
    host.client("create", "busy", host.image, "--arg=spam", "--arg=200000", "--arg=forever")
    stats = host.stream("stats", "-n", "busy")
    try:
        lines = stats.until(r"^stats: utime")
        m = re.search(r"utime (\d+)\.(\d+) stime (\d+)\.(\d+) maxrss (\d+)", lines[-1])
        assert m and int(m.group(5)) > 0
        assert (int(m.group(1)) + int(m.group(2)) + int(m.group(3)) + int(m.group(4))) > 0
    finally:
        stats.close()
    # albatross-stats restarts: it re-handshakes with albatrossd, learns the running unikernel again
    host.stop("albatross-stats")
    host.start("albatross-stats", "--interval", "0.3", sock="stat.sock")
    stats = host.stream("stats", "-n", "busy")
    try:
        stats.until(r"^stats: utime")
    finally:
        stats.close()


def test_albatrossd_restart_keeps_unikernels_and_console_history(host):
    host.client("create", "keep", host.image, "--arg=print", "--arg=before-restart", "--arg=forever")
    live = host.stream("console", "keep")
    try:
        live.until(r"before-restart")  # the tender really ran before we stop albatrossd
    finally:
        live.close()
    host.stop("albatrossd")  # SIGTERM: tenders stopped, state file kept
    host.start("albatrossd", "--dbdir", host.dbdir, sock="vmmd.sock")
    wait(lambda: "[unikernel: :keep]" in host.client("info"), "the unikernel to come back")
    history = host.stream("console", "keep", "--count", "1000")
    try:
        lines = history.until(r"before-restart")
        lines += history.until(r"before-restart")  # printed once per start, both in the ring
        assert sum("before-restart" in x for x in lines) == 2
    finally:
        history.close()


def test_albatrossd_reconnects_to_a_restarted_console(host):
    host.client("create", "first", host.image, "--arg=forever")
    live = host.stream("console", "first")
    try:
        live.until("tick 1")
    finally:
        live.close()
    host.stop("albatross-console")
    time.sleep(0.5)  # "first" keeps printing with nobody reading: it must neither die nor be lost
    host.start("albatross-console", sock="console.sock")
    # albatrossd notices, reconnects and registers the running unikernel again
    live = host.stream("console", "first")
    try:
        live.until(r"tick \d+")
    finally:
        live.close()
    out = host.client("create", "second", host.image, "--arg=print", "--arg=after-console-restart",
                      "--arg=forever")
    assert "created unikernel" in out
    history = host.stream("console", "second", "--count", "100")
    try:
        history.until("after-console-restart")
    finally:
        history.close()
    info = host.client("info")
    assert "[unikernel: :first]" in info and "[unikernel: :second]" in info


def test_bad_input_on_every_socket_keeps_daemons_serving(host):
    import socket
    for sock in ("vmmd.sock", "console.sock", "stat.sock"):
        for junk in (b"\x00\x00\x00\x05hello", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x02\x30\x00"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(os.path.join(host.tmpdir, "util", sock))
            s.sendall(junk)
            s.settimeout(5)
            try:
                s.recv(4096)  # a failure reply or a close, never a hang
            finally:
                s.close()
    assert "no unikernels" in host.client("info")
    assert "no consoles" in host.client("inactive-consoles")
    assert "removed" in host.client("stats-remove", "-n", "nothing")
    for p in host.procs.values():
        assert p.poll() is None


@pytest.fixture
def netns():
    import uuid
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun")
    name = "albsys-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "service", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "service", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_interface_counters_grow_with_traffic_on_the_tap(tmp_path, netns):
    host = Host(tmp_path, netns)
    try:
        host.start("albatross-console", sock="console.sock")
        host.start("albatrossd", "--dbdir", host.dbdir, sock="vmmd.sock")
        host.start("albatross-stats", "--interval", "0.3", sock="stat.sock")
        image = tmp_path / "net.hvt"
        image.write_bytes(build_image(devices=[("service", "NET_BASIC")]))
        # the unikernel waits, then sends 50 frames through its tap onto the bridge
        out = host.client("create", "web", str(image), "--net", "service",
                          "--arg=sleep", "--arg=3", "--arg=netsend", "--arg=50", "--arg=forever")
        assert "created unikernel" in out
        stats = host.stream("stats", "-n", "web")

        def vm_to_host() -> int:
            line = stats.until(r"^bridge service ")[-1]
            return int(re.search(r" input_packets (\d+)", line).group(1))
        try:
            assert vm_to_host() < 50  # sampled before the unikernel sent anything
            deadline = time.monotonic() + 15
            after = vm_to_host()
            while after < 50 and time.monotonic() < deadline:
                after = vm_to_host()
            assert after >= 50
        finally:
            stats.close()
    finally:
        host.teardown()
