"""End to end on loopback: the real TLS endpoint (in-process, threaded)
against fake daemon sockets, driven by the client's remote mode and by raw
TLS clients (wire.md §6, behaviour.md §6; features TLS-03..TLS-12,
CLI-25..CLI-27)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass

import pytest
from OpenSSL import SSL

from albatross.client import main as client_main
from albatross.client.common import CliError, ReplyHandler, Target
from albatross.client.remote import execute, run_remote
from albatross.core import Policy, UnikernelConfig
from albatross.daemons.tls_endpoint import Endpoint
from albatross.policy.names import Name
from albatross.tls import pki
from albatross.tls.chain import TlsStream, client_context, server_context
from albatross.wire import END, Header, Wire, decode_wire
from albatross.wire import messages as m

from fake_daemons import FakeDaemons, Pki

P_USER = Policy(16, frozenset({0, 1}), 1024, None, frozenset({"service"}))
INFO = m.UnikernelInfoCmd()
ROOT = Name.of_path(())


@dataclass
class World:
    dir: str
    ca: Pki
    user: tuple
    fake: FakeDaemons
    endpoint: Endpoint
    port: int

    @property
    def dest(self) -> str:
        return f"127.0.0.1:{self.port}"

    def target(self, **kw) -> Target:
        args = dict(destination=self.dest, ca=self.path("user.pem"), ca_key=self.path("user.key"),
                    server_ca=self.path("cacert.pem"))
        args.update(kw)
        return Target(**args)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


def start_endpoint(ctx, tmpdir, timeout=1.0):
    ep = Endpoint(ctx, tmpdir, handshake_timeout=timeout)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=ep.serve_forever, args=(listener, stop), daemon=True)
    thread.start()

    def shutdown():
        stop.set()
        thread.join(5)
        listener.close()
    return ep, listener.getsockname()[1], shutdown


@pytest.fixture
def world():
    d = tempfile.mkdtemp(prefix="tls", dir="/tmp")  # short: unix socket paths are limited
    ca = Pki()
    user = ca.sub_ca("user", P_USER)
    pki.write_file(os.path.join(d, "cacert.pem"), pki.pem_chain([ca.ca]))
    pki.write_file(os.path.join(d, "user.pem"), pki.pem_chain([user[0]]))
    pki.write_file(os.path.join(d, "user.key"), pki.key_pem(user[1]))
    fake = FakeDaemons(d).start()
    ep, port, shutdown = start_endpoint(server_context(ca.ca, [ca.server], ca.server_key), d)
    yield World(d, ca, user, fake, ep, port)
    shutdown()
    fake.stop()
    shutil.rmtree(d, ignore_errors=True)


def remote(world: World, name: Name, cmd: m.Cmd, upload=None, **kw) -> int:
    return run_remote(world.target(**kw), name, cmd, upload, ReplyHandler(cmd, name))


def session(world: World, chain, key, upload=None, port=None, close_write=False) -> tuple[list[Wire], str | None]:
    """A raw TLS client: (every message received, error text or None).
    ``close_write``: send close_notify after the upload."""
    sock = socket.create_connection(("127.0.0.1", port or world.port))
    tls = TlsStream(client_context(chain, key, [world.ca.ca]), sock, server=False)
    out: list[Wire] = []
    try:
        tls.handshake(5)
        for chunk in upload or []:
            tls.write_chunk(chunk)
        if close_write:
            try:
                tls.conn.shutdown()
            except SSL.WantReadError:
                pass
        while True:
            body = tls.read_chunk(timeout=10)
            if body is None or body is END:
                return out, None
            out.append(decode_wire(body))
    except (SSL.Error, OSError) as e:
        return out, str(e) or type(e).__name__
    finally:
        tls.close()


def leaf_session(world, cn, cmd, upload=None, close_write=False, **kw):
    leaf, key = world.ca.leaf(cn, cmd, *world.user, **kw)
    return session(world, [leaf, world.user[0]], key, upload, close_write=close_write)


def good_client_works(world) -> None:
    """A well-behaved client is served (the endpoint is still fine)."""
    replies, err = leaf_session(world, "hello", INFO)
    assert err is None and len(replies) == 1 and isinstance(replies[0].payload, m.UnikernelInfos)


# ------------------------------------------------------------------- happy

def test_info_pushes_chain_policy_then_command_with_global_sequence(world, capsys):
    assert remote(world, ROOT, INFO) == 0
    assert "no unikernels" in capsys.readouterr().out
    user = Name.of_path(("user",))
    assert world.fake.commands("vmmd") == [
        Wire(Header(user, 0), m.PolicyAdd(P_USER)),
        Wire(Header(user, 1), INFO),
    ]
    assert remote(world, Name((), "hello"), m.UnikernelDestroy()) == 117  # failure reply
    assert world.fake.commands("vmmd")[2:] == [
        Wire(Header(user, 2), m.PolicyAdd(P_USER)),
        Wire(Header(Name(("user",), "hello"), 3), m.UnikernelDestroy()),
    ]
    assert "destroy: not found" in capsys.readouterr().out


def test_final_reply_header_is_version_sequence_0_and_derived_name(world):
    replies, err = leaf_session(world, "Hello", INFO)
    assert err is None
    (w,) = replies
    assert w.header == Header(Name(("user",), "hello"), 0, 5)


def test_create_with_image_embedded_in_a_large_certificate(world):
    image = os.urandom(2 * 1024 * 1024)  # far above OpenSSL's default 100 KiB certificate limit
    cmd = m.UnikernelCreate(UnikernelConfig(image=image, cpuids=frozenset({1}), memory=64))
    assert remote(world, Name((), "hello"), cmd) == 0
    created = world.fake.commands("vmmd")[-1]
    assert created.header.name.to_string() == "user:hello"
    assert created.payload == cmd


def test_create_with_image_above_16_mib_is_streamed(world):
    image = os.urandom(17 * 1024 * 1024)
    cmd = m.UnikernelCreate(UnikernelConfig(image=image, cpuids=frozenset({0}), memory=64))
    assert remote(world, Name((), "big"), cmd) == 0
    assert world.fake.commands("vmmd")[-1].payload == cmd


def test_streamed_image_from_raw_client_and_eof_aborts(world):
    image = zlib.compress(os.urandom(10000) + b"unikernel" * 10000, 9)
    cmd = m.UnikernelCreate(UnikernelConfig(compressed=True))
    chunks = [image[i:i + 1000] for i in range(0, len(image), 1000)] + [b""]
    replies, err = leaf_session(world, "hello", cmd, upload=chunks)
    assert err is None and replies[-1].payload == m.String("created unikernel")
    assert world.fake.commands("vmmd")[-1].payload == m.UnikernelCreate(
        UnikernelConfig(compressed=True, image=image))
    before = len(world.fake.commands())
    replies, err = leaf_session(world, "hello", cmd, upload=chunks[:3], close_write=True)  # EOF, no end marker
    assert replies == []
    time.sleep(0.2)
    assert len(world.fake.commands()) == before


def test_block_set_streams_chunks(world, tmp_path):
    data = os.urandom(300_000)
    pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    assert remote(world, Name((), "disk"), m.BlockSet(False), upload=iter(pieces)) == 0
    rec = [r for r in world.fake.received if isinstance(r.wire.payload, m.BlockSet)][-1]
    assert rec.wire.header.name.to_string() == "user:disk"
    assert b"".join(rec.chunks) == data


def test_block_dump_forwards_with_rewritten_version_then_no_data(world, capsys):
    replies, err = leaf_session(world, "disk", m.BlockDump(0))
    assert err is None
    name = Name(("user",), "disk")
    assert [w.payload for w in replies] == [m.BlockDeviceImage(False), m.BlockData(b"abc"), m.BlockData(b"def"),
                                            m.BlockData(None)]
    assert replies[0].header == Header(name, 1, 5)  # the daemon's header (its echo of our request)
    assert replies[-1].header == Header(name, 0, 5)
    assert remote(world, Name((), "disk"), m.BlockDump(0)) == 0
    out = capsys.readouterr().out
    path = out.split("dumped to ")[1].strip()
    assert open(path, "rb").read() == b"abcdef"
    os.unlink(path)


def test_console_subscribe_streams_until_daemon_closes(world, capsys):
    cmd = m.ConsoleSubscribe(count=20)
    replies, err = leaf_session(world, "hello", cmd)
    assert err is None
    assert [type(w.payload) for w in replies] == [m.Empty, m.ConsoleData, m.ConsoleData, m.Failure]
    assert replies[-1].payload == m.Failure("exception while reading from fd")
    assert replies[-1].header == Header(Name(("user",), "hello"), 0, 5)
    assert world.fake.commands("console")[-1] == Wire(Header(Name(("user",), "hello"), 0), cmd)
    assert world.fake.commands("vmmd") == []  # no policy push for console commands
    assert remote(world, Name((), "hello"), cmd) == 117  # like upstream: the final failure
    out = capsys.readouterr().out
    assert "hello" in out and "world" in out


def test_console_client_going_away_releases_the_daemon_connection(world, caplog):
    caplog.set_level(logging.DEBUG, logger="albatross.tls_endpoint")
    world.fake.hold_console.set()
    try:
        leaf, key = world.ca.leaf("hello", m.ConsoleSubscribe(count=1), *world.user)
        sock = socket.create_connection(("127.0.0.1", world.port))
        tls = TlsStream(client_context([leaf, world.user[0]], key, [world.ca.ca]), sock, server=False)
        tls.handshake(5)
        assert tls.read_chunk(timeout=5) not in (None, END)
        tls.close()
        good_client_works(world)
        # a console client leaving is its normal end: a debug line, no error (issue 17)
        deadline = time.monotonic() + 10
        while world.endpoint.connections():  # the console session has ended
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert "error while handle()" not in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        world.fake.hold_console.clear()


def test_stats_and_list_inactive_and_policy_info(world, capsys):
    assert remote(world, ROOT, m.ConsoleListInactive()) == 0
    assert world.fake.commands("console")[-1].header.name.to_string() == "user:"
    assert remote(world, Name((), "x"), m.StatsSubscribe()) == 117  # stats stream ends -> final failure
    assert world.fake.commands("stats")[-1] == Wire(Header(Name(("user",), "x"), 1), m.StatsSubscribe())
    # policy info: the CN is the path, which becomes a label below the chain's path
    assert remote(world, Name.of_path(("sub",)), m.PolicyInfoCmd()) == 0
    assert world.fake.commands("vmmd")[-1].header.name.to_string() == "user:sub"
    # on the root path the CN is empty: the endpoint refuses (no reply)
    before = len(world.fake.commands())
    assert remote(world, ROOT, m.PolicyInfoCmd()) == 121
    assert len(world.fake.commands()) == before


def test_unreachable_service(world, capsys):
    os.unlink(world.path("util/stat.sock"))
    assert remote(world, Name((), "x"), m.StatsSubscribe()) == 117
    assert "couldn't reach service" in capsys.readouterr().out


def test_policy_larger_than_parent_is_refused_by_vmmd(world, capsys):
    big, big_key = world.ca.sub_ca("big", Policy(32, frozenset({0}), 64, None, frozenset()),
                                   *world.user, check=False)
    leaf, key = world.ca.leaf("x", INFO, big, big_key)
    replies, err = session(world, [leaf, big, world.user[0]], key)
    assert err is None
    (w,) = replies
    assert isinstance(w.payload, m.Failure)
    assert w.payload.message.startswith("expected success when adding policy, got: ")
    assert "32" in w.payload.message
    assert not any(isinstance(x.payload, m.UnikernelInfoCmd) for x in world.fake.commands())


def test_sub_ca_signed_by_user_pushes_both_policies_deepest_first(world):
    small = Policy(2, frozenset({1}), 128, None, frozenset({"service"}))
    sub, sub_key = world.ca.sub_ca("team", small, *world.user)
    leaf, key = world.ca.leaf("web", INFO, sub, sub_key)
    replies, err = session(world, [leaf, sub, world.user[0]], key)
    assert err is None and isinstance(replies[0].payload, m.UnikernelInfos)
    assert world.fake.commands("vmmd") == [
        Wire(Header(Name.of_path(("user", "team")), 0), m.PolicyAdd(small)),
        Wire(Header(Name.of_path(("user",)), 1), m.PolicyAdd(P_USER)),
        Wire(Header(Name(("user", "team"), "web"), 2), INFO),
    ]


# ------------------------------------------------------------- bad clients

def _no_cert_session(world):
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    sock = socket.create_connection(("127.0.0.1", world.port))
    tls = TlsStream(ctx, sock, server=False)
    try:
        tls.handshake(5)
        return tls.read_chunk(timeout=5)
    except SSL.Error:
        return None
    finally:
        tls.close()


def test_client_without_certificate(world, caplog):
    assert _no_cert_session(world) is None
    good_client_works(world)
    assert "error establishing TLS connection" in caplog.text


def test_wrong_ca_and_expired(world, caplog):
    import datetime as dt
    other = Pki("other")
    o_user = other.sub_ca("user", P_USER)
    leaf, key = other.leaf("hello", INFO, *o_user)
    replies, err = session(world, [leaf, o_user[0]], key)
    assert replies == [] and err is not None
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    replies, err = leaf_session(world, "hello", INFO, now=old, validity=3600)
    assert replies == [] and err is not None
    good_client_works(world)
    assert "expired" in caplog.text
    assert len(world.fake.commands()) == 2  # only the good client's policy + command


def test_rejections_do_not_leak_into_concurrent_handshakes(world, caplog):
    """pyOpenSSL keeps a verify callback's exception on the shared context;
    a rejected client must never fail a good client handshaking at the same time."""
    import datetime as dt
    other = Pki("other")
    o_user = other.sub_ca("user", P_USER)
    foreign = other.leaf("hello", INFO, *o_user)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    expired = world.ca.leaf("hello", INFO, *world.user, now=old, validity=3600)
    good = [world.ca.leaf(f"g{i}", INFO, *world.user) for i in range(4)]
    results: dict[str, list] = {"good": [], "bad": []}

    def run(kind, chain, key):
        for _ in range(6):
            results[kind].append(session(world, chain, key))
    threads = [threading.Thread(target=run, args=("bad", [foreign[0], o_user[0]], foreign[1])),
               threading.Thread(target=run, args=("bad", [expired[0], world.user[0]], expired[1]))]
    threads += [threading.Thread(target=run, args=("good", [c, world.user[0]], k)) for c, k in good]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results["good"]) == 24 and len(results["bad"]) == 12
    assert all(err is None and len(r) == 1 for r, err in results["good"]), \
        [err for _, err in results["good"] if err]
    assert all(r == [] and err is not None for r, err in results["bad"])
    failures = [r.getMessage() for r in caplog.records if "error establishing TLS" in r.getMessage()]
    assert len(failures) == 12
    # every rejection is logged with its own precise reason
    assert all("certificate has expired" in f or "unable to get local issuer" in f for f in failures), failures


@pytest.mark.parametrize("cn,cmd,log", [
    ("hello", None, "leaf certificate does not contain an albatross extension"),
    ("hello", m.PolicyAdd(P_USER), "unexpected command"),
    ("hello", m.ConsoleAdd(5), "unexpected command"),
    ("hello", m.StatsInitial(), "unexpected command"),
    ("a:b", INFO, "invalid label"),
    (None, m.BlockRemove(), "block remove may not have an empty name"),
])
def test_rejected_after_handshake_without_reply(world, caplog, cn, cmd, log):
    caplog.set_level(logging.INFO)
    replies, err = leaf_session(world, cn, cmd)
    assert replies == []
    good_client_works(world)
    assert f"failed to handle TLS connection {log}" in caplog.text
    assert len(world.fake.commands()) == 2


def test_malformed_extension_and_chain_of_ten(world, caplog):
    from cryptography import x509
    junk = x509.UnrecognizedExtension(pki.ALBATROSS_OID, b"\x30\x00")
    leaf, key = world.ca.leaf("x", None, *world.user,
                              extensions=pki.profile_extensions(pki.Profile.LEAF) + [(junk, False)])
    assert session(world, [leaf, world.user[0]], key)[0] == []
    issuer, ikey = world.ca.ca, world.ca.ca_key
    certs = []
    for i in range(9):
        issuer, ikey = world.ca.sub_ca(f"l{i}", P_USER, issuer, ikey)
        certs.insert(0, issuer)
    leaf, key = world.ca.leaf("x", INFO, issuer, ikey)
    assert session(world, [leaf] + certs, key)[0] == []
    good_client_works(world)
    assert "certificate chain too long" in caplog.text
    assert "couldn't parse albatross extension" in caplog.text


def _still_open(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.fixture
def slow_world(world):
    """``world`` with an endpoint whose handshake deadline is 3 s."""
    ep, port, shutdown = start_endpoint(server_context(world.ca.ca, [world.ca.server], world.ca.server_key),
                                        world.dir, timeout=3.0)
    yield World(world.dir, world.ca, world.user, world.fake, ep, port)
    shutdown()


def test_garbage_half_open_and_slow_clients_do_not_stop_others(slow_world, caplog):
    world = slow_world
    garbage = socket.create_connection(("127.0.0.1", world.port))
    garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(500))
    idle = [socket.create_connection(("127.0.0.1", world.port)) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", world.port))
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    stop = threading.Event()

    def drip():
        for b in hello:
            if stop.is_set():
                return
            try:
                slow.send(bytes([b]))
            except OSError:
                return
            time.sleep(0.2)
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    for _ in range(3):
        good_client_works(world)
    # served while every half-open connection is still held by the endpoint
    for s in idle + [slow]:
        assert _still_open(s)
    # the endpoint gives up on the half-open ones after its handshake timeout (3 s here)
    for s in idle + [slow, garbage]:
        s.settimeout(5)
        try:
            while s.recv(100):  # an alert may come before the close
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail("connection not closed by the endpoint")
        s.close()
    stop.set()
    assert "timeout" in caplog.text
    good_client_works(world)


def test_ten_concurrent_clients(world):
    results = []

    def one(i):
        results.append(leaf_session(world, f"u{i}", INFO))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 10 and all(err is None and len(r) == 1 for r, err in results)
    seqs = sorted(w.header.sequence for w in world.fake.commands("vmmd"))
    assert seqs == list(range(20))  # process-global counter, no duplicates


# ------------------------------------------------------------ client side

def test_client_exit_codes(world, capsys):
    other = Pki("other")
    pki.write_file(world.path("other.pem"), pki.pem_chain([other.ca]))
    # local chain validation against --server-ca fails: 116, nothing sent
    assert remote(world, ROOT, INFO, server_ca=world.path("other.pem")) == 116
    assert "TLS validation error of provided certificate chain" in capsys.readouterr().out
    # '-' prints the chain: 121
    assert remote(world, ROOT, INFO, destination="-") == 121
    out = capsys.readouterr().out
    assert out.startswith("intermediate:\n-----BEGIN CERTIFICATE-----") and "\nleaf:\n-----BEGIN" in out
    # connect failure: 122
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert remote(world, ROOT, INFO, destination=f"127.0.0.1:{port}") == 122
    # key does not match --ca: 124
    pki.write_file(world.path("wrong.key"), pki.key_pem(pki.generate_key()))
    assert remote(world, ROOT, INFO, ca_key=world.path("wrong.key")) == 124
    assert "Public key of certificate doesn't match private key" in capsys.readouterr().out
    # static policy check against --ca: 124
    assert remote(world, Name((), "x"), m.UnikernelCreate(UnikernelConfig(memory=4096))) == 124
    # a name with a path
    with pytest.raises(CliError, match="non-empty path"):
        remote(world, Name(("a",), "x"), INFO)
    assert world.fake.commands() == []


def test_remote_and_local_authentication_failures(world, capsys):
    other = Pki("other")
    # server certificate not trusted by --server-ca: 120
    _, port, shutdown = start_endpoint(server_context(world.ca.ca, [other.server], other.server_key), world.dir)
    try:
        assert remote(world, ROOT, INFO, destination=f"127.0.0.1:{port}") == 120
        assert "remote authentication failure" in capsys.readouterr().out
    finally:
        shutdown()
    # our chain validates against --server-ca locally, but the endpoint trusts another CA: 119
    pki.write_file(world.path("both.pem"), pki.pem_chain([world.ca.ca, other.ca]))
    _, port, shutdown = start_endpoint(server_context(other.ca, [world.ca.server], world.ca.server_key), world.dir)
    try:
        assert remote(world, ROOT, INFO, destination=f"127.0.0.1:{port}", server_ca=world.path("both.pem")) == 119
        assert "local authentication failure" in capsys.readouterr().out
    finally:
        shutdown()
    assert world.fake.commands() == []


def test_certificate_subcommand_runs_a_signed_leaf(world, monkeypatch, capsys):
    monkeypatch.chdir(world.dir)
    key, _ = pki.key_for("hello", "ed25519")
    cmd = m.UnikernelCreate(UnikernelConfig(image=b"image", cpuids=frozenset({1})))
    pki.write_file("hello.req", pki.make_csr("hello", key, cmd).public_bytes(pki.serialization.Encoding.PEM))
    with pytest.raises(SystemExit) as e:
        client_main(["sign", "user.pem", "db", "user.key", "hello.req"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        client_main(["certificate", "hello.pem", "hello.key", "--destination", world.dest])
    assert e.value.code == 0
    assert "created unikernel" in capsys.readouterr().out
    assert world.fake.commands("vmmd")[-1] == Wire(Header(Name(("user",), "hello"), 1), cmd)
    with pytest.raises(SystemExit) as e:
        client_main(["certificate", "hello.pem", "hello.key"])
    assert e.value.code == 124
    with pytest.raises(SystemExit) as e:
        client_main(["certificate", "hello.pem", "user.key", "--destination", world.dest])
    assert e.value.code == 124


def test_execute_presents_the_full_chain(world):
    sub, sub_key = world.ca.sub_ca("team", Policy(2, frozenset({1}), 128, None, frozenset()), *world.user)
    leaf, key = world.ca.leaf("web", INFO, sub, sub_key)
    handler = ReplyHandler(INFO, Name((), "web"))
    assert execute(world.dest, [leaf, sub, world.user[0]], key, world.path("cacert.pem"), handler) == 0
    assert world.fake.commands("vmmd")[-1].header.name.to_string() == "user:team:web"


# ------------------------------------------- same-named issuers (issue 13)

def _no_key_ids(cn, issuer, issuer_key, profile, cmd=None):
    key = pki.generate_key()
    exts = pki.profile_extensions(profile) + ([(pki.albatross_extension(cmd), False)] if cmd else [])
    return pki.issue(pki.cn_name(cn), key.public_key(), issuer.subject, issuer_key, exts, 3600, key_ids=False), key


@pytest.mark.parametrize("order", ["old first", "new first"])
def test_client_trusts_either_of_two_server_cas_of_the_same_name(world, capsys, order):
    """--server-ca with a renewed CA beside the old one, both named 'ca'
    (before: exit 116 'certificate signature failure' in one order)."""
    old = Pki("ca")
    pair = [old.ca, world.ca.ca] if order == "old first" else [world.ca.ca, old.ca]
    pki.write_file(world.path("both.pem"), pki.pem_chain(pair))
    assert remote(world, ROOT, INFO, server_ca=world.path("both.pem")) == 0
    assert "no unikernels" in capsys.readouterr().out
    # a server whose certificate the old CA's name but not its key vouches for is still refused
    forged = Pki("ca")
    _, port, shutdown = start_endpoint(server_context(world.ca.ca, [forged.server], forged.server_key), world.dir)
    try:
        assert remote(world, ROOT, INFO, server_ca=world.path("both.pem"), destination=f"127.0.0.1:{port}") == 120
    finally:
        shutdown()


@pytest.mark.parametrize("order", ["signer first", "signer second"])
def test_endpoint_tries_every_sent_sub_ca_of_the_same_name(world, order):
    """A client chain with two sub-CAs named 'user' (old and renewed): the
    endpoint follows the one that signed the leaf, and pushes its policy."""
    small = Policy(2, frozenset({1}), 128, None, frozenset())
    a, _ = _no_key_ids("user", world.ca.ca, world.ca.ca_key, pki.Profile.CA, m.PolicyAdd(P_USER))
    b, b_key = _no_key_ids("user", world.ca.ca, world.ca.ca_key, pki.Profile.CA, m.PolicyAdd(small))
    leaf, key = _no_key_ids("web", b, b_key, pki.Profile.LEAF, INFO)
    replies, err = session(world, [leaf, b, a] if order == "signer first" else [leaf, a, b], key)
    assert err is None and isinstance(replies[0].payload, m.UnikernelInfos)
    assert world.fake.commands("vmmd") == [
        Wire(Header(Name.of_path(("user",)), 0), m.PolicyAdd(small)),
        Wire(Header(Name(("user",), "web"), 1), INFO),
    ]
def test_endpoint_refuses_a_leaf_no_sent_sub_ca_of_its_name_signed(world, caplog):
    """Every path was tried and none holds: refused, nothing run (the verdict
    comes after the handshake here, so the client sees the connection close
    instead of an alert)."""
    a, _ = _no_key_ids("user", world.ca.ca, world.ca.ca_key, pki.Profile.CA, m.PolicyAdd(P_USER))
    b, _ = _no_key_ids("user", world.ca.ca, world.ca.ca_key, pki.Profile.CA, m.PolicyAdd(P_USER))
    stray, stray_key = _no_key_ids("web", b, pki.generate_key(), pki.Profile.LEAF, INFO)
    replies, _ = session(world, [stray, a, b], stray_key)
    assert replies == []
    assert "certificate signature failure" in caplog.text
    assert world.fake.commands() == []
    good_client_works(world)
