"""Least privilege by construction (issue 12, rows 1, 2 and 12): nothing root
executes, opens for writing or hands to a tender may be replaced by a less
privileged user (the user albatross, a member of the group albatross)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading

import pytest

from albatross.daemons.common import socket_path
from albatross.policy.names import Name
from albatross.wire import FrameReader, decode_wire, encode_wire, frame
from albatross.wire import messages as m
from albatross.wire.messages import Wire

from sec_helpers import needs_privileges, image, bare, system, nobody  # noqa: F401 - fixtures
from system_fixtures import BIN, TENDERS, wait

pytestmark = needs_privileges

SECRET = b"root-only secret\n"


def secret_file(tmp_path) -> str:
    p = tmp_path / "secret"
    p.write_bytes(SECRET)
    os.chmod(p, 0o600)
    return str(p)


def refuses_to_start(system, why: str) -> str:
    """albatrossd exits at start with a message matching ``why``; returns its log."""
    if not system.alive("albatross-console"):  # a second call must not leak the first console
        system.start_console()
    log_path = system.log_path("albatrossd")
    res = subprocess.run([os.path.join(BIN, "albatrossd"), "--tmpdir", system.tmpdir, "--dbdir", system.dbdir],
                         capture_output=True, text=True, timeout=60, env=system.env)
    with open(log_path, "a") as fh:
        fh.write(res.stdout + res.stderr)
    assert res.returncode != 0, f"albatrossd started although {why}:\n{res.stdout}{res.stderr}"
    assert why in res.stdout + res.stderr, res.stdout + res.stderr
    return res.stdout + res.stderr


# ------------------------------------------------------------------ row 1

def test_tender_planted_in_dbdir_by_another_user_is_not_run(bare, image, tmp_path):
    marker = tmp_path / "planted-tender-ran"
    planted = os.path.join(bare.dbdir, "solo5-hvt.2")  # tried before solo5-hvt on PATH
    with open(planted, "w") as fh:
        fh.write(f"#!/bin/sh\ntouch {marker}\nexec {TENDERS}/solo5-hvt \"$@\"\n")
    os.chmod(planted, 0o755)
    os.chown(planted, *nobody())  # written by the user albatross, say
    bare.start_all()
    out = bare.client("create", "u", image, "--arg=forever")
    assert "created" in out
    assert not marker.exists(), "albatrossd ran a tender owned by another user as root"
    assert "not using tender" in bare.log("albatrossd")
    # the same file, owned by root and not writable by others, is used
    bare.client("destroy", "u")
    os.chown(planted, 0, 0)
    bare.client("create", "v", image, "--arg=forever")
    assert marker.exists()


def test_group_writable_tender_in_dbdir_is_not_run(bare, image, tmp_path):
    marker = tmp_path / "planted-tender-ran"
    planted = os.path.join(bare.dbdir, "solo5-hvt.2")
    with open(planted, "w") as fh:
        fh.write(f"#!/bin/sh\ntouch {marker}\nexec {TENDERS}/solo5-hvt \"$@\"\n")
    os.chmod(planted, 0o775)
    bare.start_all()
    bare.client("create", "u", image, "--arg=forever")
    assert not marker.exists()
    assert "writable by group or others" in bare.log("albatrossd")


def test_block_dir_replaced_by_a_symlink_refuses_start(bare, tmp_path):
    target = tmp_path / "root-only"
    target.mkdir(mode=0o700)
    block = os.path.join(bare.dbdir, "block")
    os.rmdir(block)
    os.symlink(target, block)
    refuses_to_start(bare, "is a symbolic link")
    assert os.listdir(target) == []


@pytest.mark.parametrize("what", ["dbdir", "block"])
def test_database_writable_by_others_refuses_start(bare, what):
    path = bare.dbdir if what == "dbdir" else os.path.join(bare.dbdir, "block")
    os.chown(path, *nobody())
    refuses_to_start(bare, "not owned by root")
    os.chown(path, 0, 0)
    os.chmod(path, 0o770)
    refuses_to_start(bare, "writable by group or others")


def test_symlink_in_block_dir_is_not_a_block_device(bare, tmp_path):
    target = tmp_path / "root-only-disk"
    with open(target, "wb") as fh:
        fh.truncate(1 << 20)
    os.chmod(target, 0o600)
    os.symlink(target, os.path.join(bare.dbdir, "block", "evil"))
    with open(os.path.join(bare.dbdir, "block", "fine"), "wb") as fh:
        fh.truncate(1 << 20)
    bare.start_all()
    out = bare.client("block")
    assert "fine" in out and "evil" not in out, out
    assert "is a symbolic link, ignored" in bare.log("albatrossd")


@pytest.mark.parametrize("cmd", [m.BlockDump(0), m.OldBlockDump(0)])
def test_block_file_swapped_for_a_symlink_is_not_read(system, tmp_path, cmd):
    system.client("create-block", "disk", "1")
    secret = secret_file(tmp_path)
    path = os.path.join(system.dbdir, "block", Name.of_string("disk").to_string())
    os.unlink(path)
    os.symlink(secret, path)
    with system.wired("albatrossd") as c:
        c.send("disk", cmd)
        w = c.recv()
    assert isinstance(w.payload, m.Failure) and "symbolic link" in w.payload.message, w


# ------------------------------------------------------------------ row 2

def test_group_writable_fifo_dir_refuses_start(bare):
    fifo = os.path.join(bare.tmpdir, "fifo")
    os.chmod(fifo, 0o2770)
    refuses_to_start(bare, "writable by group or others")


class SwappingConsole:
    """A console that, like a group member racing albatrossd, swaps the fifo for a
    symlink to ``target`` between albatrossd creating it and the tender opening it."""

    def __init__(self, tmpdir: str, target: str):
        self.tmpdir = tmpdir
        self.target = target
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(socket_path(tmpdir, "console"))
        self.sock.listen(4)
        self.fds: list[int] = []
        self.swapped = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(conn,), daemon=True).start()

    def conn(self, c: socket.socket) -> None:
        reader = FrameReader()
        while True:
            f = reader.next_frame()
            if f is None:
                data = c.recv(65536)
                if not data:
                    return
                reader.feed(data)
                continue
            w = decode_wire(f)
            if isinstance(w.payload, m.ConsoleAdd):
                fifo = os.path.join(self.tmpdir, "fifo", w.header.name.fifo_file())
                self.fds.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
                os.unlink(fifo)
                os.symlink(self.target, fifo)
                self.swapped.set()
            c.sendall(frame(encode_wire(Wire(w.header, m.Empty()))))

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


def test_fifo_swapped_for_a_symlink_is_not_opened(bare, image, tmp_path):
    secret = secret_file(tmp_path)
    console = SwappingConsole(bare.tmpdir, secret)
    try:
        bare.start_albatrossd()
        out = bare.client("create", "u", image, "--arg=print leaked", "--arg=forever", code=None)
        assert console.swapped.is_set()
        assert "console failed" in out, out
        assert open(secret, "rb").read() == SECRET, "root's tender wrote into a root-only file"
        assert "symbolic link" in bare.log("albatrossd")
        assert not bare.tenders()
    finally:
        console.close()


# ------------------------------------------------------------------ row 12

def test_image_ignores_umask_and_planted_symlink(bare, image, tmp_path):
    secret = secret_file(tmp_path)
    img = os.path.join(bare.tmpdir, Name.of_string("u").image_file())
    os.symlink(secret, img)
    old = os.umask(0)
    try:
        bare.start_all()
    finally:
        os.umask(old)
    bare.client("create", "u", image, "--arg=forever")
    assert open(secret, "rb").read() == SECRET, "the image was written through a planted symlink"
    st = os.lstat(img)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    with open(image, "rb") as a, open(img, "rb") as b:
        assert a.read() == b.read()
    wait(lambda: bare.tenders(), "the tender")
