"""End-to-end: the real albatrossd (subprocess) on real Unix sockets, driven by
albatross-client, with the stand-in tender, real taskset and (in a network
namespace of our own) real bridges and taps."""

from __future__ import annotations

import os
import json
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from albatross.core import UnikernelConfig
from albatross.policy.names import Name
from albatross.wire import decode_wire, encode_wire, frame
from albatross.wire import messages as m
from albatross.wire.framing import FrameReader
from albatross.wire.messages import Header, Wire
from albatross.wire.state import decode_state

from solo5_fixtures import build_image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, ".venv", "bin")
TENDER_BIN = os.path.join(HERE, "tender", "bin")
PY = sys.executable

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="albatrossd needs root (taps, taskset on all CPUs)")
needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None,
    reason="needs root, /dev/net/tun and ip netns")

pytestmark = needs_root


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Albatross:
    """A console stub plus albatrossd in temporary directories (optionally in a netns)."""

    def __init__(self, base, netns: str | None = None):
        self.tmpdir = str(base / "run")
        self.dbdir = str(base / "db")
        self.netns = netns
        for d in ("util", "fifo"):
            os.makedirs(os.path.join(self.tmpdir, d), exist_ok=True)
        os.makedirs(os.path.join(self.dbdir, "block"), exist_ok=True)
        self.env = dict(os.environ, PATH=TENDER_BIN + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        self.stub: subprocess.Popen | None = None
        self.daemon: subprocess.Popen | None = None
        self.log = str(base / "albatrossd.log")

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def sock(self) -> str:
        return os.path.join(self.tmpdir, "util", "vmmd.sock")

    def start_stub(self, fail: bool = False) -> None:
        env = dict(self.env, CONSOLE_STUB_FAIL="1" if fail else "0")
        self.stub = subprocess.Popen(self._prefix() + [PY, os.path.join(HERE, "console_stub.py"), self.tmpdir],
                                     stdout=subprocess.PIPE, env=env)
        assert self.stub.stdout.readline().strip() == b"ready"

    def start(self, *extra: str, wait: bool = True, verbose: bool = True) -> subprocess.Popen:
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        logf = open(self.log, "ab")
        self.daemon = subprocess.Popen(
            self._prefix() + [os.path.join(BIN, "albatrossd"), "--tmpdir", self.tmpdir, "--dbdir", self.dbdir,
                              *(["-v"] if verbose else []), *extra],
            stdout=logf, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            wait_for(self._connectable, what="albatrossd socket")
        return self.daemon

    def _connectable(self) -> bool:
        if self.daemon.poll() is not None:
            raise AssertionError(f"albatrossd exited with {self.daemon.returncode}: {self.read_log()}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def read_log(self) -> str:
        with open(self.log, errors="replace") as fh:
            return fh.read()

    def client(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([os.path.join(BIN, "albatross-client"), *args, "--tmpdir", self.tmpdir],
                           capture_output=True, text=True, env=self.env, timeout=30)
        if check is not None:
            assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
        return p

    def request(self, name: str, cmd: m.Cmd) -> list[Wire]:
        return raw_request(self.sock, frame(encode_wire(Wire(Header(Name.of_string(name)), cmd))))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.daemon is None:
            return 0
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
        rc = self.daemon.wait(timeout)
        self.daemon = None
        return rc

    def state(self):
        with open(os.path.join(self.dbdir, "state"), "rb") as fh:
            return decode_state(fh.read())

    def tenders(self) -> list[psutil.Process]:
        """Tender processes started for this instance (their image lives in our tmpdir)."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if any(a.startswith(self.tmpdir + "/") and a.endswith(".img") for a in cmd):
                out.append(p)
        return out

    def teardown(self) -> None:
        try:
            self.stop()
        except Exception:  # noqa: BLE001
            if self.daemon is not None:
                self.daemon.kill()
        for p in self.tenders():
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.stub is not None:
            self.stub.terminate()
            self.stub.wait(5)


def raw_request(path: str, data: bytes, timeout: float = 10) -> list[Wire]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reader = FrameReader()
    out = []
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reader.feed(chunk)
            while (f := reader.next_frame()) is not None:
                if isinstance(f, bytes):
                    out.append(decode_wire(f))
    finally:
        s.close()
    return out


@pytest.fixture
def alb(tmp_path):
    a = Albatross(tmp_path)
    a.start_stub()
    a.start()
    yield a
    a.teardown()


@pytest.fixture
def netns():
    name = "alb-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "br0", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "plain.hvt"
    path.write_bytes(build_image(devices=()))
    return str(path)


@pytest.fixture
def net_image(tmp_path):
    path = tmp_path / "net.hvt"
    path.write_bytes(build_image(devices=(("service", "NET_BASIC"),)))
    return str(path)


def pid_of(alb: Albatross, name: str) -> int:
    procs = wait_for(lambda: [p for p in alb.tenders() if f"{alb.tmpdir}/{name}.img" in p.cmdline()],
                     what=f"tender of {name}")
    return procs[0].pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ create / info / destroy

def test_create_info_destroy(alb, image):
    out = alb.client("create", "hello", image, "--arg", "forever", "--mem", "48", "--cpu", "1")
    assert "host [unikernel: :hello]: success: created unikernel" in out.stdout
    pid = pid_of(alb, ":hello")
    proc = psutil.Process(pid)
    argv = proc.cmdline()
    # taskset exec'ed the tender: same pid, tender script runs python
    assert any(a.endswith("stand_in_tender.py") for a in argv)
    assert argv[-4:] == ["--", f"{alb.tmpdir}/:hello.img", "--name=hello", "forever"]
    assert "--mem=48" in argv
    with open(f"/proc/{pid}/status") as fh:
        allowed = [ln for ln in fh if ln.startswith("Cpus_allowed_list")][0].split()[1]
    assert allowed == "1"
    fifo = os.path.join(alb.tmpdir, "fifo", ":hello")
    st = os.stat(fifo)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert os.path.exists(os.path.join(alb.tmpdir, ":hello.img"))
    assert [str(n) for n, _ in alb.state().unikernels] == [":hello"]
    info = alb.client("info", "--json")
    assert '":hello"' in info.stdout and "forever" not in info.stdout.replace('"forever"', "")
    [w] = alb.request("hello", m.UnikernelInfoCmd())
    [(n, i)] = w.payload.unikernels
    assert i.memory == 48 and i.cpuids == frozenset({1}) and len(i.digest) == 32
    out = alb.client("destroy", "hello")
    assert "destroyed unikernel" in out.stdout
    assert gone(pid)
    assert not os.path.exists(fifo) and not os.path.exists(os.path.join(alb.tmpdir, ":hello.img"))
    assert alb.state().unikernels == ()
    assert alb.client("destroy", "hello").stdout.strip().endswith("destroyed: removed from restarting")
    assert "destroy: not found" in alb.client("destroy", "hello", check=117).stdout


def test_create_duplicate_and_get(alb, image, tmp_path):
    alb.client("create", "x", image, "--arg", "forever")
    out = alb.client("create", "x", image, check=117)
    assert "Unikernel with same name is already running" in out.stdout
    [w] = alb.request("x", m.UnikernelGet(0))
    assert w.payload == m.UnikernelImage(False, open(image, "rb").read())
    [w] = alb.request("x", m.UnikernelGet(5))
    assert w.payload.compressed


def test_exit_cleanup_and_dump(alb, image):
    alb.client("create", "short", image, "--arg", "sleep", "--arg", "0.2")
    wait_for(lambda: alb.state().unikernels == (), what="state without short")
    assert not os.path.exists(os.path.join(alb.tmpdir, "fifo", ":short"))
    assert not os.path.exists(os.path.join(alb.tmpdir, ":short.img"))
    log = open(os.path.join(alb.tmpdir, "console", ":short.log"), "rb").read()
    assert b"solo5_exit(0)" in log


def test_force_create_and_restart_with_arguments(alb, image):
    alb.client("create", "x", image, "--arg", "forever")
    pid1 = pid_of(alb, ":x")
    alb.client("create", "-f", "x", image, "--arg", "forever", "--mem", "40")
    assert gone(pid1)
    pid2 = pid_of(alb, ":x")
    assert "--mem=40" in psutil.Process(pid2).cmdline()
    out = alb.client("restart", "x", "--replace-arguments", "--mem", "64", "--arg", "forever")
    assert "created unikernel" in out.stdout
    assert gone(pid2)
    pid3 = pid_of(alb, ":x")
    assert "--mem=64" in psutil.Process(pid3).cmdline()
    alb.client("restart", "x")
    assert gone(pid3) and pid_of(alb, ":x") != pid3
    assert "destroy: not found" in alb.client("restart", "nope", check=117).stdout


# ------------------------------------------------------------------ restart on failure

def test_restart_on_failure(alb, image):
    alb.client("create", "flaky", image, "--restart-on-fail", "--arg", "sleep", "--arg", "0.3", "--arg", "2")
    pid1 = pid_of(alb, ":flaky")
    state_before = open(os.path.join(alb.dbdir, "state"), "rb").read()
    wait_for(lambda: gone(pid1), what="first exit")
    pid2 = wait_for(lambda: (p := pid_of(alb, ":flaky")) != pid1 and p, what="restart")
    assert pid2 != pid1
    # restarts don't rewrite the state file
    assert open(os.path.join(alb.dbdir, "state"), "rb").read() == state_before
    alb.client("destroy", "flaky")
    wait_for(lambda: not alb.tenders(), what="no tenders")


def test_no_restart_for_code_outside_set(alb, image):
    alb.client("create", "q", image, "--restart-on-fail", "--exit-code", "5", "--arg", "exit", "--arg", "3")
    wait_for(lambda: alb.state().unikernels == (), what="dumped without q")
    time.sleep(0.3)
    assert not alb.tenders()
    alb.client("create", "one", image, "--restart-on-fail", "--arg", "exit", "--arg", "1")
    wait_for(lambda: alb.state().unikernels == (), what="exit 1 never restarts")


def test_exit_64_retry_without_name(alb, image):
    alb.client("create", "picky", image, "--arg", "reject-name", "--arg", "forever")
    pid = wait_for(lambda: [p for p in alb.tenders() if "--name=picky" not in p.cmdline()], what="retry")[0].pid
    assert "--name=picky" not in psutil.Process(pid).cmdline()
    wait_for(lambda: [c.add_name for _, c in alb.state().unikernels] == [False], what="persisted add_name")


# ------------------------------------------------------------------ networking

@needs_netns
def test_taps_on_bridge(tmp_path, netns, net_image):
    alb = Albatross(tmp_path, netns)
    alb.start_stub()
    alb.start()
    try:
        out = alb.client("create", "web", net_image, "--net", "service:br0", "--arg", "forever")
        assert "created unikernel" in out.stdout, out.stdout + alb.read_log()
        pid = pid_of(alb, ":web")
        argv = psutil.Process(pid).cmdline()
        assert "--net:service=vmmtap0" in argv
        mac = Name.of_string("web").mac("service")
        assert "--net-mac:service=" + ":".join(f"{b:02x}" for b in mac) in argv
        link = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "vmmtap0"], capture_output=True, text=True)
        assert "master br0" in link.stdout
        out = alb.client("create", "bad", net_image, "--net", "service:nobridge", check=117)
        assert "bridges nobridge not allowed by policy" in out.stdout  # the root policy lists br0 only
        out = alb.client("create", "p:bad", net_image, "--net", "service:nobridge", check=117)
        assert "interface nobridge does not exist" in out.stdout
        alb.client("destroy", "web")
        link = subprocess.run(["ip", "-n", netns, "link", "show", "vmmtap0"], capture_output=True)
        assert link.returncode != 0
        pol = alb.client("policy", "--json").stdout
        assert "br0" in pol
    finally:
        alb.teardown()


# ------------------------------------------------------------------ state across restarts, shutdown

def test_sigterm_shutdown_and_restore(alb, image):
    alb.client("create", "a", image, "--arg", "forever", "--startup", "60")
    alb.client("create", "b", image, "--arg", "forever", "--startup", "10")
    pids = [pid_of(alb, ":a"), pid_of(alb, ":b")]
    before = open(os.path.join(alb.dbdir, "state"), "rb").read()
    assert alb.stop() == 0
    assert all(gone(p) for p in pids)
    assert os.listdir(os.path.join(alb.tmpdir, "fifo")) == []
    assert open(os.path.join(alb.dbdir, "state"), "rb").read() == before
    alb.start()
    # the log line, not the process: taskset shows the image path before it execs the tender
    wait_for(lambda: alb.read_log().count("started [unikernel: :a]: pid") == 2
             and alb.read_log().count("started [unikernel: :b]: pid") == 2, timeout=60, what="both restored")
    assert len(alb.tenders()) == 2
    assert open(os.path.join(alb.dbdir, "state.started"), "rb").read() == before
    log = alb.read_log()
    assert log.rindex("started [unikernel: :b]") < log.rindex("started [unikernel: :a]")


def test_unstartable_unikernel_dropped_on_restore(alb, image):
    alb.client("create", "a", image, "--arg", "forever")
    alb.client("create", "b", image, "--arg", "forever")
    alb.stop()
    alb.env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # no tender any more
    alb.start()
    time.sleep(0.5)
    assert "tender does not exist" in alb.read_log()
    assert len(alb.state().unikernels) == 2  # nothing started: file untouched
    assert len(decode_state(open(os.path.join(alb.dbdir, "state.started"), "rb").read()).unikernels) == 2


def test_corrupt_state_bails_out(tmp_path):
    alb = Albatross(tmp_path)
    alb.start_stub()
    with open(os.path.join(alb.dbdir, "state"), "wb") as fh:
        fh.write(b"\xa6\x03garbage")
    try:
        p = alb.start(wait=False)
        assert p.wait(20) != 0
        assert "bailing out" in alb.read_log()
    finally:
        alb.teardown()


def test_no_console_aborts(tmp_path):
    alb = Albatross(tmp_path)
    p = alb.start(wait=False)
    assert p.wait(20) != 0
    assert "is albatross-console started?" in alb.read_log()


def test_console_failure_cleans_up(tmp_path, image):
    alb = Albatross(tmp_path)
    alb.start_stub(fail=True)
    alb.start()
    try:
        out = alb.client("create", "x", image, check=117)
        assert "could not create unikernel: console failed" in out.stdout
        assert os.listdir(os.path.join(alb.tmpdir, "fifo")) == []
        assert not os.path.exists(os.path.join(alb.tmpdir, ":x.img"))
        assert not alb.tenders()
    finally:
        alb.teardown()


# ------------------------------------------------------------------ bad input

def test_malformed_frames(alb):
    [w] = raw_request(alb.sock, frame(b"\x30\x03\x02\x01"))
    assert isinstance(w.payload, m.Failure) and "bad request" in w.payload.message
    [w] = raw_request(alb.sock, (1 << 30).to_bytes(4, "big") + b"xx")
    assert isinstance(w.payload, m.Failure)
    assert raw_request(alb.sock, b"\x00\x00") == []
    [w] = alb.request(":", m.ConsoleSubscribe(count=1))
    assert w.payload == m.Failure("unknown command")
    # still serving
    [w] = alb.request(":", m.UnikernelInfoCmd())
    assert w.payload.unikernels == ()


def test_bad_images_and_tenders(alb, tmp_path, image):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf at all")
    [w] = alb.request("j", m.UnikernelCreate(__import__("albatross.core").core.UnikernelConfig(image=b"xx")))
    assert isinstance(w.payload, m.Failure)
    virtio = tmp_path / "virtio"
    virtio.write_bytes(build_image(target="virtio", devices=()))
    assert "unsupported solo5 target virtio" in alb.client("create", "v", str(virtio), check=117).stdout
    abi3 = tmp_path / "abi3"
    abi3.write_bytes(build_image(devices=(), abi_version=3))
    assert "ABI version 3" in alb.client("create", "v", str(abi3), check=117).stdout
    assert "does not match" in alb.client("create", "v", image, "--net", "service", check=124).stdout
    assert os.listdir(os.path.join(alb.tmpdir, "fifo")) == []
    assert not [f for f in os.listdir(alb.tmpdir) if f.endswith(".img")]
    assert not os.path.exists(os.path.join(alb.dbdir, "state"))


def test_policies(alb, image):
    out = alb.client("add-policy", "a", "1", "--mem", "64", "--cpu", "0")
    assert "added policy" in out.stdout and "policy without any network access" in out.stdout
    assert "no modification of policy" in alb.client("add-policy", "a", "1", "--mem", "64").stdout
    assert "Unusable policy" in alb.client("add-policy", "b", "0", check=124).stdout
    out = alb.client("create", "a:x", image, "--mem", "128", check=117)
    assert "maximum allowed memory (64, used 0) would be exceeded (requesting 128)" in out.stdout
    alb.client("create", "a:x", image, "--mem", "32", "--arg", "forever")
    assert "maximum amount of unikernels (1) reached" in alb.client("create", "a:y", image, check=117).stdout
    pol = alb.client("policy", "-p", "a").stdout
    assert "[unikernel: :]" in pol or "policy" in pol
    assert "removed policy" in alb.client("remove-policy", "-p", "a").stdout
    assert "unknown policy" in alb.client("remove-policy", "-p", "a", check=117).stdout
    assert [str(n) for n, _ in alb.state().policies] == [":"]


def test_policy_add_keeps_connection_open(alb):
    from albatross.core import Policy
    p = Policy(2, frozenset({0}), 64, None, frozenset())
    data = b"".join(frame(encode_wire(Wire(Header(Name.of_string(n)), c))) for n, c in [
        ("a:", m.PolicyAdd(p)), ("a:", m.PolicyAdd(p)), ("a:", m.PolicyInfoCmd())])
    ws = raw_request(alb.sock, data)
    assert [w.payload for w in ws][:2] == [m.String("added policy"), m.String("no modification of policy")]
    assert isinstance(ws[2].payload, m.Policies)


# ------------------------------------------------------------------ block devices

def test_block_devices(alb, tmp_path):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(300_000))
    out = alb.client("create-block", "disk", "2", "--data", str(data))
    assert "set block device" in out.stdout
    path = os.path.join(alb.dbdir, "block", ":disk")
    st = os.stat(path)
    assert st.st_size == 2 * 1024 * 1024 and stat.S_IMODE(st.st_mode) == 0o600
    assert open(path, "rb").read(300_000) == data.read_bytes()
    alb.client("set-block", "disk", str(data), "--compression-level", "6")
    assert open(path, "rb").read(300_000) == data.read_bytes()
    out = alb.client("dump-block", "disk", "--compression-level", "3")
    dumped = out.stdout.strip().split("dumped to ")[-1]
    assert open(dumped, "rb").read()[:300_000] == data.read_bytes()
    os.unlink(dumped)
    info = alb.client("block", "--json").stdout
    assert ":disk" in info
    big = tmp_path / "big"
    big.write_bytes(b"x" * (3 * 1024 * 1024))
    assert "stream exceeds size" in alb.client("set-block", "disk", str(big), check=117).stdout
    assert "data exceeds size" in alb.client("create-block", "d2", "1", "--data", str(big), check=124).stdout
    assert "removed block" in alb.client("destroy-block", "disk").stdout
    assert not os.path.exists(path)
    assert "remove block: not found" in alb.client("destroy-block", "disk", check=117).stdout


def test_block_in_use_and_scan(alb, tmp_path):
    img = tmp_path / "blk.hvt"
    img.write_bytes(build_image(devices=(("storage", "BLOCK_BASIC"),)))
    alb.client("create-block", "vol", "1")
    alb.client("create", "u", str(img), "--block", "storage:vol@4096", "--arg", "forever")
    argv = psutil.Process(pid_of(alb, ":u")).cmdline()
    assert f"--block:storage={alb.dbdir}/block/:vol" in argv and "--block-sector-size:storage=4096" in argv
    assert "remove block: is in use" in alb.client("destroy-block", "vol", check=117).stdout
    alb.client("destroy", "u")
    # a daemon restart re-registers the block device found on disk
    with open(os.path.join(alb.dbdir, "block", "bad name"), "wb") as fh:
        fh.truncate(1024 * 1024)
    alb.stop()
    alb.start()
    [w] = alb.request(":", m.BlockInfoCmd())
    assert [(str(n), s) for n, s, _ in w.payload.block_devices] == [(":vol", 1)]


# ------------------------------------------------------------------ crash safety

def test_kill_9_never_corrupts_state(alb, image):
    rng = random.Random(7)
    for round_ in range(6):
        stop_at = time.monotonic() + rng.uniform(0.2, 0.8)
        i = 0
        while time.monotonic() < stop_at:
            alb.client("create", f"k{i % 3}", image, "--arg", "forever", check=None)
            alb.client("destroy", f"k{(i + 1) % 3}", check=None)
            i += 1
        alb.daemon.kill()
        alb.daemon.wait()
        alb.daemon = None
        state_file = os.path.join(alb.dbdir, "state")
        if os.path.exists(state_file):
            decode_state(open(state_file, "rb").read())
        for p in alb.tenders():
            p.kill()
            p.wait(5)
        for f in os.listdir(os.path.join(alb.tmpdir, "fifo")):
            os.unlink(os.path.join(alb.tmpdir, "fifo", f))
        alb.start()
    assert not [f for f in os.listdir(alb.dbdir) if f.endswith(".tmp")]


# ------------------------------------------------------------------ stats channel

def test_stats_channel(alb, image):
    alb.client("create", "s1", image, "--arg", "forever")
    pid = pid_of(alb, ":s1")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(alb.sock)
    reader = FrameReader()

    def recv() -> Wire:
        while (f := reader.next_frame()) is None:
            reader.feed(s.recv(65536))
        return decode_wire(f)

    s.sendall(frame(encode_wire(Wire(Header(Name.of_string(":"), 0), m.StatsInitial()))))
    assert recv().payload == m.Empty()
    add = recv()
    assert add.header.sequence == 1 and add.payload == m.StatsAdd("", pid, ())
    s.sendall(frame(encode_wire(Wire(add.header, m.String("added")))))
    destroy = subprocess.Popen([os.path.join(BIN, "albatross-client"), "destroy", "s1", "--tmpdir", alb.tmpdir],
                               stdout=subprocess.PIPE, text=True)
    rem = recv()  # exit handling waits for our reply before the destroy is answered
    assert rem.header.sequence == 2 and isinstance(rem.payload, m.StatsRemove)
    s.sendall(frame(encode_wire(Wire(rem.header, m.String("removed")))))
    assert "destroyed unikernel" in destroy.communicate(timeout=10)[0]
    s.close()


# ------------------------------------------------------------------ restart back-off (beyond upstream)

def invocations(path) -> list[dict]:
    """The tender runs recorded by the stand-in (STAND_IN_TENDER_LOG), version queries left out."""
    try:
        with open(path) as fh:
            runs = [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
    return [r for r in runs if "--version" not in r["argv"]]


@pytest.fixture
def backoff(tmp_path):
    """Start albatrossd with the given daemon flags, recording tender invocations."""
    made = []

    def start(*flags: str) -> Albatross:
        a = Albatross(tmp_path)
        a.env["STAND_IN_TENDER_LOG"] = str(tmp_path / "tenders.jsonl")
        a.invocations = lambda: invocations(tmp_path / "tenders.jsonl")
        made.append(a)
        a.start_stub()
        a.start(*flags)
        return a
    yield start
    for a in made:
        a.teardown()


def test_crash_loop_backs_off_and_gives_up(backoff, image):
    alb = backoff("--restart-delay", "0.05", "--restart-max-delay", "0.2", "--restart-max", "4")
    alb.client("create", "crash", image, "--restart-on-fail", "--arg", "exit", "--arg", "2")
    # (each run of the stand-in tender, a python program, may take seconds on a loaded machine)
    wait_for(lambda: "]: giving up" in alb.read_log(), timeout=120, what="give-up")
    log = alb.read_log()
    # failures 1-3 were restarted after 0.05, 0.1, 0.2 s; the 4th gave up
    assert [ln.split("restarting in ")[1] for ln in log.splitlines() if "restarting in" in ln] == \
        ["0.05 s", "0.1 s", "0.2 s"]
    assert "(failure 1 of 4 within 600 s)" in log
    assert len(alb.invocations()) == 4
    assert not alb.tenders() and os.listdir(os.path.join(alb.tmpdir, "fifo")) == []
    # marked failed: not listed as running, by name the reason, still deployed
    out = alb.client("info", "-n", "crash", check=117).stdout
    assert "failed: it exited 4 times within 600 s (last with exit 2)" in out
    assert "crash" not in alb.client("info").stdout
    assert [str(n) for n, _ in alb.state().unikernels] == [":crash"]
    [w] = alb.request(":", m.UnikernelInfoCmd())
    assert w.payload.unikernels == ()
    # restart tries again (and it fails again: a fresh back-off), destroy removes it
    assert "created unikernel" in alb.client("restart", "crash").stdout
    wait_for(lambda: len(alb.invocations()) >= 5, timeout=60, what="the retry")
    wait_for(lambda: "destroyed" in alb.client("destroy", "crash", check=None).stdout, what="destroy")
    assert alb.state().unikernels == ()
    wait_for(lambda: "destroy: not found" in alb.client("destroy", "crash", check=None).stdout
             and not alb.tenders(), what="nothing left of crash")


def test_destroy_during_backoff_cancels_restart(backoff, image):
    alb = backoff("--restart-delay", "3", "--restart-max", "0")
    alb.client("create", "crash", image, "--restart-on-fail", "--arg", "exit", "--arg", "2")
    wait_for(lambda: "restarting in 3 s" in alb.read_log(), timeout=60, what="the back-off")
    out = alb.client("destroy", "crash").stdout
    assert "destroyed: removed from restarting" in out
    assert alb.state().unikernels == ()
    wait_for(lambda: "restart of [unikernel: :crash] cancelled" in alb.read_log(), timeout=20,
             what="the void timer")
    assert len(alb.invocations()) == 1 and not alb.tenders()


def test_upstream_immediate_restart_reachable(backoff, image):
    alb = backoff("--restart-delay", "0", "--restart-max", "0")
    alb.client("create", "crash", image, "--restart-on-fail", "--arg", "exit", "--arg", "2")
    wait_for(lambda: len(alb.invocations()) >= 4, timeout=120, what="immediate restarts")
    alb.client("destroy", "crash", check=None)
    wait_for(lambda: "crash" not in alb.client("info").stdout and not alb.tenders(), what="destroyed")
    log = alb.read_log()
    assert "restarting in" not in log and "]: giving up" not in log
    assert "restart on failure: at once, never giving up (as upstream)" in log
    assert "restarting [unikernel: :crash] (exited with exit 2)" in log


# ------------------------------------------------------------------ truthful commands

def test_daemon_refuses_invalid_values(alb, image):
    """Raw wire messages, bypassing the client's checks: the daemon is authoritative."""
    img = open(image, "rb").read()
    cases = [
        ("x", m.UnikernelCreate(UnikernelConfig(image=img, memory=0)), "memory must be at least 1 MB"),
        ("x", m.UnikernelCreate(UnikernelConfig(image=img, memory=-5)), "memory must be at least 1 MB"),
        # where no policy applies, too
        ("a:b:x", m.UnikernelCreate(UnikernelConfig(image=img, memory=(1 << 62) - 1)), "is absurd"),
        ("a:b:x", m.UnikernelCreate(UnikernelConfig(image=img, memory=1 << 23)), "exceeds the host's memory"),
        ("x", m.UnikernelCreate(UnikernelConfig(image=img, cpuids=frozenset({-1}))), "invalid CPUid"),
        ("a:b:x", m.UnikernelCreate(UnikernelConfig(image=img, cpuids=frozenset({4000}))),
         "do not exist on this host"),
        ("a:", m.UnikernelCreate(UnikernelConfig(image=img)), "a: is a path, not a unikernel name"),
        ("data", m.BlockAdd(0), "block device size must be at least 1 MB"),
        ("a:", m.BlockAdd(10), "is a path, not a block device name"),
        ("", m.PolicyRemove(), "refusing to remove the root policy"),
    ]
    for name, cmd, message in cases:
        [w] = alb.request(name or ":", cmd)
        assert isinstance(w.payload, m.Failure) and message in w.payload.message, (name, cmd, w)
    assert not alb.tenders() and "unikernel: :" not in alb.client("info").stdout.replace("[unikernel: :]", "")
    assert "data" not in alb.client("block").stdout
    assert not os.path.exists(os.path.join(alb.dbdir, "block", ":data"))
    [w] = alb.request(":", m.PolicyInfoCmd())
    assert [str(n) for n, _ in w.payload.policies] == [":"]


def test_client_refuses_invalid_values(alb, image):
    cases = [
        (["create", "x", image, "--mem", "0"], "memory must be at least 1 MB"),
        (["create", "x", image, "--mem", "-5"], "memory must be at least 1 MB"),
        (["create", "x", image, "--mem", str(1 << 62)], "is absurd"),
        (["create", "x", image, "--cpu", "-1"], "invalid CPUid"),
        (["create", "a:", image], "a: is a path, not a unikernel name"),
        (["create-block", "data", "0"], "block device size must be at least 1 MB"),
        (["remove-policy"], "refusing to remove the root policy"),
        (["add-policy", "a", "1", "--mem", "-1"], "negative memory"),
    ]
    for args, message in cases:
        p = alb.client(*args, check=124)
        assert message in p.stdout + p.stderr, (args, p)
    # nothing reached the daemon (it logs every refused command)
    log = alb.read_log()
    assert not any(message in log for _, message in cases), log
    assert "no unikernels" in alb.client("info").stdout and "data" not in alb.client("block").stdout


def test_early_death_logged_with_console_tail(tmp_path, image):
    alb = Albatross(tmp_path)
    alb.start_stub()
    alb.start("--early-exit", "60")  # the stand-in tender (python) may take a second to start
    # a destroy (or any requested stop) is no death
    alb.client("create", "calm", image, "--arg", "forever")
    alb.client("destroy", "calm")
    alb.client("create", "early", image, "--arg", "print", "--arg", "no-network-configured",
               "--arg", "exit", "--arg", "3")
    line = wait_for(lambda: [ln for ln in alb.read_log().splitlines() if "died" in ln], what="early-death log")[0]
    assert "[WARNING] [unikernel: :early] died" in line and "with exit 3" in line
    assert "no-network-configured" in line and "solo5_exit(3)" in line
    assert "[unikernel: :calm] died" not in alb.read_log()
    alb.teardown()


@needs_netns
def test_taps_released_during_backoff(tmp_path, netns, net_image):
    alb = Albatross(tmp_path, netns)
    alb.env["STAND_IN_TENDER_LOG"] = str(tmp_path / "tenders.jsonl")
    alb.start_stub()
    alb.start("--restart-delay", "30", "--restart-max", "0")
    try:
        alb.client("create", "web", net_image, "--net", "service:br0", "--restart-on-fail",
                   "--arg", "exit", "--arg", "2")
        wait_for(lambda: "restarting in 30 s" in alb.read_log(), timeout=60, what="the back-off")
        link = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True)
        assert "br0" in link.stdout and "vmmtap" not in link.stdout and not alb.tenders()
        assert os.listdir(os.path.join(alb.tmpdir, "fifo")) == []
        assert [str(n) for n, _ in alb.state().unikernels] == [":web"]
        assert "destroyed: removed from restarting" in alb.client("destroy", "web").stdout
        assert len(invocations(tmp_path / "tenders.jsonl")) == 1
    finally:
        alb.teardown()


def test_lifecycle_logged_at_default_level_with_timestamps(tmp_path, image):
    alb = Albatross(tmp_path)
    alb.start_stub()
    alb.start(verbose=False)
    try:
        alb.client("create", "life", image, "--arg", "sleep", "--arg", "0.1")
        wait_for(lambda: "exited with" in alb.read_log(), what="the exit")
        log = alb.read_log()
        ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z albatrossd: "
        assert re.search(ts + r"\[APP\] started \[unikernel: :life\]: pid \d+, taps none, cpus 0, 32 MB", log), log
        assert re.search(ts + r"\[APP\] \[unikernel: :life\] \(pid \d+\) exited with exit 0", log), log
        assert "[INFO]" not in log
    finally:
        alb.teardown()


def test_no_timestamps_under_journald(tmp_path, image):
    alb = Albatross(tmp_path)
    alb.start_stub()
    open(alb.log, "wb").close()
    st = os.stat(alb.log)
    alb.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    alb.start(verbose=False)
    try:
        alb.client("create", "life", image, "--arg", "forever")
        wait_for(lambda: "started [unikernel: :life]" in alb.read_log(), what="the start")
        started = [ln for ln in alb.read_log().splitlines() if "started [unikernel" in ln]
        assert started[0].startswith("albatrossd: [APP] started"), started
    finally:
        alb.teardown()
