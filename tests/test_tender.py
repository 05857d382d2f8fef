"""Tender discovery, --version check, command line, and the stand-in tender."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from albatross.core import BlockDevice, NetDevice, UnikernelConfig
from albatross.policy.names import Name
from albatross.solo5.elf import Solo5Error
from albatross.solo5.tender import (
    check_tender_version,
    find_tender,
    macs_in_use,
    tender_argv,
    tender_candidates,
)
from solo5_fixtures import build_image, write_image

TENDER_BIN = Path(__file__).resolve().parent / "tender" / "bin"
HVT = str(TENDER_BIN / "solo5-hvt")
SPT = str(TENDER_BIN / "solo5-spt")


def stand_in_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["STAND_IN_PYTHON"] = sys.executable
    env.update(extra)
    return env


def make_exe(path: Path, text: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


# -- candidates and discovery -----------------------------------------------------

def test_candidates():
    assert tender_candidates("hvt", 2) == ["solo5-hvt.2", "solo5-hvt"]
    assert tender_candidates("spt", 3) == ["solo5-spt.3", "solo5-spt"]
    with pytest.raises(Solo5Error, match="unsupported solo5 target virtio"):
        tender_candidates("virtio", 2)


@pytest.fixture
def dirs(tmp_path):
    db = tmp_path / "db"
    p1 = tmp_path / "p1"
    p2 = tmp_path / "p2"
    for d in (db, p1, p2):
        d.mkdir()
    return db, p1, p2


def test_discovery_order(dirs):
    db, p1, p2 = dirs
    path_env = f"{p1}:{p2}"
    with pytest.raises(Solo5Error) as e:
        find_tender("hvt", 2, str(db), path_env)
    assert e.value.message == (
        f"tender does not exist, looked for {db}/solo5-hvt.2, solo5-hvt.2, {db}/solo5-hvt, solo5-hvt"
    )
    # each newly created candidate takes precedence over the previous ones
    for path in (p2 / "solo5-hvt", db / "solo5-hvt", p1 / "solo5-hvt.2", db / "solo5-hvt.2"):
        make_exe(path)
        assert find_tender("hvt", 2, str(db), path_env) == str(path)


def test_discovery_first_path_entry_wins(dirs):
    db, p1, p2 = dirs
    make_exe(p2 / "solo5-spt")
    make_exe(p1 / "solo5-spt")
    assert find_tender("spt", 2, str(db), f"{p1}:{p2}") == str(p1 / "solo5-spt")


def test_discovery_skips_non_executables_in_dbdir(dirs):
    db, p1, _ = dirs
    make_exe(db / "solo5-hvt.2", mode=0o644)  # not executable
    (db / "solo5-hvt").mkdir()  # not a regular file
    make_exe(p1 / "solo5-hvt")
    assert find_tender("hvt", 2, str(db), str(p1)) == str(p1 / "solo5-hvt")


def test_discovery_uses_process_path(dirs, monkeypatch):
    db, p1, _ = dirs
    make_exe(p1 / "solo5-hvt")
    monkeypatch.setenv("PATH", str(p1))
    assert find_tender("hvt", 2, str(db)) == str(p1 / "solo5-hvt")


def test_discovery_finds_stand_in(tmp_path):
    assert find_tender("hvt", 2, str(tmp_path), str(TENDER_BIN)) == HVT
    assert find_tender("spt", 2, str(tmp_path), str(TENDER_BIN)) == SPT


# -- --version ---------------------------------------------------------------------

def test_version_ok_against_stand_in(monkeypatch):
    monkeypatch.setenv("STAND_IN_PYTHON", sys.executable)
    check_tender_version(HVT, 2)
    check_tender_version(SPT, 2)


def test_version_wrong_abi_against_stand_in(monkeypatch):
    monkeypatch.setenv("STAND_IN_PYTHON", sys.executable)
    with pytest.raises(Solo5Error) as e:
        check_tender_version(HVT, 3)
    assert e.value.message == (
        "unexpected solo5 tender --version output, expected one line with 'ABI version 3', got "
        "solo5-hvt tender, version v0.12.1\nABI version 2"
    )


def test_version_line_must_be_exact(tmp_path):
    t = make_exe(tmp_path / "t", "#!/bin/sh\necho 'ABI version 2 extra'\necho 'the ABI version 2'\n")
    with pytest.raises(Solo5Error, match="expected one line with 'ABI version 2'"):
        check_tender_version(t, 2)
    t = make_exe(tmp_path / "u", "#!/bin/sh\necho banner\necho 'ABI version 2'\n")
    check_tender_version(t, 2)  # stdout counts too


def test_version_failures(tmp_path):
    t = make_exe(tmp_path / "t", "#!/bin/sh\necho 'ABI version 2'\nexit 3\n")
    with pytest.raises(Solo5Error, match="exited with status 3"):
        check_tender_version(t, 2)
    with pytest.raises(Solo5Error, match="failed to run"):
        check_tender_version(str(tmp_path / "missing"), 2)


# -- command line ------------------------------------------------------------------

ROOT_HELLO = Name((), "hello")
FOO_BAR = Name(("foo",), "bar")
MAC1 = bytes.fromhex("0a0b0c0d0e0f")


def argv_for(name: Name, config: UnikernelConfig, taps: list[str] | None = None, drop_path: bool = True):
    return tender_argv(
        name=name,
        config=config,
        tender="/usr/bin/solo5-hvt",
        taskset="taskset",
        image_path=f"/run/albatross/{name}.img",
        taps=taps if taps is not None else [],
        dbdir="/var/lib/albatross",
        drop_path=drop_path,
    )


def test_argv_minimal():
    cfg = UnikernelConfig(memory=64, cpuids=frozenset({0}))
    assert argv_for(ROOT_HELLO, cfg) == [
        "taskset", "-c", "0", "/usr/bin/solo5-hvt", "--mem=64",
        "--", "/run/albatross/:hello.img", "--name=hello",
    ]


def test_argv_full():
    cfg = UnikernelConfig(
        memory=128,
        cpuids=frozenset({3, 1, 10}),
        bridges=(NetDevice("service", "br0"), NetDevice("mgmt", None, MAC1)),
        block_devices=(
            BlockDevice("storage", "disk", 4096),
            BlockDevice("data"),
            BlockDevice("log", None, 512),
        ),
        argv=("--ipv4=10.0.0.2/24", "-l", "*:debug"),
    )
    mac_service = FOO_BAR.mac("service")
    mac_str = ":".join(f"{b:02x}" for b in mac_service)
    assert argv_for(FOO_BAR, cfg, ["vmmtap3", "vmmtap0"]) == [
        "taskset", "-c", "1,3,10", "/usr/bin/solo5-hvt", "--mem=128",
        "--net:service=vmmtap3", "--net:mgmt=vmmtap0",
        f"--net-mac:service={mac_str}", "--net-mac:mgmt=0a:0b:0c:0d:0e:0f",
        "--block:storage=/var/lib/albatross/block/foo:disk",
        "--block:data=/var/lib/albatross/block/foo:data",
        "--block:log=/var/lib/albatross/block/foo:log",
        "--block-sector-size:storage=4096", "--block-sector-size:log=512",
        "--", "/run/albatross/foo:bar.img", "--name=bar",
        "--ipv4=10.0.0.2/24", "-l", "*:debug",
    ]
    assert macs_in_use(FOO_BAR, cfg) == [mac_service, MAC1]
    assert mac_service[:3] == b"\x00\x80\x41"


def test_argv_root_block_path():
    cfg = UnikernelConfig(block_devices=(BlockDevice("storage"),))
    assert "--block:storage=/var/lib/albatross/block/:storage" in argv_for(ROOT_HELLO, cfg)


def test_argv_no_drop_path():
    cfg = UnikernelConfig(argv=("a",))
    assert argv_for(FOO_BAR, cfg, drop_path=False)[-2:] == ["--name=foo:bar", "a"]
    assert argv_for(ROOT_HELLO, cfg, drop_path=False)[-2:] == ["--name=:hello", "a"]


def test_argv_path_only_name_uses_full_name():
    cfg = UnikernelConfig()
    assert argv_for(Name(("foo",), None), cfg)[-1] == "--name=foo:"


def test_argv_without_add_name():
    cfg = UnikernelConfig(add_name=False, argv=("x", "y"))
    assert argv_for(FOO_BAR, cfg)[-4:] == ["--", "/run/albatross/foo:bar.img", "x", "y"]
    cfg = UnikernelConfig(add_name=False)
    assert argv_for(FOO_BAR, cfg)[-1] == "/run/albatross/foo:bar.img"


def test_argv_tap_count_mismatch():
    cfg = UnikernelConfig(bridges=(NetDevice("service"),))
    with pytest.raises(Solo5Error):
        argv_for(ROOT_HELLO, cfg, [])


def test_mac_deterministic():
    assert macs_in_use(ROOT_HELLO, UnikernelConfig(bridges=(NetDevice("service"),))) == [
        ROOT_HELLO.mac("service")
    ]
    assert ROOT_HELLO.mac("service") != ROOT_HELLO.mac("other")


# -- the stand-in tender -------------------------------------------------------------

def run_tender(args: list[str], tender: str = HVT, timeout: float = 20, **env: str):
    return subprocess.run(
        [tender, *args], capture_output=True, text=True, timeout=timeout, env=stand_in_env(**env)
    )


@pytest.fixture
def hello(tmp_path) -> str:
    """An hvt image without devices."""
    return write_image(tmp_path / "hello.hvt", devices=[])


@pytest.fixture
def hello_spt(tmp_path) -> str:
    return write_image(tmp_path / "hello.spt", target="spt", devices=[])


def test_stand_in_version():
    r = run_tender(["--version"])
    assert r.returncode == 0
    assert r.stdout == ""
    assert r.stderr == "solo5-hvt tender, version v0.12.1\nABI version 2\n"
    assert run_tender(["--version"], SPT).stderr.startswith("solo5-spt tender")


def test_stand_in_help_and_bad_options(hello):
    r = run_tender(["--help"])
    assert r.returncode == 1 and r.stderr.startswith("usage: solo5-hvt ")
    r = run_tender(["--frobnicate", hello])
    assert r.returncode == 1
    assert r.stderr.startswith("solo5-hvt: Invalid option: `--frobnicate'\nusage: ")
    for bad in ("--mem=0", "--mem=abc"):
        r = run_tender([bad, hello])
        assert (r.returncode, r.stderr) == (1, "solo5-hvt: Malformed argument to --mem\n")
    r = run_tender(["--mem=5000", hello])
    assert r.returncode == 1
    r = run_tender([])
    assert r.returncode == 1 and "Missing KERNEL" in r.stderr


def test_stand_in_hello(hello):
    r = run_tender(["--mem=32", "--", hello])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "Solo5: Memory map: 32 MB addressable:" in lines
    assert lines[-1] == "Solo5: solo5_exit(0) called"
    assert r.stderr == ""


def test_stand_in_exit_codes(hello):
    assert run_tender([hello, "exit", "3"]).returncode == 3
    assert run_tender([hello, "exit", "300"]).returncode == 300 & 0xFF
    r = run_tender([hello, "abort"])
    assert r.returncode == 255 and r.stdout.splitlines()[-1] == "Solo5: solo5_abort() called"
    r = run_tender([hello, "sleep", "0.1", "7"])
    assert r.returncode == 7
    assert run_tender([hello, "sleep", "0.05"]).returncode == 0
    assert run_tender([hello, "bogus"]).returncode == 64


def test_stand_in_console(hello):
    r = run_tender([hello, "print", "hello", "print", "world", "exit", "2"])
    lines = r.stdout.splitlines()
    assert lines[-3:] == ["hello", "world", "Solo5: solo5_exit(2) called"]
    r = run_tender([hello, "spam", "1000"])
    assert sum(1 for l in r.stdout.splitlines() if l.startswith("spam ")) == 1000
    r = run_tender([hello, "longline", "2000"])
    assert ("x" * 2000 + "\n") in r.stdout
    assert r.stdout.endswith("Solo5: solo5_exit(0) called\n")


def test_stand_in_name_argument(hello):
    r = run_tender([hello, "--name=hello", "exit", "5"])
    assert r.returncode == 5
    r = run_tender([hello, "--name=hello", "reject-name", "exit", "5"])
    assert r.returncode == 64
    r = run_tender([hello, "reject-name", "exit", "5"])
    assert r.returncode == 5


def test_stand_in_wrong_target(hello, hello_spt):
    r = run_tender([hello], SPT)
    assert r.returncode == 1
    assert r.stderr == f"solo5-spt: {hello}: Executable is not for the solo5-spt target\n"
    assert run_tender([hello_spt, "exit", "4"], SPT).returncode == 4


def test_stand_in_bad_images(tmp_path):
    bad = write_image(tmp_path / "noabi", no_abi=True)
    r = run_tender([bad])
    assert r.returncode == 1 and r.stderr.startswith("solo5-hvt: ")
    bad = write_image(tmp_path / "badmft", bad_manifest="runtime")
    assert run_tender([bad]).returncode == 1
    r = run_tender([str(tmp_path / "missing")])
    assert r.returncode == 1 and "No such file or directory" in r.stderr


def test_stand_in_devices(tmp_path):
    img = write_image(tmp_path / "dev.hvt", devices=[("storage", "BLOCK_BASIC"), ("service", "NET_BASIC")])
    r = run_tender([img])
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "solo5-hvt: Device 'storage' of type BLOCK_BASIC declared but not attached.",
        "solo5-hvt: Device 'service' of type NET_BASIC declared but not attached.",
        "solo5-hvt: All declared devices must be attached. See --help for syntax.",
    ]
    r = run_tender(["--block:wrong=/x", img])
    assert r.stderr == "solo5-hvt: Resource not declared in manifest: 'wrong'\n"
    r = run_tender(["--net:storage=tap0", img])  # a block device given as net
    assert r.stderr == "solo5-hvt: Resource not declared in manifest: 'storage'\n"
    r = run_tender(["--net:service=nosuchtap", f"--block:storage={tmp_path}/disk", img])
    assert r.stderr == "solo5-hvt: Could not attach interface: nosuchtap: No such file or directory\n"


def test_stand_in_block_files(tmp_path):
    img = write_image(tmp_path / "blk.hvt", devices=[("storage", "BLOCK_BASIC")])
    disk = tmp_path / "disk"
    r = run_tender([f"--block:storage={disk}", img])
    assert r.stderr == f"solo5-hvt: Could not open block device: {disk}: No such file or directory\n"
    disk.write_bytes(b"\x00" * 4096)
    r = run_tender([f"--block:storage={disk}", img, "exit", "0"])
    assert r.returncode == 0, r.stderr
    assert "Application acquired 'storage' as block device" in r.stdout
    r = run_tender([f"--block:storage={disk}", "--block-sector-size:storage=4096", img])
    assert r.returncode == 0, r.stderr
    r = run_tender([f"--block:storage={disk}", "--block-sector-size:storage=8192", img])
    assert r.returncode == 1 and "multiple of the sector size" in r.stderr
    r = run_tender([f"--block:storage={disk}", "--block-sector-size:storage=1000", img])
    assert r.returncode == 1 and "Malformed argument to --block-sector-size" in r.stderr


def test_stand_in_log(tmp_path, hello):
    log = tmp_path / "log.jsonl"
    run_tender(["--mem=16", hello, "--name=x", "exit", "1"], STAND_IN_TENDER_LOG=str(log))
    entry = json.loads(log.read_text().splitlines()[0])
    assert entry["argv"] == [HVT, "--mem=16", hello, "--name=x", "exit", "1"]
    assert isinstance(entry["pid"], int)


def test_stand_in_versioned_name(tmp_path, hello_spt):
    """A copy named solo5-spt.2 (as in dbdir) behaves as spt."""
    link = tmp_path / "solo5-spt.2"
    link.symlink_to(SPT)
    assert run_tender([hello_spt, "exit", "9"], str(link)).returncode == 9


def _start(args: list[str], tender: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [tender, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stand_in_env()
    )
    assert p.stdout is not None
    first = p.stdout.readline()  # banner started: handlers are installed
    assert first
    while not p.stdout.readline().startswith("tick"):
        pass
    return p


def test_stand_in_sigterm_hvt(hello):
    p = _start([hello, "forever"], HVT)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 1
    assert err == "solo5-hvt: Exiting on signal 15\n"


def test_stand_in_sigterm_spt(hello_spt):
    p = _start([hello_spt, "forever"], SPT)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGTERM


def test_stand_in_forever_ticks(hello):
    p = _start([hello, "forever"], HVT)
    assert p.stdout.readline().startswith("tick")
    assert p.stdout.readline().startswith("tick")
    p.kill()
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGKILL


def test_stand_in_fault(hello, hello_spt):
    assert run_tender([hello, "fault"]).returncode == 255
    assert run_tender([hello_spt, "fault"], SPT).returncode == -signal.SIGSEGV


def test_wrappers_are_executable():
    for t in (HVT, SPT):
        assert os.access(t, os.X_OK)
    assert shutil.which("solo5-hvt", path=str(TENDER_BIN)) == HVT
