"""Tap devices on a bridge (albatross.solo5.taps), inside a private network namespace.

The effectful tests run their code with ``ip netns exec <ns> python -c ...`` so
that nothing touches the host's interfaces.  They need root, /dev/net/tun and
``ip netns``; without those they are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from albatross.solo5.taps import free_tap_name
from solo5_fixtures import write_image

TENDER_BIN = Path(__file__).resolve().parent / "tender" / "bin"


# -- pure ------------------------------------------------------------------------------

def test_free_tap_name():
    assert free_tap_name(set()) == "vmmtap0"
    assert free_tap_name({"lo", "eth0", "vmmtap0", "vmmtap1"}) == "vmmtap2"
    assert free_tap_name({"vmmtap0", "vmmtap2"}) == "vmmtap1"
    assert free_tap_name({"vmmtap1"}) == "vmmtap0"
    assert free_tap_name({"vmmtapx", "vmmtap", "vmmtap0a", "xvmmtap0"}) == "vmmtap0"


# -- namespace helpers ---------------------------------------------------------------

def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and taps"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2) for ip netns"
    return None


@pytest.fixture
def netns():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"albtest-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"ip netns add failed: {r.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


PRELUDE = """
import json
from pyroute2 import IPRoute
from albatross.solo5 import taps
from albatross.solo5.elf import Solo5Error

def links():
    with IPRoute() as ipr:
        out = {}
        for l in ipr.get_links():
            info = l.get_attr("IFLA_LINKINFO")
            out[l.get_attr("IFLA_IFNAME")] = {
                "index": l["index"],
                "up": bool(l["flags"] & 1),
                "master": l.get_attr("IFLA_MASTER"),
                "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
            }
        return out

def add(name, kind):
    with IPRoute() as ipr:
        if kind == "tun":
            ipr.link("add", ifname=name, kind="tuntap", mode="tun")
        else:
            ipr.link("add", ifname=name, kind=kind)
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")

def error(f, *args):
    try:
        f(*args)
    except Solo5Error as e:
        return e.message
    return None
"""


def in_ns(ns: str, code: str):
    """Run ``code`` (which sets ``result``) in namespace ``ns``; return ``result``."""
    script = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(result))\n"
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


# -- effects ----------------------------------------------------------------------------

def test_bridges(netns):
    result = in_ns(netns, """
        before = taps.list_bridges()
        add("br0", "bridge"); add("br1", "bridge"); add("tun0", "tun")
        result = {
            "before": before,
            "after": sorted(taps.list_bridges()),
            "exists": [taps.bridge_exists(n) for n in ("br0", "br1", "nope")],
        }
    """)
    assert result == {"before": [], "after": ["br0", "br1"], "exists": [True, True, False]}


def test_create_and_destroy_taps(netns):
    result = in_ns(netns, """
        add("br0", "bridge")
        t0 = taps.create_tap("br0")
        t1 = taps.create_tap("br0")
        state = links()
        taps.destroy_tap(t0)
        gone = t0 not in links()
        again = taps.create_tap("br0")
        result = {"t0": t0, "t1": t1, "state": state, "gone": gone, "again": again,
                  "final": sorted(links())}
    """)
    assert (result["t0"], result["t1"], result["again"]) == ("vmmtap0", "vmmtap1", "vmmtap0")
    br = result["state"]["br0"]["index"]
    for tap in ("vmmtap0", "vmmtap1"):
        assert result["state"][tap] == {
            "index": result["state"][tap]["index"], "up": True, "master": br, "kind": "tun",
        }
    assert result["gone"]
    assert result["final"] == ["br0", "lo", "vmmtap0", "vmmtap1"]


def test_create_tap_picks_lowest_free_number(netns):
    result = in_ns(netns, """
        add("br0", "bridge")
        with IPRoute() as ipr:
            ipr.link("add", ifname="vmmtap0", kind="tuntap", mode="tap")
            ipr.link("add", ifname="vmmtap2", kind="bridge")  # any link name counts
        result = [taps.create_tap("br0"), taps.create_tap("br0")]
    """)
    assert result == ["vmmtap1", "vmmtap3"]


def test_create_tap_failure_cleans_up(netns):
    result = in_ns(netns, """
        add("tun0", "tun")
        result = {
            "missing": error(taps.create_tap, "nosuchbridge"),
            "not_bridge": error(taps.create_tap, "tun0"),
            "links": sorted(links()),
        }
    """)
    assert result["missing"] == (
        "failed to attach tap vmmtap0 to bridge nosuchbridge: interface nosuchbridge does not exist"
    )
    assert result["not_bridge"].startswith("failed to set up tap vmmtap0 on bridge tun0: ")
    assert result["links"] == ["lo", "tun0"]


def test_destroy_tap_errors(netns):
    result = in_ns(netns, """
        add("br0", "bridge")
        result = [error(taps.destroy_tap, "vmmtap7"), error(taps.destroy_tap, "br0"), sorted(links())]
    """)
    assert result == [
        "failed to destroy tap vmmtap7: no such interface",
        "failed to destroy tap br0: not a tap device",
        ["br0", "lo"],
    ]


# -- the stand-in tender attaching taps (solo5.md §1) ------------------------------------

def test_stand_in_tender_taps(netns, tmp_path):
    img = write_image(tmp_path / "net.hvt", devices=[("service", "NET_BASIC")])
    tender = str(TENDER_BIN / "solo5-hvt")
    result = in_ns(netns, f"""
        import subprocess, os, sys
        env = dict(os.environ, STAND_IN_PYTHON=sys.executable)
        add("br0", "bridge")
        tap = taps.create_tap("br0")
        with IPRoute() as ipr:
            ipr.link("add", ifname="downtap", kind="tuntap", mode="tap")

        def run(*args):
            return subprocess.run([{tender!r}, *args], capture_output=True, text=True, env=env, timeout=30)

        ok = run("--net:service=" + tap, "--net-mac:service=00:80:41:01:02:03", {img!r}, "exit", "3")
        down = run("--net:service=downtap", {img!r})
        first = subprocess.Popen([{tender!r}, "--net:service=" + tap, {img!r}, "forever"],
                                 stdout=subprocess.PIPE, text=True, env=env)
        while not first.stdout.readline().startswith("tick"):
            pass
        busy = run("--net:service=" + tap, {img!r})
        first.kill(); first.wait()
        result = {{
            "ok": [ok.returncode, ok.stdout.splitlines()[-1], ok.stderr],
            "down": [down.returncode, down.stderr],
            "busy": [busy.returncode, busy.stderr],
        }}
    """)
    assert result["ok"] == [3, "Solo5: solo5_exit(3) called", ""]
    assert result["down"] == [1, "solo5-hvt: Could not attach interface: downtap: Network is down\n"]
    assert result["busy"] == [1, "solo5-hvt: Could not attach interface: vmmtap0: Device or resource busy\n"]
