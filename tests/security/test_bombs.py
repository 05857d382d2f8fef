"""Bounded decompression (issue 12, row 3): a small "zlib bomb" (locally or
through a tenant's certificate, which ends up as the same command) can
neither exhaust albatrossd's memory, nor fill /run, nor stall other commands."""

from __future__ import annotations

import os
import threading
import time
import zlib

import pytest

from albatross.core import UnikernelConfig
from albatross.wire import END_CHUNK, encode_wire, frame
from albatross.wire import messages as m
from albatross.wire.messages import Header, Wire
from albatross.policy.names import Name

from sec_helpers import needs_privileges, image, bare, system, peak_rss_mb  # noqa: F401 - fixtures

pytestmark = needs_privileges
from solo5_fixtures import build_image

MiB = 1 << 20


def bomb(size: int, prefix: bytes = b"") -> bytes:
    """``prefix`` followed by zeros up to ``size`` bytes, deflated, without holding them in memory."""
    c = zlib.compressobj(9)
    out = [c.compress(prefix)]
    zeros = b"\0" * MiB
    left = size - len(prefix)
    while left > 0:
        out.append(c.compress(zeros[:min(left, MiB)]))
        left -= MiB
    out.append(c.flush())
    return b"".join(out)


@pytest.fixture(scope="module")
def gib_bomb():
    return bomb(1 << 30, build_image(devices=()))  # a valid image followed by 1 GiB of zeros


def request(system, name: str, payload, timeout: float = 60) -> Wire:
    with system.wired("albatrossd") as c:
        c.sock.settimeout(timeout)
        c.send(name, payload)
        w = c.recv()
    assert w is not None, "no reply"
    return w


def albatrossd_pid(system) -> int:
    return system.procs["albatrossd"].pid


def test_compressed_image_bomb_is_refused_without_inflating_it(system, gib_bomb):
    assert len(gib_bomb) < 2 * MiB
    before = peak_rss_mb(albatrossd_pid(system))
    w = request(system, "bomb", m.UnikernelCreate(UnikernelConfig(image=gib_bomb, compressed=True, memory=32)))
    assert isinstance(w.payload, m.Failure), w
    assert "exceeds the maximum of 512 MiB" in w.payload.message
    assert not os.path.exists(os.path.join(system.tmpdir, Name.of_string("bomb").image_file()))
    grown = peak_rss_mb(albatrossd_pid(system)) - before
    assert grown < 200, f"albatrossd's peak RSS grew by {grown:.0f} MiB for a {len(gib_bomb)} byte request"
    assert "[unikernel: :bomb]" not in system.client("info")


def test_max_image_size_flag(bare, image):
    small = bomb(8 * MiB, build_image(devices=()))
    bare.start_console()
    bare.start("albatrossd", "--dbdir", bare.dbdir, "--max-image-size", "4")
    w = request(bare, "big", m.UnikernelCreate(UnikernelConfig(image=small, compressed=True, memory=32)))
    assert isinstance(w.payload, m.Failure) and "exceeds the maximum of 4 MiB" in w.payload.message, w
    assert "created" in bare.client("create", "ok", image, "--arg=forever")


@pytest.mark.parametrize("cmd", ["old-block-add", "old-block-set"])
def test_block_data_bomb_is_capped_at_the_block_size(system, gib_bomb, cmd):
    if cmd == "old-block-set":
        system.client("create-block", "disk", "1")
        payload = m.OldBlockSet(True, gib_bomb)
    else:
        payload = m.OldBlockAdd(1, True, gib_bomb)
    before = peak_rss_mb(albatrossd_pid(system))
    w = request(system, "disk", payload)
    assert isinstance(w.payload, m.Failure) and "exceeds the maximum of 1 MiB" in w.payload.message, w
    grown = peak_rss_mb(albatrossd_pid(system)) - before
    assert grown < 100, f"albatrossd's peak RSS grew by {grown:.0f} MiB"


def test_streamed_block_set_bomb_is_capped_and_does_not_stall_others(system, gib_bomb):
    system.client("create-block", "disk", "1")
    before = peak_rss_mb(albatrossd_pid(system))
    c = system.wired("albatrossd")
    c.sock.settimeout(60)
    c.send("disk", m.BlockSet(True))
    # one chunk that inflates to 1 GiB, then the end of data
    c.send_raw(frame(gib_bomb) + END_CHUNK)
    done = threading.Event()
    replies: list = []

    def other() -> None:
        replies.append(system.client("policy"))
        done.set()
    threading.Thread(target=other, daemon=True).start()
    w = c.recv()
    c.close()
    assert isinstance(w.payload, m.Failure) and w.payload.message == "stream exceeds size", w
    assert done.wait(60) and replies
    grown = peak_rss_mb(albatrossd_pid(system)) - before
    assert grown < 100, f"albatrossd's peak RSS grew by {grown:.0f} MiB"
    assert os.path.getsize(os.path.join(system.dbdir, "block", Name.of_string("disk").to_string())) == MiB


CLIENT_GET = """
import resource, sys, zlib
from albatross.client.common import ReplyHandler
from albatross.policy.names import Name
from albatross.wire import messages as m
from albatross.wire.messages import Header, Wire
blob = open(sys.argv[1], "rb").read()
name = Name.of_string("u")
code = ReplyHandler(m.UnikernelGet(9), name).handle(Wire(Header(name), m.UnikernelImage(True, blob)))
print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_client_get_refuses_an_image_bomb(tmp_path, gib_bomb):
    """The client side: a server answering ``get`` with a bomb does not make it allocate it."""
    import subprocess
    import sys
    blob = tmp_path / "bomb"
    blob.write_bytes(gib_bomb)
    res = subprocess.run([sys.executable, "-c", CLIENT_GET, str(blob)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, TMPDIR=str(tmp_path)))
    out = res.stdout + res.stderr
    assert "exceeds the maximum of 512 MiB" in out, out
    maxrss = int(out.split("maxrss ")[1].split()[0])
    assert maxrss < 300, f"the client grew to {maxrss} MiB"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(":u.") or p.startswith("u.")]
