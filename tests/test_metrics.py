"""Own metrics of the daemons (--influx): line protocol over TCP with reconnects."""

import asyncio
import os

import pytest

from albatross.daemons import metrics
from albatross.errors import AlbatrossError


def test_parse_target():
    assert metrics.parse_target("127.0.0.1") == ("127.0.0.1", 8094)
    assert metrics.parse_target("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert metrics.parse_target("[::1]:9000") == ("::1", 9000)
    assert metrics.parse_target("::1") == ("::1", 8094)
    for bad in ("", "host:x", "host:70000"):
        with pytest.raises(AlbatrossError):
            metrics.parse_target(bad)


def test_vm_tag_follows_measurement():
    assert metrics.tag_lines(["memory rss=1i", "connections,kind=unix active=2i"], "albatross") == [
        "memory,vm=albatross rss=1i", "connections,kind=unix,vm=albatross active=2i"]


def test_pushes_and_reconnects():
    async def scenario():
        received: list[bytes] = []
        conns = []

        async def handle(reader, writer):
            conns.append(writer)
            received.append(await reader.readline())

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.create_task(metrics.push_forever(f"127.0.0.1:{port}", "albatross_console",
                                                        lambda: ["unikernels total=3i"], interval=0.05))
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        assert received and received[0].startswith(b"resource_usage,vm=albatross_console utime=")
        # the receiver goes away: the pusher reconnects and writes again
        for w in conns:
            w.close()
        n = len(conns)
        for _ in range(200):
            if len(conns) > n:
                break
            await asyncio.sleep(0.02)
        assert len(conns) > n
        task.cancel()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_albatrossd_pushes_its_metrics(tmp_path):
    import socket
    import time

    from test_albatrossd_e2e import Albatross, needs_root  # noqa: F401 - skips like the e2e tests
    if os.geteuid() != 0:
        pytest.skip("albatrossd end-to-end needs root")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    port = listener.getsockname()[1]
    alb = Albatross(tmp_path)
    try:
        alb.start_stub()
        alb.start("--influx", f"127.0.0.1:{port}")
        conn, _ = listener.accept()
        conn.settimeout(10)
        data = b""
        deadline = time.monotonic() + 10
        while b"albatross-unikernels" not in data and time.monotonic() < deadline:
            data += conn.recv(65536)
        text = data.decode()
        assert "resource_usage,vm=albatross utime=" in text
        assert "albatross-policies,domain=:,vm=albatross unikernels=" in text
        assert "albatross-unikernels,domain=:,vm=albatross running=0i" in text
        conn.close()
    finally:
        alb.teardown()
        listener.close()


def test_bad_influx_target_is_a_cli_error():
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "albatross.daemons.console", "--tmpdir", "/tmp", "--influx", "h:x"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 124 and "invalid port" in p.stderr
