"""One implementation's client against the other's albatross-console and
albatrossd, with real Solo5 unikernels (solo5-hvt): create with CPU, memory,
network, block device and arguments; info; console history; get; restart;
force-create; destroy; block devices created, set and dumped byte for byte;
policies and refusals.  Wherever both clients can ask the same question, the
printed output of ours must be byte-identical to upstream's."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from interop.interop_harness import BOTH, Host, solo5_image
from system_fixtures import wait

FAILED = 117  # upstream's exit code for a command the daemon refused
CROSS = [("ours", "upstream"), ("upstream", "ours")]
IDS = ["our-client-their-daemons", "their-client-our-daemons"]

DEV = solo5_image("test_exit_dev")   # declares net "service" and block "storage"
EXIT = solo5_image("test_exit")
HELLO = solo5_image("test_hello")


def up(h: Host, daemons: str) -> None:
    h.start_console(daemons)
    h.start_albatrossd(daemons)


def same_output(h: Host, *args: str, code: int = 0) -> str:
    """Both clients ask the same; their output (stdout and stderr) must be identical."""
    ours = h.run("ours", *args, code=code)
    theirs = h.run("upstream", *args, code=code)
    assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr), args
    return ours.stdout + ours.stderr


def flat(text: str) -> str:
    return " ".join(text.split())


def tender_pids(h: Host, name: str) -> set[int]:
    return {p.pid for p in h.tenders() if any(a.endswith(f"{name}.img") for a in p.cmdline())}


def console_until(h: Host, impl: str, name: str, pattern: str, *args: str) -> list[str]:
    s = h.stream(impl, "console", name, *args)
    try:
        return s.until(pattern, timeout=20)
    finally:
        s.close()


@pytest.mark.parametrize("client,daemons", CROSS, ids=IDS)
def test_unikernel_lifecycle(make_host, netns, client, daemons):
    h = make_host(netns=netns)
    up(h, daemons)
    data = os.urandom(300_000)
    with open(h.base / "disk.data", "wb") as fh:
        fh.write(data)
    assert "success" in h.client(client, "create-block", "disk", "2", "--data", str(h.base / "disk.data"))
    out = h.client(client, "create", "u", DEV, "--cpu=1", "--mem=16", "--net=service:service",
                   "--block=storage:disk", "--arg=forever", "--restart-on-fail")
    assert "host [unikernel: :u]: success: created unikernel" in out
    console_until(h, client, "u", r"tick 1$")
    info = same_output(h, "info", "--name", "u")
    f = flat(info)
    assert f.startswith("host [unikernel: :u]: [unikernel: :u]: typ solo5 started ")
    for piece in ("fail behaviour restart all except 1", "CPUids 1", "16 MB memory",
                  "block devices storage -> disk (sector-size: 512 bytes, size 2 MB)",
                  "bridge service -> service (mac "):
        assert piece in f, (piece, info)
    assert max(len(line) for line in info.splitlines()) < 78  # wrapped like Format does
    # the tender runs with the CPU pinned and the tap on the bridge
    (pid,) = tender_pids(h, "u")
    taps = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "master", "service"], capture_output=True,
                          text=True, check=True).stdout
    assert re.search(r"\d+: \w+", taps), taps
    assert os.sched_getaffinity(pid) == {1} or os.cpu_count() < 2
    # the block device is in use: refused
    refused = same_output(h, "destroy-block", "disk", code=FAILED)
    assert "command failed" in refused

    # get: the image as deployed
    got = h.client(client, "get", "u")
    (path,) = re.findall(r"dumped image to (\S+)", got)
    with open(path, "rb") as fh, open(DEV, "rb") as orig:
        assert fh.read() == orig.read()

    # restart: a new tender, same configuration
    h.client(client, "restart", "u")
    wait(lambda: tender_pids(h, "u") and tender_pids(h, "u") != {pid}, "a new tender after restart")
    # the history holds the first run's ticks, then the new run counts from 1 again
    s = h.stream(client, "console", "u", "--count=1000")
    s.until(r"tick 1$")
    s.until(r"tick 1$", timeout=30)
    s.close()

    # force-create over it with other arguments, then destroy
    h.client(client, "create", "u", DEV, "--force", "--mem=20", "--net=service:service", "--block=storage:disk",
             "--arg=sleep", "--arg=600", "--arg=0")
    wait(lambda: "20 MB memory" in flat(h.infos(client)), "the forced unikernel")
    console_until(h, client, "u", r"sleeping$", "--count=5")
    assert "success" in h.client(client, "destroy", "u")
    wait(lambda: not tender_pids(h, "u"), "the tender to go")
    assert same_output(h, "info") == "host [unikernel: :]: no unikernels\n"

    # block set and dump, byte for byte
    new = os.urandom(1 << 20)
    with open(h.base / "new.data", "wb") as fh:
        fh.write(new)
    h.client(client, "set-block", "disk", str(h.base / "new.data"))
    dumped = h.client(client, "dump-block", "disk")
    (path,) = re.findall(r"dumped to (\S+)", dumped)
    with open(path, "rb") as fh:
        assert fh.read() == new + bytes(2 * (1 << 20) - len(new))
    same_output(h, "block")
    assert "success" in h.client(client, "destroy-block", "disk")
    assert same_output(h, "block") == "host [unikernel: :]: no block devices\n"


@pytest.mark.parametrize("client,daemons", CROSS, ids=IDS)
def test_console_history_exit_and_arguments(make_host, client, daemons):
    h = make_host()
    up(h, daemons)
    h.client(client, "create", "hello", HELLO, "--no-add-name", "--arg=Hello_Solo5")
    console_until(h, client, "hello", r"solo5_exit\(0\) called")
    wait(lambda: "no unikernels" in h.infos(client), "hello to exit")
    # the history of an exited unikernel, printed the same by both clients
    ours, theirs = (console_until(h, impl, "hello", r"solo5_exit\(0\) called") for impl in BOTH)
    assert ours == theirs
    assert any("Command line is: 'Hello_Solo5'" in line for line in ours) and any("SUCCESS" in x for x in ours)
    assert "[unikernel: :hello]" in same_output(h, "inactive-consoles")
    # arguments reach the unikernel (test_exit skips the --name=NAME albatrossd adds)
    h.client(client, "create", "named", EXIT, "--arg=hi")
    console_until(h, client, "named", r"cmdline: 'hi'")
    # restart on chosen exit codes only
    h.client(client, "create", "r3", EXIT, "--restart-on-fail", "--exit-code=3", "--arg=sleep", "--arg=0",
             "--arg=3")
    s = h.stream(client, "console", "r3")
    s.until("sleeping")
    s.until("solo5_exit\\(3\\) called")
    s.until("sleeping")  # started again
    s.close()
    h.client(client, "destroy", "r3")


@pytest.mark.parametrize("client,daemons", CROSS, ids=IDS)
def test_policies_and_refusals(make_host, client, daemons):
    h = make_host()
    up(h, daemons)
    h.client(client, "add-policy", "tenant", "1", "--mem=32", "--cpu=0", "--block=10", "--bridge=service")
    pol = same_output(h, "policy")
    assert "[unikernel: tenant:]: policy: 1 unikernels 0 CPUids 32 MB memory 10 MB block, bridges: service" \
        in flat(pol), pol
    # refused by the policy: CPU, memory, count
    for args, why in (
        (("tenant:a", EXIT, "--cpu=1"), "CPU"),
        (("tenant:a", EXIT, "--mem=64"), "memory"),
    ):
        ours = h.run("ours", "create", *args, code=FAILED)
        theirs = h.run("upstream", "create", *args, code=FAILED)
        assert ours.stdout == theirs.stdout and why.lower() in ours.stdout.lower(), (ours.stdout, theirs.stdout)
    h.client(client, "create", "tenant:a", EXIT, "--arg=forever", "--cpu=0")
    refused = same_output(h, "create", "tenant:b", EXIT, "--arg=forever", "--cpu=0", code=FAILED)
    assert "command failed" in refused
    # a sub-policy larger than its parent is refused
    refused = same_output(h, "add-policy", "tenant:sub", "2", "--mem=64", "--cpu=0", code=FAILED)
    assert "command failed" in refused
    assert "tenant:a" in h.infos(client)
    # destroying what does not exist
    same_output(h, "destroy", "nope", code=FAILED)
    same_output(h, "restart", "nope", code=FAILED)
    h.client(client, "destroy", "tenant:a")
    wait(lambda: "no unikernels" in h.infos(client), "tenant:a to go")
    h.client(client, "remove-policy", "--path=tenant")
    assert "tenant" not in same_output(h, "policy")


@pytest.mark.parametrize("impl", BOTH)
def test_spt_unikernel(make_host, impl):
    """solo5-spt (seccomp) through either albatrossd."""
    from solo5_fixtures import real_tender_missing
    why = real_tender_missing("spt")
    if why:
        pytest.skip(why)
    h = make_host()
    up(h, impl)
    other = "upstream" if impl == "ours" else "ours"
    h.client(other, "create", "s", solo5_image("test_hello", "spt"), "--no-add-name", "--arg=Hello_Solo5")
    console_until(h, other, "s", r"SUCCESS")
