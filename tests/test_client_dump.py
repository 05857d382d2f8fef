"""inspect-dump and extract-dump on state files, as an operator runs them."""

import glob
import os
import subprocess
import sys
import tempfile
import zlib

from albatross.core import Policy, UnikernelConfig
from albatross.policy.names import Name
from albatross.wire.state import State, encode_state


def client(*args, cwd=None):
    env = dict(os.environ, TMPDIR=cwd or tempfile.gettempdir())
    return subprocess.run([sys.executable, "-m", "albatross.client", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def _state(tmp_path):
    image = b"\x7fELF" + b"unikernel" * 100
    st = State(((Name(("foo",), "hello"), UnikernelConfig(image=zlib.compress(image), compressed=True, memory=64,
                                                          argv=("-l", "*:debug"))),),
               ((Name(), Policy(10, frozenset({0, 1}), 4096, 100, frozenset({"service"}))),))
    (tmp_path / "state").write_bytes(encode_state(st))
    return image


def test_inspect_dump(tmp_path):
    _state(tmp_path)
    out = client("inspect-dump", "--dbdir", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "parsed 1 unikernels:"
    assert lines[1].startswith("[unikernel: foo:hello]: typ solo5 compression true")
    # the configuration is wrapped below 78 columns, as upstream's Format does
    assert all(len(line) < 78 for line in lines[1:-2]) and len(lines) > 4
    assert lines[-2] == "parsed 1 policies:"
    assert lines[-1] == ("[unikernel: :]: policy: 10 unikernels 0,1 CPUids 4096 MB memory 100 MB block, "
                        "bridges: service")
    # --file with a path is used as given
    assert client("inspect-dump", "--file", str(tmp_path / "state")).returncode == 0


def test_inspect_dump_errors(tmp_path):
    out = client("inspect-dump", "--dbdir", str(tmp_path))
    assert out.returncode == 124 and "dump file not found" in out.stdout
    (tmp_path / "state").write_bytes(b"\xa6\x03\x30")
    out = client("inspect-dump", "--dbdir", str(tmp_path))
    assert out.returncode == 124 and "failed to parse" in out.stdout


def test_extract_dump(tmp_path):
    image = _state(tmp_path)
    out = client("extract-dump", "foo:hello", "--dbdir", str(tmp_path), cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dumped image to" in out.stdout and "argv -l *:debug" in out.stdout
    (dumped,) = glob.glob(str(tmp_path / "foo:hello.*"))
    assert open(dumped, "rb").read() == image
    out = client("extract-dump", "nope", "--dbdir", str(tmp_path))
    assert out.returncode == 124 and "unikernel not found" in out.stdout
