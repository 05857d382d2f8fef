"""albatross-tls-endpoint as a process: command line, start-up checks,
dual-stack listening, inetd and systemd socket activation (features
TLS-01..TLS-04)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from albatross.client.common import ReplyHandler, Target
from albatross.client.remote import run_remote
from albatross.core import Policy
from albatross.policy.names import Name
from albatross.tls import pki
from albatross.wire import messages as m

from fake_daemons import FakeDaemons, Pki

BIN = os.path.dirname(sys.executable)
ENDPOINT = os.path.join(BIN, "albatross-tls-endpoint")
ACTIVATE = shutil.which("systemd-socket-activate")
INFO = m.UnikernelInfoCmd()


@pytest.fixture
def setup():
    d = tempfile.mkdtemp(prefix="tlsd", dir="/tmp")
    ca = Pki()
    user, user_key = ca.sub_ca("user", Policy(4, frozenset({0}), 256, None, frozenset()))
    files = {"cacert.pem": pki.pem_chain([ca.ca]), "server.pem": pki.pem_chain([ca.server]),
             "server.key": pki.key_pem(ca.server_key), "user.pem": pki.pem_chain([user]),
             "user.key": pki.key_pem(user_key), "two.pem": pki.pem_chain([ca.ca, Pki("x").ca])}
    for name, data in files.items():
        pki.write_file(os.path.join(d, name), data)
    fake = FakeDaemons(d).start()
    yield d, fake
    fake.stop()
    shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def args(d: str, *extra: str) -> list[str]:
    return [ENDPOINT, *(os.path.join(d, f) for f in ("cacert.pem", "server.pem", "server.key")),
            "--tmpdir", d, *extra]


def info(d: str, dest: str) -> int:
    target = Target(destination=dest, ca=os.path.join(d, "user.pem"), ca_key=os.path.join(d, "user.key"),
                    server_ca=os.path.join(d, "cacert.pem"))
    return run_remote(target, Name.of_path(()), INFO, None, ReplyHandler(INFO, Name.of_path(())))


def wait_connectable(host: str, port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("endpoint not listening")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_ca_file_must_hold_exactly_one_certificate(setup):
    d, _ = setup
    p = subprocess.run([ENDPOINT, os.path.join(d, "two.pem"), os.path.join(d, "server.pem"),
                        os.path.join(d, "server.key"), "--tmpdir", d, "--port", str(free_port())],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "expect single ca as cacert" in p.stderr


def test_port_and_systemd_socket_activation_conflict(setup):
    d, _ = setup
    p = subprocess.run(args(d, "--port", "1025", "--systemd-socket-activation"), capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 124
    assert "Options --port and --systemd-socket-activation are not compatible" in p.stderr


def test_inetd_needs_syslog_or_quiet(setup):
    d, _ = setup
    p = subprocess.run(args(d, "--inetd"), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 3


def test_listens_dual_stack_by_default(setup):
    d, fake = setup
    port = free_port()
    proc = subprocess.Popen(args(d, "--port", str(port), "-v"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_connectable("127.0.0.1", port, proc)
        assert info(d, f"127.0.0.1:{port}") == 0
        if socket.has_ipv6:
            assert info(d, f"[::1]:{port}") == 0
            assert len(fake.commands("vmmd")) == 4
        # a garbage client does not stop the daemon
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"\x00" * 100)
        assert info(d, f"127.0.0.1:{port}") == 0
    finally:
        stop(proc)
    out = proc.stdout.read()
    assert "error establishing TLS connection" in out


def test_one_line_at_start_says_where_it_listens(setup):
    """At the default verbosity (issue 17); the default address is upstream's: every address."""
    d, _ = setup
    proc = subprocess.Popen(args(d, "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        if "--max-connections lowered" in line:  # under a low open file limit (ulimit -n 1024)
            line = proc.stdout.readline()
        assert "listening on [::]:" in line and " connections, 64 per address" in line
        port = int(line.split("listening on [::]:")[1].split()[0])
        assert info(d, f"127.0.0.1:{port}") == 0
    finally:
        stop(proc)
    assert proc.stdout.read().strip() == ""  # nothing else for a served client


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate not installed")
def test_inetd_mode_under_systemd_socket_activate(setup):
    d, fake = setup
    port = free_port()
    proc = subprocess.Popen([ACTIVATE, "--accept", "--inetd", "-l", f"127.0.0.1:{port}", *args(d, "--inetd", "-q")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_connectable("127.0.0.1", port, proc)  # this probe is one (failed) inetd connection
        assert info(d, f"127.0.0.1:{port}") == 0
        assert info(d, f"127.0.0.1:{port}") == 0
        assert [type(w.payload) for w in fake.commands("vmmd")] == [m.PolicyAdd, m.UnikernelInfoCmd] * 2
    finally:
        stop(proc)


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate not installed")
def test_systemd_socket_activation(setup):
    d, fake = setup
    port = free_port()
    proc = subprocess.Popen([ACTIVATE, "-l", f"127.0.0.1:{port}", *args(d, "--systemd-socket-activation")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_connectable("127.0.0.1", port, proc)
        assert info(d, f"127.0.0.1:{port}") == 0
        assert info(d, f"127.0.0.1:{port}") == 0
    finally:
        stop(proc)
