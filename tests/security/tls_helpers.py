"""The real albatross-tls-endpoint as a process, against stand-in daemons,
for the flood tests (issue 12 rows 5-7) and bench/flood.py-like clients.

Also a script: ``python tls_helpers.py bigcerts HOST PORT N CERT KEY``
runs N concurrent TLS clients presenting CERT (kept out of the test
process, whose memory would otherwise hold N copies) and prints one JSON
line per client.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

BIN = os.path.dirname(sys.executable)
ENDPOINT = os.path.join(BIN, "albatross-tls-endpoint")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (KiB), Threads and open descriptors of a process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns a true value; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class EndpointProcess:
    """A temporary directory with a CA, a user sub-CA, the stand-in daemons
    and the endpoint listening on 127.0.0.1 (port chosen by the kernel)."""

    def __init__(self, *flags: str, nofile: int | None = None, policy=None):
        from albatross.core import Policy
        from albatross.tls import pki
        from fake_daemons import FakeDaemons, Pki
        self.dir = tempfile.mkdtemp(prefix="tlsf", dir="/tmp")
        self.ca = Pki()
        self.user = self.ca.sub_ca("user", policy or Policy(16, frozenset({0, 1}), 1024, None, frozenset()))
        files = {"cacert.pem": pki.pem_chain([self.ca.ca]), "server.pem": pki.pem_chain([self.ca.server]),
                 "server.key": pki.key_pem(self.ca.server_key), "user.pem": pki.pem_chain([self.user[0]]),
                 "user.key": pki.key_pem(self.user[1])}
        for name, data in files.items():
            pki.write_file(self.path(name), data)
        self.fake = FakeDaemons(self.dir).start()
        cmd = [ENDPOINT, self.path("cacert.pem"), self.path("server.pem"), self.path("server.key"),
               "--tmpdir", self.dir, "--ip", "127.0.0.1", "--port", "0", "-v", *flags]
        if nofile is not None:
            cmd = ["bash", "-c", f'ulimit -n {nofile} && exec "$@"', "bash", *cmd]
        self.log_path = self.path("endpoint.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        line = wait_for(self._listening, 30, "the endpoint's start line")
        self.port = int(line.group(1))

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"endpoint exited with {self.proc.returncode}: {self.log()}")
        return re.search(r"listening on \S+:(\d+)", self.log())

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def status(self) -> dict[str, int]:
        return proc_status(self.proc.pid)

    def info(self) -> int:
        """A legitimate remote ``info`` from 127.0.0.1: the client's exit code."""
        from albatross.client.common import ReplyHandler, Target
        from albatross.client.remote import run_remote
        from albatross.policy.names import Name
        from albatross.wire import messages as m
        target = Target(destination=f"127.0.0.1:{self.port}", ca=self.path("user.pem"),
                        ca_key=self.path("user.key"), server_ca=self.path("cacert.pem"))
        cmd = m.UnikernelInfoCmd()
        return run_remote(target, Name.of_path(()), cmd, None, ReplyHandler(cmd, Name.of_path(())))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        self.fake.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionResetError:  # refused so fast that connect() saw the reset
        pass
    return s


def state(s: socket.socket) -> str:
    """'open', 'reset' or 'closed', without blocking (a reset is reported once, then 'closed')."""
    s.settimeout(0)
    try:
        return "closed" if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" else "open"
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return "reset" if e.errno == errno.ENOTCONN else "closed"


def raise_nofile(n: int) -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def big_certificate(size: int):
    """A client leaf of about ``size`` bytes from a CA the endpoint does not know: (cert, key)."""
    from cryptography import x509

    from albatross.tls import pki
    from fake_daemons import Pki
    other = Pki("other")
    blob = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.49836.42.99"), os.urandom(size))
    return other.leaf("big", None, extensions=pki.profile_extensions(pki.Profile.LEAF) + [(blob, False)])


def run_big_clients(host: str, port: int, n: int, cert_pem: str, key_pem: str, timeout: float = 120) -> list[dict]:
    """N concurrent clients presenting the certificate (socket-attached OpenSSL, no extra copies)."""
    from OpenSSL import SSL, crypto
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, open(cert_pem, "rb").read()))
    ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, open(key_pem, "rb").read()))
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    barrier = threading.Barrier(n)
    results: list[dict] = [{} for _ in range(n)]

    def one(i: int) -> None:
        start = time.monotonic()
        try:
            barrier.wait(timeout)
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setblocking(True)  # pyOpenSSL on a plain blocking socket; the endpoint's timeouts bound it
            conn = SSL.Connection(ctx, sock)
            conn.set_connect_state()
            conn.do_handshake()
            data = conn.recv(1)  # TLS 1.3: the server's verdict on our certificate comes now
            results[i] = {"ok": True, "data": data.hex()}
        except Exception as e:  # noqa: BLE001 - the expected outcome: refused
            results[i] = {"ok": False, "error": str(e) or type(e).__name__}
        results[i]["seconds"] = round(time.monotonic() - start, 3)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return results


def big_clients_in_subprocess(port: int, n: int, cert_pem: str, key_pem: str) -> list[dict]:
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "bigcerts", "127.0.0.1", str(port), str(n),
                        cert_pem, key_pem], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


if __name__ == "__main__" and sys.argv[1:2] == ["bigcerts"]:
    host, port, n, cert, key = sys.argv[2:7]
    for r in run_big_clients(host, int(port), int(n), cert, key):
        print(json.dumps(r))
