"""Stand-ins for albatrossd, albatross-console and albatross-stats: tiny
asyncio servers on TMPDIR/util/{vmmd,console,stat}.sock (in a background
thread) that record what they receive and reply like the real daemons do
for the commands the TLS tests use.

The fake vmmd keeps a policy table and rejects a policy that is not smaller
than the policies on its strict ancestor paths or not larger than those
below it (the policy part of the real vmmd's insertion check), keeps a connection open after Policy_add, reads raw chunks
after Block_set, and streams a three-message dump for Block_dump.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field

from albatross.core import Policy, Ptime
from albatross.daemons.common import Conn
from albatross.errors import PolicyError
from albatross.policy.names import Name
from albatross.policy.policies import is_smaller
from albatross.wire import END, Wire, decode_wire, encode_wire, frame
from albatross.wire import messages as m

SOCKETS = {"vmmd": "vmmd.sock", "console": "console.sock", "stats": "stat.sock"}


@dataclass
class Received:
    service: str
    wire: Wire
    chunks: list[bytes] = field(default_factory=list)


class FakeDaemons:
    """Start with ``start()``, stop with ``stop()``; ``received`` lists every
    message (with raw chunks that followed it) in arrival order."""

    def __init__(self, tmpdir: str, services=("vmmd", "console", "stats")):
        self.tmpdir = tmpdir
        self.services = services
        self.received: list[Received] = []
        self.policies: dict[tuple[str, ...], Policy] = {}
        self.console_lines = [b"hello", b"world"]
        self.hold_console = threading.Event()  # set: console keeps the stream open
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers = []

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "FakeDaemons":
        os.makedirs(os.path.join(self.tmpdir, "util"), exist_ok=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    async def _start(self):
        for service in self.services:
            path = os.path.join(self.tmpdir, "util", SOCKETS[service])
            handler = getattr(self, "_" + service)
            self.servers.append(await asyncio.start_unix_server(
                lambda r, w, h=handler, s=service: self._serve(s, h, Conn(r, w)), path, limit=1 << 26))

    def stop(self) -> None:
        async def close():
            for s in self.servers:
                s.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def commands(self, service: str | None = None) -> list[Wire]:
        with self.lock:
            return [r.wire for r in self.received if service is None or r.service == service]

    # -- serving -----------------------------------------------------------
    async def _serve(self, service, handler, conn: Conn):
        try:
            while True:
                w = await conn.read_wire()
                if w is None:
                    return
                rec = Received(service, w)
                with self.lock:
                    self.received.append(rec)
                keep_open = await handler(conn, w, rec)
                if not keep_open:
                    return
        finally:
            conn.close()

    async def _reply(self, conn: Conn, w: Wire, payload) -> None:
        await conn.write_wire(Wire(w.header, payload))

    async def _vmmd(self, conn: Conn, w: Wire, rec: Received) -> bool:
        cmd = w.payload
        if isinstance(cmd, m.PolicyAdd):
            path = w.header.name.path
            try:
                for other, p in self.policies.items():
                    if 0 < len(other) < len(path) and path[:len(other)] == other:
                        is_smaller(p, cmd.policy)  # ancestors must be larger
                    elif len(other) > len(path) and other[:len(path)] == path:
                        is_smaller(cmd.policy, p)  # descendants must be smaller
            except PolicyError as e:
                await self._reply(conn, w, m.Failure(e.message))
                return False
            self.policies[path] = cmd.policy
            await self._reply(conn, w, m.String("added policy"))
            return True
        if isinstance(cmd, m.BlockSet):
            while True:
                chunk = await conn.read_frame()
                if chunk is None or chunk is END:
                    break
                rec.chunks.append(chunk)
            await self._reply(conn, w, m.String("set block device"))
        elif isinstance(cmd, m.UnikernelCreate):
            await self._reply(conn, w, m.String("created unikernel"))
        elif isinstance(cmd, m.UnikernelInfoCmd):
            await self._reply(conn, w, m.UnikernelInfos(()))
        elif isinstance(cmd, m.PolicyInfoCmd):
            found = tuple((Name.of_path(p), pol) for p, pol in sorted(self.policies.items())
                          if p[:len(w.header.name.path)] == w.header.name.path)
            await self._reply(conn, w, m.Policies(found))
        elif isinstance(cmd, m.BlockDump):
            await self._reply(conn, w, m.BlockDeviceImage(False))
            for part in (b"abc", b"def"):
                await conn.write_wire(Wire(w.header, m.BlockData(part)))
            await conn.write_wire(Wire(w.header, m.BlockData(None)))
        elif isinstance(cmd, m.UnikernelDestroy):
            await self._reply(conn, w, m.Failure("destroy: not found"))
        else:
            await self._reply(conn, w, m.Empty())
        return False

    async def _console(self, conn: Conn, w: Wire, rec: Received) -> bool:
        cmd = w.payload
        if isinstance(cmd, m.ConsoleSubscribe):
            await self._reply(conn, w, m.Empty())
            for line in self.console_lines:
                await conn.write_wire(Wire(w.header, m.ConsoleData(Ptime.of_float(1700000000.0), line)))
            while self.hold_console.is_set():
                await asyncio.sleep(0.05)
        elif isinstance(cmd, m.ConsoleListInactive):
            await self._reply(conn, w, m.Consoles(()))
        else:
            await self._reply(conn, w, m.Failure("unexpected"))
        return False

    async def _stats(self, conn: Conn, w: Wire, rec: Received) -> bool:
        await self._reply(conn, w, m.Empty() if isinstance(w.payload, m.StatsSubscribe)
                          else m.Failure("unexpected"))
        return False


def encode(w: Wire) -> bytes:
    return frame(encode_wire(w))


def decode(body: bytes) -> Wire:
    return decode_wire(body)


# ------------------------------------------------------------------ PKI

class Pki:
    """A root CA, a server certificate and helpers to make chains below it."""

    def __init__(self, name: str = "ca"):
        from albatross.tls import pki
        self.pki = pki
        self.ca_key = pki.generate_key()
        self.ca = pki.self_signed_ca(name, self.ca_key, 10)
        self.server_key = pki.generate_key()
        self.server = pki.server_certificate("server", self.server_key, self.ca, self.ca_key, 1)

    def sub_ca(self, cn, policy: Policy, issuer=None, issuer_key=None, check: bool = True):
        """A sub-CA with ``policy`` signed by issuer (default: the root); (cert, key)."""
        pki = self.pki
        key = pki.generate_key()
        issuer = issuer or self.ca
        issuer_key = issuer_key or self.ca_key
        if check:
            csr = pki.make_csr(cn, key, m.PolicyAdd(policy))
            return pki.sign_csr(issuer, issuer_key, csr).cert, key
        exts = pki.profile_extensions(pki.Profile.CA) + [(pki.albatross_extension(m.PolicyAdd(policy)), False)]
        subject = pki.cn_name(cn) if cn is not None else pki.x509.Name([])
        return pki.issue(subject, key.public_key(), issuer.subject, issuer_key, exts, 86400), key

    def leaf(self, cn, cmd, issuer=None, issuer_key=None, extensions=None, validity=300, subject=None,
             now=None):
        """A client leaf with ``cmd`` (or raw ``extensions``); (cert, key)."""
        pki = self.pki
        key = pki.generate_key()
        if extensions is None:
            extensions = pki.profile_extensions(pki.Profile.LEAF)
            if cmd is not None:
                extensions = extensions + [(pki.albatross_extension(cmd), False)]
        if subject is None:
            subject = pki.cn_name(cn) if cn is not None else pki.x509.Name([])
        cert = pki.issue(subject, key.public_key(), (issuer or self.ca).subject, issuer_key or self.ca_key,
                         extensions, validity, now=now)
        return cert, key
