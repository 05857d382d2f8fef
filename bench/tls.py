"""TLS benchmark on loopback: albatross-tls-endpoint (a separate process)
in front of the fake daemons of the tests.

Prints:
* median latency of a remote ``info`` (ephemeral leaf, local chain check,
  TLS 1.3 handshake with client chain, policy push, reply) against a bare
  TLS 1.3 handshake with the same certificates plus one round trip;
* remote commands per second with 10 concurrent clients;
* image upload MB/s (image embedded in the certificate, and streamed after
  the handshake) against raw TLS throughput.

Usage: .venv/bin/python bench/tls.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from fake_daemons import FakeDaemons, Pki  # noqa: E402

from albatross.client import common  # noqa: E402
from albatross.client.common import ReplyHandler, Target  # noqa: E402
from albatross.client.remote import run_remote  # noqa: E402
from albatross.core import Policy, UnikernelConfig  # noqa: E402
from albatross.policy.names import Name  # noqa: E402
from albatross.tls import pki  # noqa: E402
from albatross.tls.chain import TlsStream, client_context, server_context  # noqa: E402
from albatross.wire import messages as m  # noqa: E402

INFO = m.UnikernelInfoCmd()
ROOT = Name.of_path(())


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Bare:
    """A bare TLS 1.3 server with the endpoint's context: echo one chunk, or sink everything."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            sock, _ = self.listener.accept()
            threading.Thread(target=self.serve, args=(sock,), daemon=True).start()

    def serve(self, sock):
        tls = TlsStream(self.ctx, sock, server=True)
        try:
            tls.handshake(10)
            while True:
                chunk = tls.read_chunk(max_size=1 << 30)
                if chunk is None:
                    break
                if not isinstance(chunk, bytes) or len(chunk) <= 16:
                    tls.write_chunk(b"done" if not isinstance(chunk, bytes) else chunk)
        except Exception:  # noqa: BLE001 - benchmark peer
            pass
        finally:
            tls.close()


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    common.set_level(0)  # no client output
    d = tempfile.mkdtemp(prefix="tlsb", dir="/tmp")
    ca = Pki()
    user, user_key = ca.sub_ca("user", Policy(1000, frozenset({0, 1}), 1 << 20, None, frozenset()))
    for name, data in {"cacert.pem": pki.pem_chain([ca.ca]), "server.pem": pki.pem_chain([ca.server]),
                       "server.key": pki.key_pem(ca.server_key), "user.pem": pki.pem_chain([user]),
                       "user.key": pki.key_pem(user_key)}.items():
        pki.write_file(os.path.join(d, name), data)
    fake = FakeDaemons(d).start()
    port = free_port()
    ep = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "albatross-tls-endpoint"),
                           *(os.path.join(d, f) for f in ("cacert.pem", "server.pem", "server.key")),
                           "--ip", "127.0.0.1", "--port", str(port), "--tmpdir", d, "-q"])
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        target = Target(destination=f"127.0.0.1:{port}", ca=os.path.join(d, "user.pem"),
                        ca_key=os.path.join(d, "user.key"), server_ca=os.path.join(d, "cacert.pem"))

        def remote(cmd=INFO, name=ROOT, tgt=target) -> None:
            code = run_remote(tgt, name, cmd, None, ReplyHandler(cmd, name))
            assert code == 0, code

        bare = Bare(server_context(ca.ca, [ca.server], ca.server_key))
        leaf, leaf_key = ca.leaf(".", INFO, user, user_key)
        bare_ctx = client_context([leaf, user], leaf_key, [ca.ca])

        def bare_round_trip() -> None:
            tls = TlsStream(bare_ctx, socket.create_connection(("127.0.0.1", bare.port)), server=False)
            tls.handshake(10)
            tls.write_chunk(b"ping")
            assert tls.read_chunk(timeout=10) == b"ping"
            tls.close()

        n = 50 if quick else 200
        remote()
        bare_round_trip()
        r = statistics.median(timed(remote, n))
        b = statistics.median(timed(bare_round_trip, n))
        print(f"remote info median latency      {r * 1000:8.2f} ms")
        print(f"bare TLS 1.3 handshake + 1 RTT  {b * 1000:8.2f} ms")
        print(f"ratio                           {r / b:8.2f}x")

        duration = 2.0 if quick else 5.0
        count = [0]
        lock = threading.Lock()
        stop = time.monotonic() + duration

        def worker():
            while time.monotonic() < stop:
                remote()
                with lock:
                    count[0] += 1
        threads = [threading.Thread(target=worker) for _ in range(10)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"10 concurrent clients           {count[0] / (time.monotonic() - t0):8.1f} commands/s")

        size = 8 << 20
        image = os.urandom(size)
        create = m.UnikernelCreate(UnikernelConfig(image=image))
        up = timed(lambda: remote(create, Name((), "img")), 3 if quick else 5)
        print(f"image upload, in certificate    {size / statistics.median(up) / 1e6:8.1f} MB/s (8 MiB)")
        big = 20 << 20
        create = m.UnikernelCreate(UnikernelConfig(image=os.urandom(big)))
        up = timed(lambda: remote(create, Name((), "big")), 2 if quick else 3)
        print(f"image upload, streamed          {big / statistics.median(up) / 1e6:8.1f} MB/s (20 MiB)")

        payload = os.urandom(1 << 20)
        total = (32 if quick else 128) << 20

        def raw_throughput() -> None:
            tls = TlsStream(bare_ctx, socket.create_connection(("127.0.0.1", bare.port)), server=False)
            tls.handshake(10)
            for _ in range(total // len(payload)):
                tls.write_chunk(payload)
            tls.write_chunk(b"")
            assert tls.read_chunk(timeout=60) == b"done"
            tls.close()
        raw = statistics.median(timed(raw_throughput, 3))
        print(f"raw TLS throughput              {total / raw / 1e6:8.1f} MB/s")
    finally:
        ep.terminate()
        ep.wait(10)
        fake.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
