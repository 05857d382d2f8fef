"""Printed output compared for the same reply: a scripted albatrossd socket
answers both clients' ``info`` with the same (random, seeded) unikernel
infos, of every length around the 78-column margin, and ours must print
byte for byte what upstream's prints (its Format boxes and breaks)."""

from __future__ import annotations

import os
import random
import socket
import threading

import pytest

from albatross.core import BlockInfo, FailBehaviour, NetInfo, Ptime, UnikernelInfo
from albatross.policy.names import Name
from albatross.wire import FrameReader, decode_wire, encode_wire, frame
from albatross.wire import messages as m

from interop.interop_harness import Host


class ScriptedVmmd:
    """Answers every request on vmmd.sock with ``self.reply`` (the request's header)."""

    def __init__(self, host: Host):
        self.reply: m.Reply | None = None
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(os.path.join(host.tmpdir, "util", "vmmd.sock"))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                reader = FrameReader()
                while (f := reader.next_frame()) is None:
                    data = conn.recv(1 << 16)
                    if not data:
                        break
                    reader.feed(data)
                if isinstance(f, bytes):
                    req = decode_wire(f)
                    conn.sendall(frame(encode_wire(m.Wire(req.header, self.reply))))

    def close(self) -> None:
        self.sock.close()


def word(rng: random.Random, lo: int = 1, hi: int = 12) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(lo, hi)))


def random_info(rng: random.Random) -> UnikernelInfo:
    return UnikernelInfo(
        fail_behaviour=rng.choice([FailBehaviour(), FailBehaviour(True),
                                   FailBehaviour(True, frozenset(rng.sample(range(1, 200), rng.randint(1, 4))))]),
        startup=rng.choice([None, rng.randint(0, 100)]),
        cpuids=frozenset(rng.sample(range(0, 64), rng.randint(1, 5))),
        memory=rng.choice([16, 32, 512, 4096, 123456]),
        block_devices=tuple(BlockInfo(word(rng), word(rng, 1, 30), rng.choice([512, 4096]), rng.randint(0, 99999))
                            for _ in range(rng.randint(0, 3))),
        bridges=tuple(NetInfo(word(rng), word(rng, 1, 15), bytes(rng.randrange(256) for _ in range(6)))
                      for _ in range(rng.randint(0, 3))),
        argv=tuple(word(rng) for _ in range(rng.randint(0, 4))) or None,
        digest=bytes(rng.randrange(256) for _ in range(32)),
        started=Ptime(rng.randint(1_600_000_000, 1_900_000_000)),
        linux_boot_partition=rng.choice([None, word(rng)]),
    )


@pytest.mark.parametrize("seed", range(6))
def test_info_output_is_byte_identical(make_host, seed):
    rng = random.Random(seed)
    h = make_host()
    vmmd = ScriptedVmmd(h)
    try:
        for _ in range(6):
            infos = tuple((Name.of_string(":".join(word(rng, 1, 20) for _ in range(rng.randint(1, 3)))),
                           random_info(rng)) for _ in range(rng.randint(1, 3)))
            vmmd.reply = m.UnikernelInfos(infos)
            ours = h.run("ours", "info", code=0)
            theirs = h.run("upstream", "info", code=0)
            assert ours.stdout == theirs.stdout, (ours.stdout, theirs.stdout)
    finally:
        vmmd.close()
