"""Tenant isolation through the TLS endpoint, against the real daemons.

Two tenants, alice and bob, each hold an intermediate CA signed by the
operator's CA.  Bob runs a unikernel and owns a block device.  Alice tries
every command a leaf certificate may carry, on every way she has of
naming bob's things (a leaf CN "bob:hello", her own sub-CA called "bob",
her own root, plain "hello"), and goes beyond her policy.  Every attempt
fails or only ever sees alice's own domain, and bob's unikernel, block
device, console history and policy are exactly as before (wire.md §6,
certificates.md §3, behaviour.md §2.6-2.7)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time

import pytest
from OpenSSL import SSL

from albatross.core import BlockDevice, Policy, UnikernelArguments, UnikernelConfig
from albatross.daemons.tls_endpoint import Endpoint
from albatross.policy.names import Name
from albatross.tls.chain import TlsStream, TlsTimeout, client_context, server_context
from albatross.wire import END, decode_wire
from albatross.wire import messages as m

from fake_daemons import Pki
from solo5_fixtures import build_image
from system_fixtures import System, missing_privileges

P_TENANT = Policy(3, frozenset({0}), 256, 16, frozenset())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    why = missing_privileges()
    if why is not None:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("iso")
    s = System(base)
    ca = Pki()
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    try:
        s.start_all()
        ep = Endpoint(server_context(ca.ca, [ca.server], ca.server_key), s.tmpdir, handshake_timeout=5)
        t = threading.Thread(target=ep.serve_forever, args=(listener, stop), daemon=True)
        t.start()
        w = World(s, ca, listener.getsockname()[1], build_image(devices=[("disk", "BLOCK_BASIC")]))
        w.plain_image = build_image(devices=[])
        w.alice = ca.sub_ca("alice", P_TENANT)
        w.bob = ca.sub_ca("bob", P_TENANT)
        yield w
    finally:
        stop.set()
        listener.close()
        s.teardown()


class World:
    def __init__(self, system: System, ca: Pki, port: int, image: bytes):
        self.system, self.ca, self.port, self.image = system, ca, port, image
        self.plain_image = b""
        self.alice = self.bob = None

    def session(self, chain_ca: list, cn, cmd, upload=(), listen: float = 0.0):
        """Replies to ``cmd`` sent with a fresh leaf ``cn`` below ``chain_ca``
        ([(cert, key) deepest first]); reads until the endpoint closes, or,
        with ``listen``, for that many seconds (streams never end by themselves)."""
        issuer, ikey = chain_ca[0]
        leaf, key = self.ca.leaf(cn, cmd, issuer, ikey)
        chain = [leaf] + [c for c, _ in chain_ca]
        sock = socket.create_connection(("127.0.0.1", self.port))
        tls = TlsStream(client_context(chain, key, [self.ca.ca]), sock, server=False)
        out = []
        until = time.monotonic() + listen
        try:
            tls.handshake(10)
            for chunk in upload:
                tls.write_chunk(chunk)
            while True:
                try:
                    body = tls.read_chunk(timeout=max(until - time.monotonic(), 0.001) if listen else 30)
                except TlsTimeout:
                    if listen:
                        return out
                    raise
                if body is None or body is END:
                    return out
                out.append(decode_wire(body))
        except (SSL.Error, OSError):
            return out
        finally:
            tls.close()

    def local(self, *args: str) -> str:
        return self.system.client(*args, code=None)


def bob_snapshot(w: World) -> dict:
    """Everything of bob's, seen through the local sockets and the host."""
    s = w.system
    (tender,) = [p for p in s.tenders() if any(os.path.basename(a).startswith("bob:hello") for a in p.cmdline())]
    with open(os.path.join(s.dbdir, "block", "bob:disk"), "rb") as fh:
        disk = hashlib.sha256(fh.read()).hexdigest()
    return {"pid": tender.pid, "info": s.client("info", "--name", "bob:"), "block": s.client("block", "--name", "bob:"),
            "policy": s.client("policy", "-p", "bob"), "disk": disk}


BOB_DISK = os.urandom(1 << 20)


def setup_bob(w: World) -> None:
    bob = [w.bob]
    r = w.session(bob, "disk", m.BlockAdd(1))
    assert [x.payload for x in r] == [m.String("added block device")], r
    r = w.session(bob, "disk", m.BlockSet(False), upload=[BOB_DISK, b""])
    assert [x.payload for x in r] == [m.String("set block device")], r
    cfg = UnikernelConfig(image=w.image, memory=64, block_devices=(BlockDevice("disk", "disk", None),),
                          argv=("print", "bob-secret", "forever"))
    r = w.session(bob, "hello", m.UnikernelCreate(cfg))
    assert len(r) == 1 and isinstance(r[0].payload, m.String) and "created" in r[0].payload.string, r
    hist = w.session(bob, "hello", m.ConsoleSubscribe(count=10), listen=1.0)
    assert any(isinstance(x.payload, m.ConsoleData) and x.payload.line == b"bob-secret" for x in hist), hist


def alice_attempts(w: World) -> list[tuple[str, list, object, m.Cmd, tuple]]:
    """(label, chain, leaf CN, command, upload) for every command on every naming route."""
    alice = [w.alice]
    # alice's own sub-CA named like her neighbour: its domain is alice:bob, not bob
    sub = w.ca.sub_ca("bob", Policy(1, frozenset({0}), 64, 4, frozenset()), *w.alice)
    sub_chain = [sub, w.alice]
    cfg = UnikernelConfig(image=w.plain_image, memory=64, argv=("print", "alice-was-here", "forever"))
    commands = [
        (m.UnikernelInfoCmd(), ()), (m.UnikernelGet(0), ()), (m.UnikernelDestroy(), ()),
        (m.UnikernelRestart(None), ()), (m.UnikernelRestart(UnikernelArguments(argv=("exit", "0"))), ()),
        (m.UnikernelCreate(cfg, force=True), ()), (m.UnikernelCreate(cfg), ()),
        (m.BlockInfoCmd(), ()), (m.BlockDump(0), ()), (m.BlockSet(False), (b"\0" * 4096, b"")),
        (m.BlockRemove(), ()), (m.BlockAdd(1), ()),
        (m.ConsoleSubscribe(count=100), ()), (m.ConsoleListInactive(), ()),
        (m.StatsSubscribe(), ()), (m.PolicyInfoCmd(), ()),
    ]
    routes = [("leaf CN bob:hello", alice, "bob:hello"), ("leaf CN bob:disk", alice, "bob:disk"),
              ("leaf CN hello", alice, "hello"), ("leaf CN disk", alice, "disk"),
              ("alice's root", alice, None), ("sub-CA bob, leaf hello", sub_chain, "hello"),
              ("sub-CA bob, leaf disk", sub_chain, "disk"), ("sub-CA bob, root", sub_chain, None)]
    return [(f"{route}: {type(cmd).__name__}", chain, cn, cmd, up)
            for route, chain, cn in routes for cmd, up in commands]


def names_in(replies) -> set[str]:
    """Every name a reply exposes: headers and the names inside listings."""
    out = set()
    for w in replies:
        out.add(str(w.header.name))
        p = w.payload
        for attr in ("unikernels", "policies", "blocks", "consoles"):
            for entry in getattr(p, attr, None) or ():
                out.add(str(entry[0]) if isinstance(entry, tuple) else str(getattr(entry, "name", entry)))
    return out


def test_a_tenant_never_reaches_another_tenants_domain(world):
    w = world
    setup_bob(w)
    before = bob_snapshot(w)
    time.sleep(2)
    t0 = time.time()
    seen_bob, succeeded = [], {}
    for label, chain, cn, cmd, up in alice_attempts(w):
        streaming = isinstance(cmd, (m.ConsoleSubscribe, m.StatsSubscribe))
        replies = w.session(chain, cn, cmd, upload=up, listen=1.5 if streaming else 0.0)
        exposed = {n for n in names_in(replies) if n.startswith("bob")}
        data = [x for x in replies if isinstance(x.payload, (m.ConsoleData, m.BlockData))
                and not str(x.header.name).startswith("alice")]
        leaks = [x for x in replies if "bob-secret" in repr(x.payload)
                 or (isinstance(x.payload, m.BlockData) and x.payload.data and BOB_DISK[:64] in x.payload.data)]
        succeeded.setdefault(label, []).extend(x for x in replies if not isinstance(x.payload, m.Failure))
        if exposed or data or leaks:
            seen_bob.append((label, replies))
        # every reply is about alice's domain.  Statistics name the unikernel
        # relative to the subscription's path, as upstream's albatross-stats
        # does: "hello" there is alice's, which its start time tells (bob's
        # tender started before alice's first attempt).
        for x in replies:
            if isinstance(x.payload, m.StatsData):
                assert x.header.name.path == (), (label, x)
                assert x.payload.stats.kinfo_mem.start.seconds >= t0 - 1, (label, x, t0)
            else:
                assert x.header.name.path[:1] == ("alice",) or x.header.name == Name.of_path(("alice",)), (label, x)
    assert seen_bob == []
    assert bob_snapshot(w) == before
    # the attempts were real: alice got her own things where her policy allowed them
    created = [label for label, r in succeeded.items() if label.endswith("UnikernelCreate")
               and any(isinstance(x.payload, m.String) and "created" in x.payload.string for x in r)]
    assert "leaf CN hello: UnikernelCreate" in created, succeeded
    mine = w.system.client("info", "--name", "alice:")
    # names relative to alice: alice:hello, alice:disk and, by her sub-CA "bob", alice:bob:hello;
    # a fourth is beyond her policy of three unikernels
    assert set(re.findall(r"\[unikernel: ([^\]]*)\]", mine)) == {"alice:", ":hello", ":disk", "bob:hello"}, mine
    console = succeeded["leaf CN hello: ConsoleSubscribe"]
    assert any(isinstance(x.payload, m.ConsoleData) and x.payload.line == b"alice-was-here" for x in console)


def test_beyond_the_policy_changes_nothing(world):
    w = world
    alice = [w.alice]
    before = {k: w.system.client(*k) for k in (("info",), ("policy",), ("block",))}
    big = UnikernelConfig(image=w.image, memory=P_TENANT.memory + 1, argv=("forever",))
    attempts = [
        ("memory above the policy", alice, "huge", m.UnikernelCreate(big)),
        ("cpu outside the policy", alice, "cpu1",
         m.UnikernelCreate(UnikernelConfig(image=w.image, memory=32, cpuids=frozenset({1}), argv=("forever",)))),
        ("block above the policy", alice, "bigdisk", m.BlockAdd(P_TENANT.block + 1)),
    ]
    for why, chain, cn, cmd in attempts:
        replies = w.session(chain, cn, cmd)
        assert len(replies) == 1 and isinstance(replies[0].payload, m.Failure), (why, replies)
    # a sub-CA whose policy exceeds alice's is refused by albatrossd, and so is its command
    greedy = w.ca.sub_ca("greedy", Policy(100, frozenset({0}), 100_000, None, frozenset()), *w.alice, check=False)
    replies = w.session([greedy, w.alice], "x", m.UnikernelInfoCmd())
    assert len(replies) == 1 and isinstance(replies[0].payload, m.Failure), replies
    after = {k: w.system.client(*k) for k in before}
    assert after == before
