"""A minimal stand-in for albatross-console (tests and benchmarks only).

Listens on TMPDIR/util/console.sock, answers every ``Console_add`` with
``Success Empty`` (echoing the header) after opening the unikernel's fifo
TMPDIR/fifo/<name>, and drains each fifo into TMPDIR/console/<name>.log so
tests can look at what a tender printed.  A ``Console_subscribe`` with a
count gets the last lines of that file (no live lines).

Run: python tests/console_stub.py TMPDIR   (prints "ready" once listening)
Environment: CONSOLE_STUB_FAIL=1 answers every add with a failure.
"""

from __future__ import annotations

import asyncio
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from albatross.core import Ptime  # noqa: E402
from albatross.daemons.common import Conn  # noqa: E402
from albatross.wire import messages as m  # noqa: E402
from albatross.wire.messages import Wire  # noqa: E402


class Stub:
    def __init__(self, tmpdir: str, fail: bool = False):
        self.tmpdir = tmpdir
        self.fail = fail
        os.makedirs(os.path.join(tmpdir, "console"), exist_ok=True)

    def drain(self, name: str) -> None:
        """Open the fifo non-blocking and copy whatever arrives into the log file."""
        fifo = os.path.join(self.tmpdir, "fifo", name)
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        out = open(os.path.join(self.tmpdir, "console", name + ".log"), "ab", buffering=0)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                out.write(data)
                return
            loop.remove_reader(fd)
            os.close(fd)
            out.close()

        loop.add_reader(fd, readable)

    async def history(self, conn: Conn, w: Wire) -> None:
        """A subscription with ``count``: the last lines of the log file, then nothing."""
        try:
            with open(os.path.join(self.tmpdir, "console", w.header.name.to_string() + ".log"), "rb") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            lines = []
        await conn.write_wire(Wire(w.header, m.String("subscribed")))
        for line in lines[-w.payload.count:] if w.payload.count else []:
            await conn.write_wire(Wire(w.header, m.ConsoleData(Ptime.now(), line)))
        await conn.read_frame()  # until the subscriber goes away

    async def handle(self, reader, writer) -> None:
        conn = Conn(reader, writer)
        try:
            while True:
                try:
                    w = await conn.read_wire()
                except Exception:  # noqa: BLE001 - a stub: drop bad peers
                    return
                if w is None:
                    return
                if isinstance(w.payload, m.ConsoleSubscribe) and w.payload.count is not None:
                    await self.history(conn, w)
                    return
                if not isinstance(w.payload, m.ConsoleAdd):
                    return
                if self.fail:
                    await conn.write_wire(Wire(w.header, m.Failure("console stub refuses")))
                    continue
                try:
                    self.drain(w.header.name.to_string())
                    reply = m.Empty()
                except OSError as e:
                    reply = m.Failure(f"open fifo: {e}")
                await conn.write_wire(Wire(w.header, reply))
        finally:
            conn.close()


async def main(tmpdir: str) -> None:
    stub = Stub(tmpdir, os.environ.get("CONSOLE_STUB_FAIL") == "1")
    path = os.path.join(tmpdir, "util", "console.sock")
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(stub.handle, path=path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1]))
    except KeyboardInterrupt:
        pass
