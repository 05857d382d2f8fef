"""``albatross-client update``: replace a running Solo5 unikernel by the
latest build of its job in a builder-web repository (behaviour.md §7.2).

The flow: ask albatrossd for the unikernel's info (one connection), look up
the image's SHA-256 digest at ``<host>/hash?sha256=<hex>`` and the job's
latest build at ``<host>/job/<job>/build/latest`` (both answered by
builder-web with a redirect that is read, not followed), and if the build
differs fetch ``main-binary`` of the new build, check its manifest against
the running unikernel's devices and send a force-create with the running
configuration (devices made explicit, ``add_name`` true).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
import zlib

import click

from .. import pretty
from ..core import BlockDevice, NetDevice, UnikernelConfig
from ..errors import AlbatrossError
from ..policy.names import Name
from ..solo5 import elf
from ..wire import messages as m
from ..wire.messages import Wire
from .common import (
    CLI_FAILED, COMMUNICATION_FAILED, HTTP_ERROR, INTERNAL_ERROR, REMOTE_COMMAND_FAILED, SUCCESS,
    Exit, ReplyHandler, Target, app, error, parse_name, run_command, target_options, warn,
)

DEFAULT_HTTP_HOST = "https://builds.robur.coop"
HTTP_TIMEOUT = 60.0
MAX_REDIRECTS = 5


class HttpError(Exception):
    """A failed HTTP interaction (exit 118)."""


# ------------------------------------------------------------------ parsing

def parse_http_host(s: str) -> str:
    """``http[s]://host`` with an optional trailing ``/`` (which is dropped)."""
    parts = s.split("/")
    if len(parts) in (3, 4) and parts[0] in ("http:", "https:") and parts[1] == "" and parts[2] \
            and (len(parts) == 3 or parts[3] == ""):
        return s if len(parts) == 3 else s[:-1]
    raise click.BadParameter("expected http[s]://hostname")


def _host_cb(_ctx, _param, value):
    return parse_http_host(value)


def job_and_build(location: str) -> tuple[str, str]:
    """``/job/<job>/build/<uuid>`` (optionally with a trailing ``/``) -> (job, uuid)."""
    parts = location.split("/")
    if len(parts) in (5, 6) and parts[0] == "" and parts[1] == "job" and parts[3] == "build" \
            and (len(parts) == 5 or parts[5] == ""):
        return parts[2], parts[4]
    raise HttpError(f"expected '/job/<jobname>/build/<uuid>', got: {location}")


# --------------------------------------------------------------------- HTTP

def _request(url: str) -> tuple[http.client.HTTPResponse, bytes]:
    """One GET of ``url`` (no redirects followed): the response and its body."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            u.hostname, u.port, timeout=HTTP_TIMEOUT, context=ssl.create_default_context())
    elif u.scheme == "http":
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=HTTP_TIMEOUT)
    else:
        raise HttpError(f"unsupported URL {url}")
    target = u.path or "/"
    if u.query:
        target += "?" + u.query
    try:
        conn.request("GET", target, headers={"User-Agent": "albatross-client"})
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise HttpError(f"{url}: {e}") from None
    finally:
        conn.close()
    return resp, body


def _describe(resp: http.client.HTTPResponse) -> str:
    return f"HTTP/{resp.version // 10}.{resp.version % 10} {resp.status} {resp.reason}"


def http_get_redirect(url: str) -> str:
    """GET ``url`` without following a redirect; the Location it redirects to."""
    resp, _ = _request(url)
    if 300 <= resp.status < 400:
        loc = resp.getheader("location")
        if loc is None:
            raise HttpError("no Location header received in HTTP reply")
        return loc
    if resp.status == 404:
        raise HttpError("couldn't find the unikernel in the repository")
    warn(f"received HTTP reply: {_describe(resp)}")
    raise HttpError("unexpected HTTP reply")


def http_get_binary(url: str) -> bytes:
    """GET ``url`` following redirects; the body of a 2xx reply, which must not be empty."""
    for _ in range(MAX_REDIRECTS + 1):
        resp, body = _request(url)
        if 300 <= resp.status < 400 and resp.getheader("location"):
            url = urllib.parse.urljoin(url, resp.getheader("location"))
            continue
        if 200 <= resp.status < 300 and body:
            return body
        warn(f"received HTTP reply: {_describe(resp)}")
        raise HttpError("unexpected HTTP reply")
    raise HttpError("too many redirects")


def can_update(host: str, digest: str) -> tuple[str, str, str]:
    """(job, build of the running image, latest build of the job)."""
    job, old = job_and_build(http_get_redirect(f"{host}/hash?sha256={digest}"))
    _, new = job_and_build(http_get_redirect(f"{host}/job/{job}/build/latest"))
    return job, old, new


# ------------------------------------------------------------------ albatross

class _FirstReply(ReplyHandler):
    """Keep the first message received and stop."""

    def __init__(self, cmd: m.Cmd, name: Name):
        super().__init__(cmd, name)
        self.reply: Wire | None = None

    def handle(self, w: Wire) -> int | None:
        self.reply = w
        return SUCCESS

    def eof(self) -> int:
        return COMMUNICATION_FAILED


class _Tracking(ReplyHandler):
    """The usual reply output, remembering whether anything arrived."""

    def __init__(self, cmd: m.Cmd, name: Name):
        super().__init__(cmd, name)
        self.received = False

    def handle(self, w: Wire) -> int | None:
        self.received = True
        return super().handle(w)


def _single_solo5(w: Wire | None):
    if w is None:
        return None
    p = w.payload
    if isinstance(p, m.UnikernelInfos) and len(p.unikernels) == 1 and p.unikernels[0][1].typ == "solo5":
        return p.unikernels[0][1]
    return None


def update(target: Target, name: Name, host: str, dryrun: bool, level: int | None) -> int:
    info_cmd = m.UnikernelInfoCmd()
    first = _FirstReply(info_cmd, name)
    run_command(target, name, info_cmd, handler=first)
    unik = _single_solo5(first.reply)
    if unik is None:
        if first.reply is not None:
            error(f"unexpected reply: {pretty.wire(first.reply, False)}")
        return COMMUNICATION_FAILED
    try:
        job, old, new = can_update(host, unik.digest.hex())
    except HttpError as e:
        error(f"error in HTTP interaction: {e}")
        return HTTP_ERROR
    if old == new:
        app("already up to date")
        return SUCCESS
    app(f"compare at {host}/compare/{old}/{new}")
    if dryrun:
        return SUCCESS
    try:
        image = http_get_binary(f"{host}/job/{job}/build/{new}/main-binary")
    except HttpError as e:
        error(f"error in HTTP interaction: {e}")
        return HTTP_ERROR
    bridges = tuple(NetDevice(b.unikernel_device, b.host_device, b.mac) for b in unik.bridges)
    blocks = tuple(BlockDevice(b.unikernel_device, b.host_device, b.sector_size) for b in unik.block_devices)
    try:
        elf.check_manifest(elf.query_manifest(image), UnikernelConfig(block_devices=blocks, bridges=bridges))
    except AlbatrossError as e:
        error(f"manifest failed: {e.message}")
        return INTERNAL_ERROR
    level = target.compression(level)
    compressed = level > 0
    if compressed:
        image = zlib.compress(image, level)
    config = UnikernelConfig(
        typ=unik.typ, compressed=compressed, image=image, fail_behaviour=unik.fail_behaviour,
        startup=unik.startup, add_name=True, cpuids=unik.cpuids, memory=unik.memory,
        block_devices=blocks, bridges=bridges, argv=unik.argv, numcpus=unik.numcpus,
        linux_boot_partition=unik.linux_boot_partition)
    cmd = m.UnikernelCreate(config, force=True)
    handler = _Tracking(cmd, name)
    code = run_command(target, name, cmd, handler=handler)
    if not handler.received:
        error("received error from albatross")
        return REMOTE_COMMAND_FAILED
    return code


# ------------------------------------------------------------------ command

def register(cli: click.Group) -> None:
    @cli.command("update")
    @click.argument("name", callback=lambda _c, _p, v: parse_name(v))
    @click.option("--http-host", "host", default=DEFAULT_HTTP_HOST, show_default=True, callback=_host_cb,
                  metavar="URL", help="URL of the binary unikernel repository running builder-web.")
    @click.option("--dryrun", "--dry-run", "dryrun", is_flag=True, help="Run dry, do not make any changes.")
    @click.option("--compression-level", "level", type=click.IntRange(0, 9), default=None,
                  help="Compression level 0-9 (default 0 locally, 9 remotely).")
    @target_options
    def update_cmd(name, host, dryrun, level, target):
        """Check and update a unikernel from the binary repository."""
        if target.csr:
            error("update with CSR not supported")
            raise Exit(CLI_FAILED)
        raise Exit(update(target, name, host, dryrun, level))


__all__ = ["register", "update", "parse_http_host", "job_and_build"]
