"""End-to-end with real unikernels: the system (albatross-console, albatrossd,
albatross-stats) running Solo5's own test unikernels on the real solo5-hvt /
solo5-spt of ../shared/solo5 when they and KVM are there, the stand-in tender
otherwise (see solo5_fixtures.E2eTender).  Everything here needs only what a
real tender does: console output, exit codes and restarts, CPU pinning, taps
on a bridge, block devices, statistics, surviving an albatrossd restart."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from solo5_fixtures import E2eTender, real_image
from system_fixtures import System, delete_netns, make_netns, missing_privileges, wait

_why = missing_privileges()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture(params=["hvt", "spt"])
def tender(request):
    return E2eTender(request.param)


def _system(base, tender: E2eTender, netns: str | None = None) -> System:
    s = System(base, netns=netns)
    s.env["PATH"] = tender.path_env(s.env["PATH"])
    s.start_all(interval=0.5)
    return s


@pytest.fixture
def system(tmp_path, tender):
    s = _system(tmp_path, tender)
    try:
        yield s
    finally:
        s.teardown()


@pytest.fixture
def net_system(tmp_path, tender):
    why = missing_privileges(netns=True)
    if why is not None:
        pytest.skip(why)
    ns = make_netns("service")
    s = _system(tmp_path, tender, netns=ns)
    try:
        yield s
    finally:
        s.teardown()
        delete_netns(ns)


def pids(s: System) -> set[int]:
    return {p.pid for p in s.tenders()}


def test_console_info_and_destroy(system, tender, tmp_path):
    image = tender.image(tmp_path)
    system.client("create", "t", image, "--arg=forever")
    live = system.stream("console", "t")
    live.until(r"tick 2$", timeout=20)
    info = " ".join(system.client("info").split())
    assert "[unikernel: :t]: typ solo5" in info
    # history from a new subscriber
    hist = system.stream("console", "t", "--count=3")
    assert len(hist.until(r"tick \d+$", timeout=10)) >= 1
    system.client("destroy", "t")
    wait(lambda: not system.tenders(), "the tender to go")
    assert "no unikernels" in system.client("info")


def test_exit_codes_and_restarts(system, tender, tmp_path):
    image = tender.image(tmp_path)
    # restarted on an exit code of the set
    system.client("create", "r", image, "--restart-on-fail", "--exit-code=3", "--arg=sleep", "--arg=0",
                  "--arg=3")
    s = system.stream("console", "r", "--count=100")
    s.until(r"solo5_exit\(3\) called", timeout=20)
    s.until(r"solo5_exit\(3\) called", timeout=20)  # and again: it was restarted
    system.client("destroy", "r")
    wait(lambda: "no unikernels" in system.client("info"), "r to go")
    # not restarted for a code outside the set
    system.client("create", "q", image, "--restart-on-fail", "--exit-code=3", "--arg=sleep", "--arg=0",
                  "--arg=5")
    system.stream("console", "q").until(r"solo5_exit\(5\) called", timeout=20)
    wait(lambda: "no unikernels" in system.client("info"), "q to stay down")
    assert re.search(r"\[unikernel: :q\] .*exit 5", system.log("albatrossd").replace("\n", " ")) \
        or "exit 5" in system.log("albatrossd")


def test_cpu_pinning_and_stats(system, tender, tmp_path):
    cpu = 1 if (os.cpu_count() or 1) > 1 else 0
    system.client("create", "p", tender.image(tmp_path), f"--cpu={cpu}", "--arg=forever")
    (pid,) = wait(lambda: pids(system), "the tender")
    assert os.sched_getaffinity(pid) == {cpu}
    st = system.stream("stats", "--name", "p")
    st.until(r"utime \d+\.\d{6} stime \d+\.\d{6} maxrss [1-9]", timeout=30)


def test_taps_and_block_devices(net_system, tender, tmp_path):
    s = net_system
    s.client("create-block", "disk", "1")
    s.client("create", "d", tender.image(tmp_path, devices=True), "--net=service:service",
             "--block=storage:disk", "--arg=forever")
    s.stream("console", "d").until(r"tick 1$", timeout=20)
    links = subprocess.run(["ip", "-n", s.netns, "-o", "link", "show", "master", "service"], capture_output=True,
                           text=True, check=True).stdout
    assert re.search(r"\d+: [\w.-]+", links), links
    info = " ".join(s.client("info").split())
    assert "storage -> disk (sector-size: 512 bytes, size 1 MB)" in info and "service -> service (mac " in info
    assert s.client("destroy-block", "disk", code=117)  # in use
    s.client("destroy", "d")
    wait(lambda: not s.tenders(), "the tender to go")
    s.client("destroy-block", "disk")


def test_real_block_unikernel_writes_its_disk(net_system, tender):
    """Solo5's test_blk writes and reads back its block device (real tenders only)."""
    if not tender.real:
        pytest.skip(f"needs the real tender: {tender.why_not_real}")
    s = net_system
    s.client("create-block", "storage", "1")
    s.client("create", "b", real_image("test_blk", tender.target), "--block=storage")
    s.stream("console", "b").until(r"SUCCESS", timeout=30)


def test_unikernels_survive_an_albatrossd_restart(system, tender, tmp_path):
    system.client("create", "keep", tender.image(tmp_path), "--arg=forever")
    wait(lambda: len(pids(system)) == 1, "the tender")
    system.stop("albatrossd")
    wait(lambda: not system.tenders(), "albatrossd to stop its tenders")
    system.start_albatrossd()
    wait(lambda: len(pids(system)) == 1, "the unikernel to come back")
    system.stream("console", "keep", "--count=1").until(r"tick \d+$", timeout=20)
