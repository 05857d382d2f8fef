"""Own metrics of the daemons (--influx): line protocol over TCP with reconnects."""

import asyncio

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
