"""The client's handling of a streamed block dump: file content, zlib,
and the byte counter shown on a terminal."""

import io
import random
import zlib

import pytest

from albatross.client import common
from albatross.client.common import DumpProgress, ReplyHandler
from albatross.policy.names import Name
from albatross.wire import Header, Wire
from albatross.wire import messages as m

NAME = Name(("foo",), "disk")


class Tty(io.StringIO):
    def isatty(self):
        return True


def run_dump(monkeypatch, tmp_path, compressed, chunks, stderr):
    monkeypatch.setattr(common.sys, "stderr", stderr)
    monkeypatch.setattr(common, "dump_filename", lambda name: str(tmp_path / f"{name}.dump"))
    h = ReplyHandler(m.BlockDump(compressed), NAME)
    hdr = Header(NAME, 1)
    assert h.handle(Wire(hdr, m.BlockDeviceImage(compressed))) is None
    for c in chunks:
        assert h.handle(Wire(hdr, m.BlockData(c))) is None
    assert h.handle(Wire(hdr, m.BlockData(None))) == 0
    return (tmp_path / f"{NAME}.dump").read_bytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_dump_on_a_terminal_counts_bytes(monkeypatch, tmp_path, compressed):
    data = random.Random(7).randbytes(3 << 20)  # incompressible: the counter sees ~3 MiB either way
    blob = zlib.compress(data) if compressed else data
    chunks = [blob[i:i + 65536] for i in range(0, len(blob), 65536)]
    err = Tty()
    assert run_dump(monkeypatch, tmp_path, compressed, chunks, err) == data
    shown = err.getvalue()
    lines = shown.split("\r")
    assert lines[0] == "" and lines[1] == "dumping foo:disk: 64.0 KiB received"
    assert lines[2] == "dumping foo:disk: 1.1 MiB received"  # then once per MiB
    assert lines[-1] == f"dumping foo:disk: {DumpProgress.human(len(blob))} received\n"
    assert len(lines) == 5  # 64 KiB, 1.1 MiB, 2.1 MiB, the final count


def test_dump_without_terminal_prints_no_progress(monkeypatch, tmp_path):
    err = io.StringIO()
    assert run_dump(monkeypatch, tmp_path, False, [b"abc", b"def"], err) == b"abcdef"
    assert err.getvalue() == ""


def test_human_sizes():
    assert [DumpProgress.human(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 30)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]
