"""albatross-client update (behaviour.md §7.2, CLI-09/CLI-10): a local HTTP
server plays builder-web, a fake vmmd on a Unix socket answers the info
request and records the force-create."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import shutil
import socket
import tempfile
import threading
import time
import zlib

import pytest

from albatross.client import main as client_main
from albatross.client.update import HttpError, job_and_build, parse_http_host
from albatross.core import (
    BlockDevice, BlockInfo, FailBehaviour, NetDevice, NetInfo, UnikernelConfig, UnikernelInfo,
)
from albatross.policy.names import Name
from albatross.wire import messages as m

from fake_daemons import FakeDaemons
from solo5_fixtures import build_image

DEVICES = (("service", "NET_BASIC"), ("uplink", "NET_BASIC"), ("storage", "BLOCK_BASIC"), ("data", "BLOCK_BASIC"))
OLD_IMAGE = build_image(devices=DEVICES, payload=b"old unikernel" * 10)
NEW_IMAGE = build_image(devices=DEVICES, payload=b"new unikernel" * 10)
OLD_HEX = hashlib.sha256(OLD_IMAGE).hexdigest()
MAC1 = bytes.fromhex("02000a0b0c0d")
MAC2 = bytes.fromhex("02000a0b0c0e")
OLD_UUID = "11111111-2222-3333-4444-555555555555"
NEW_UUID = "66666666-7777-8888-9999-000000000000"
NAME = Name.of_string("hello")

INFO = UnikernelInfo(
    typ="solo5", fail_behaviour=FailBehaviour(True, frozenset({3, 4})), startup=42,
    cpuids=frozenset({1, 2}), memory=64,
    block_devices=(BlockInfo("storage", "hello.storage", 4096, 10), BlockInfo("data", "data", 512, 20)),
    bridges=(NetInfo("service", "br0", MAC1), NetInfo("uplink", "uplink", MAC2)),
    argv=("--ipv4=10.0.0.2/24", "-l", "*:debug"), digest=hashlib.sha256(OLD_IMAGE).digest(),
    numcpus=1, linux_boot_partition=None)


def expected_config(image=NEW_IMAGE, compressed=False) -> UnikernelConfig:
    return UnikernelConfig(
        typ="solo5", compressed=compressed, image=image, fail_behaviour=FailBehaviour(True, frozenset({3, 4})),
        startup=42, add_name=True, cpuids=frozenset({1, 2}), memory=64,
        block_devices=(BlockDevice("storage", "hello.storage", 4096), BlockDevice("data", "data", 512)),
        bridges=(NetDevice("service", "br0", MAC1), NetDevice("uplink", "uplink", MAC2)),
        argv=("--ipv4=10.0.0.2/24", "-l", "*:debug"), numcpus=1, linux_boot_partition=None)


def norm(cfg: UnikernelConfig) -> UnikernelConfig:
    """Devices travel as a DER SET OF, whose order is the encoding's: compare them sorted."""
    return dataclasses.replace(cfg, block_devices=tuple(sorted(cfg.block_devices, key=lambda b: b.name)),
                               bridges=tuple(sorted(cfg.bridges, key=lambda b: b.name)))


# ----------------------------------------------------------- builder-web

class Builder:
    """routes: request target -> (status, headers, body); anything else 404."""

    def __init__(self):
        self.requests: list[str] = []
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        builder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                builder.requests.append(self.path)
                status, headers, body = builder.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def standard(self, old=OLD_UUID, new=NEW_UUID, binary=NEW_IMAGE, trailing=""):
        self.routes[f"/hash?sha256={OLD_HEX}"] = (302, {"Location": f"/job/hello/build/{old}{trailing}"}, b"")
        self.routes["/job/hello/build/latest"] = (302, {"Location": f"/job/hello/build/{new}{trailing}"}, b"")
        self.routes[f"/job/hello/build/{new}/main-binary"] = (200, {}, binary)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def builder_server():
    b = Builder()
    yield b
    b.stop()


@pytest.fixture
def builder(builder_server):
    builder_server.requests.clear()
    builder_server.routes.clear()
    builder_server.standard()
    return builder_server


# ------------------------------------------------------------- fake vmmd

class Vmmd(FakeDaemons):
    def __init__(self, tmpdir):
        super().__init__(tmpdir, services=("vmmd",))
        self.info_reply = m.UnikernelInfos(((NAME, INFO),))
        self.create_reply = m.String("created unikernel")

    async def _vmmd(self, conn, w, rec):
        if isinstance(w.payload, m.UnikernelInfoCmd):
            await self._reply(conn, w, self.info_reply)
        elif isinstance(w.payload, m.UnikernelCreate):
            await self._reply(conn, w, self.create_reply)
        else:  # policy add (from albatross-tls-endpoint) and the rest as the stock fake
            return await super()._vmmd(conn, w, rec)
        return False


@pytest.fixture
def tmpdir_():
    d = tempfile.mkdtemp(prefix="upd", dir="/tmp")  # short: Unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def vmmd(tmpdir_):
    v = Vmmd(tmpdir_).start()
    yield v
    v.stop()


def run(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        client_main(["update", *args])
    out, err = capsys.readouterr()
    return e.value.code, out + err


def update(capsys, vmmd, builder, *args, name="hello"):
    return run(capsys, name, "--tmpdir", vmmd.tmpdir, "--http-host", builder.url, *args)


def creates(vmmd):
    return [w for w in vmmd.commands("vmmd") if isinstance(w.payload, m.UnikernelCreate)]


# ---------------------------------------------------------------- success

def test_update_sends_force_create(capsys, vmmd, builder):
    code, out = update(capsys, vmmd, builder)
    assert code == 0, out
    lines = out.splitlines()
    assert lines == [
        f"compare at {builder.url}/compare/{OLD_UUID}/{NEW_UUID}",
        "host [unikernel: :hello]: success: created unikernel",
    ]
    assert builder.requests == [f"/hash?sha256={OLD_HEX}", "/job/hello/build/latest",
                                f"/job/hello/build/{NEW_UUID}/main-binary"]
    cmds = vmmd.commands("vmmd")
    assert [type(w.payload) for w in cmds] == [m.UnikernelInfoCmd, m.UnikernelCreate]
    assert cmds[0].header.name == NAME
    (create,) = creates(vmmd)
    assert create.header.name == NAME
    assert create.payload.force is True
    assert norm(create.payload.config) == norm(expected_config())
    assert create.payload.config.add_name is True


def test_update_compressed_and_trailing_slashes(capsys, vmmd, builder):
    builder.standard(trailing="/")
    code, out = update(capsys, vmmd, builder, "--compression-level", "9")
    assert code == 0, out
    (create,) = creates(vmmd)
    cfg = create.payload.config
    assert cfg.compressed is True and zlib.decompress(cfg.image) == NEW_IMAGE
    assert norm(cfg) == norm(expected_config(image=cfg.image, compressed=True))


def test_http_host_trailing_slash_is_dropped(capsys, vmmd, builder):
    code, out = run(capsys, "hello", "--tmpdir", vmmd.tmpdir, "--http-host", builder.url + "/", "--dryrun")
    assert code == 0, out
    assert out.splitlines() == [f"compare at {builder.url}/compare/{OLD_UUID}/{NEW_UUID}"]


def test_main_binary_redirect_is_followed(capsys, vmmd, builder):
    builder.routes[f"/job/hello/build/{NEW_UUID}/main-binary"] = (302, {"Location": "/f/bin/hello.hvt"}, b"")
    builder.routes["/f/bin/hello.hvt"] = (200, {}, NEW_IMAGE)
    code, out = update(capsys, vmmd, builder)
    assert code == 0, out
    assert builder.requests[-1] == "/f/bin/hello.hvt"
    assert norm(creates(vmmd)[0].payload.config) == norm(expected_config())


def test_already_up_to_date(capsys, vmmd, builder):
    builder.standard(new=OLD_UUID)
    code, out = update(capsys, vmmd, builder)
    assert (code, out) == (0, "already up to date\n")
    assert len(builder.requests) == 2
    assert creates(vmmd) == []


@pytest.mark.parametrize("flag", ["--dryrun", "--dry-run"])
def test_dryrun(capsys, vmmd, builder, flag):
    code, out = update(capsys, vmmd, builder, flag)
    assert (code, out) == (0, f"compare at {builder.url}/compare/{OLD_UUID}/{NEW_UUID}\n")
    assert len(builder.requests) == 2  # no main-binary download
    assert creates(vmmd) == []


# ---------------------------------------------------------- HTTP failures

def test_unknown_hash_404(capsys, vmmd, builder):
    del builder.routes[f"/hash?sha256={OLD_HEX}"]
    code, out = update(capsys, vmmd, builder)
    assert code == 118
    assert out == ("albatross-client: [ERROR] error in HTTP interaction: "
                   "couldn't find the unikernel in the repository\n")
    assert creates(vmmd) == []


@pytest.mark.parametrize("route", ["hash", "latest", "binary"])
def test_http_500(capsys, vmmd, builder, route):
    path = {"hash": f"/hash?sha256={OLD_HEX}", "latest": "/job/hello/build/latest",
            "binary": f"/job/hello/build/{NEW_UUID}/main-binary"}[route]
    builder.routes[path] = (500, {}, b"oops")
    code, out = update(capsys, vmmd, builder)
    assert code == 118
    assert "albatross-client: [WARNING] received HTTP reply: HTTP/1.0 500 Internal Server Error" in out
    assert out.endswith("albatross-client: [ERROR] error in HTTP interaction: unexpected HTTP reply\n")
    assert builder.requests[-1] == path
    assert creates(vmmd) == []


def test_latest_404_and_binary_404(capsys, vmmd, builder):
    del builder.routes["/job/hello/build/latest"]
    code, out = update(capsys, vmmd, builder)
    assert code == 118 and "couldn't find the unikernel in the repository" in out
    builder.standard()
    del builder.routes[f"/job/hello/build/{NEW_UUID}/main-binary"]
    code, out = update(capsys, vmmd, builder)
    assert code == 118 and "unexpected HTTP reply" in out
    assert creates(vmmd) == []


def test_empty_binary(capsys, vmmd, builder):
    builder.standard(binary=b"")
    code, out = update(capsys, vmmd, builder)
    assert code == 118 and "unexpected HTTP reply" in out
    assert creates(vmmd) == []


def test_bad_redirects(capsys, vmmd, builder):
    builder.routes[f"/hash?sha256={OLD_HEX}"] = (302, {"Location": f"{builder.url}/job/hello/build/x"}, b"")
    code, out = update(capsys, vmmd, builder)
    assert code == 118
    assert f"expected '/job/<jobname>/build/<uuid>', got: {builder.url}/job/hello/build/x" in out
    builder.routes[f"/hash?sha256={OLD_HEX}"] = (302, {}, b"")
    code, out = update(capsys, vmmd, builder)
    assert code == 118 and "no Location header received in HTTP reply" in out
    builder.routes[f"/hash?sha256={OLD_HEX}"] = (200, {}, b"found it")
    code, out = update(capsys, vmmd, builder)
    assert code == 118 and "unexpected HTTP reply" in out
    assert creates(vmmd) == []


def test_http_connect_failure(capsys, vmmd):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    code, out = run(capsys, "hello", "--tmpdir", vmmd.tmpdir, "--http-host", f"http://127.0.0.1:{port}")
    assert code == 118 and "error in HTTP interaction" in out
    assert creates(vmmd) == []


# ------------------------------------------------------- albatross failures

@pytest.mark.parametrize("reply", [
    m.UnikernelInfos(()),
    m.UnikernelInfos(((NAME, INFO), (Name.of_string("other"), INFO))),
    m.UnikernelInfos(((NAME, UnikernelInfo(typ="bhyve", digest=INFO.digest)),)),
    m.Failure("not found"),
    m.Empty(),
], ids=["none", "two", "bhyve", "failure", "empty"])
def test_unexpected_info_reply(capsys, vmmd, builder, reply):
    vmmd.info_reply = reply
    code, out = update(capsys, vmmd, builder)
    assert code == 121
    assert out.startswith("albatross-client: [ERROR] unexpected reply: host [unikernel: :hello]: ")
    assert builder.requests == []
    assert creates(vmmd) == []


def test_old_info_variant_accepted(capsys, vmmd, builder):
    info = dataclasses.replace(INFO, cpuids=frozenset({1}))  # the old forms carry a single CPU id
    vmmd.info_reply = m.UnikernelInfos(((NAME, info),), variant="Old_unikernel_info5")
    code, out = update(capsys, vmmd, builder)
    assert code == 0, out
    assert norm(creates(vmmd)[0].payload.config) == norm(dataclasses.replace(expected_config(), cpuids=frozenset({1})))


def test_no_vmmd(capsys, tmpdir_, builder):
    code, out = run(capsys, "hello", "--tmpdir", tmpdir_, "--http-host", builder.url)
    assert code == 121
    assert builder.requests == []


def test_socket_dash(capsys, builder):
    code, out = run(capsys, "hello", "--socket", "-", "--http-host", builder.url)
    assert code == 121 and out.startswith("out:\n")
    assert builder.requests == []


def test_manifest_mismatch(capsys, vmmd, builder):
    builder.standard(binary=build_image(devices=(("service", "NET_BASIC"), ("storage", "BLOCK_BASIC"))))
    code, out = update(capsys, vmmd, builder)
    assert code == 125
    assert "albatross-client: [ERROR] manifest failed: specified block device(s) does not match" in out
    assert creates(vmmd) == []
    builder.standard(binary=b"this is not an ELF image")
    code, out = update(capsys, vmmd, builder)
    assert code == 125 and "manifest failed:" in out
    assert creates(vmmd) == []


def test_force_create_failure(capsys, vmmd, builder):
    vmmd.create_reply = m.Failure("policy violation")
    code, out = update(capsys, vmmd, builder)
    assert code == 117
    assert out.splitlines()[-1] == ("albatross-client: [WARNING] host [unikernel: :hello]: "
                                    "command failed policy violation")


# ------------------------------------------------------------------ CLI

def test_csr_refused(capsys, tmpdir_, builder):
    cwd = os.getcwd()
    os.chdir(tmpdir_)
    try:
        code, out = run(capsys, "hello", "--csr", "--http-host", builder.url)
    finally:
        os.chdir(cwd)
    assert (code, out) == (124, "albatross-client: [ERROR] update with CSR not supported\n")
    assert os.listdir(tmpdir_) == []
    assert builder.requests == []


@pytest.mark.parametrize("host", ["ftp://example.org", "https://example.org/builds", "example.org",
                                  "https:/example.org", "https://", "https://example.org//"])
def test_bad_http_host(capsys, host):
    code, out = run(capsys, "hello", "--http-host", host)
    assert code == 124
    assert "expected http[s]://hostname" in out


def test_parse_http_host():
    assert parse_http_host("https://builds.robur.coop") == "https://builds.robur.coop"
    assert parse_http_host("https://builds.robur.coop/") == "https://builds.robur.coop"
    assert parse_http_host("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_job_and_build():
    assert job_and_build("/job/hello/build/abc") == ("hello", "abc")
    assert job_and_build("/job/hello/build/abc/") == ("hello", "abc")
    for bad in ("job/hello/build/abc", "/job/hello/build/abc/x", "/job/hello/builds/abc", "/job/hello/build",
                "https://h/job/hello/build/abc"):
        with pytest.raises(HttpError):
            job_and_build(bad)


def test_help_lists_update(capsys):
    with pytest.raises(SystemExit) as e:
        client_main(["help", "update"])
    assert e.value.code == 0
    assert "--http-host" in capsys.readouterr().out


# --------------------------------------------------------------- remote

def test_update_remote(capsys, builder):
    """Through albatross-tls-endpoint: info and force-create each on a fresh
    certificate; the image is compressed (level 9 by default remotely)."""
    import subprocess
    import sys

    from albatross.core import Policy
    from albatross.tls import pki

    from fake_daemons import Pki

    d = tempfile.mkdtemp(prefix="updr", dir="/tmp")
    ca = Pki()
    user, user_key = ca.sub_ca("user", Policy(4, frozenset({1, 2}), 256, None, frozenset({"br0", "uplink"})))
    for fname, data in {"cacert.pem": pki.pem_chain([ca.ca]), "server.pem": pki.pem_chain([ca.server]),
                        "server.key": pki.key_pem(ca.server_key), "user.pem": pki.pem_chain([user]),
                        "user.key": pki.key_pem(user_key)}.items():
        pki.write_file(os.path.join(d, fname), data)
    vmmd = Vmmd(d).start()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    endpoint = os.path.join(os.path.dirname(sys.executable), "albatross-tls-endpoint")
    proc = subprocess.Popen([endpoint, *(os.path.join(d, f) for f in ("cacert.pem", "server.pem", "server.key")),
                             "--tmpdir", d, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "endpoint not listening"
                time.sleep(0.05)
        code, out = run(capsys, "hello", "-d", f"127.0.0.1:{port}", "--ca", os.path.join(d, "user.pem"),
                        "--ca-key", os.path.join(d, "user.key"), "--server-ca", os.path.join(d, "cacert.pem"),
                        "--http-host", builder.url)
        assert code == 0, out
        assert out.splitlines() == [f"compare at {builder.url}/compare/{OLD_UUID}/{NEW_UUID}",
                                    "host [unikernel: user:hello]: success: created unikernel"]
        # the endpoint adds the certificate's policy before each command
        cmds = [w for w in vmmd.commands("vmmd") if not isinstance(w.payload, m.PolicyAdd)]
        assert [type(w.payload) for w in cmds] == [m.UnikernelInfoCmd, m.UnikernelCreate]
        assert all(w.header.name == Name.of_string("user:hello") for w in cmds)
        cfg = cmds[1].payload.config
        assert cmds[1].payload.force and cfg.compressed and zlib.decompress(cfg.image) == NEW_IMAGE
        assert norm(cfg) == norm(expected_config(image=cfg.image, compressed=True))
    finally:
        proc.terminate()
        proc.wait(10)
        vmmd.stop()
        shutil.rmtree(d, ignore_errors=True)
