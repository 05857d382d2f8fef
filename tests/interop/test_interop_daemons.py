"""Mixed daemons (one implementation's albatrossd with the other's
albatross-console and albatross-stats) and the state file in both
directions: what one albatrossd wrote, the other reads, with every field
(printed identically by both clients' inspect-dump) and every unikernel
brought back on real tenders."""

from __future__ import annotations

import os
import signal

import pytest

from interop.interop_harness import BOTH, solo5_image
from system_fixtures import wait

DEV = solo5_image("test_exit_dev")
EXIT = solo5_image("test_exit")
PAIRS = [("ours", "upstream"), ("upstream", "ours")]


def other(impl: str) -> str:
    return "upstream" if impl == "ours" else "ours"


@pytest.mark.parametrize("vmmd", BOTH, ids=["our-albatrossd-their-console-stats", "their-albatrossd-our-console-stats"])
def test_mixed_daemons(make_host, vmmd):
    h = make_host()
    helpers = other(vmmd)
    h.start_console(helpers)
    h.start_stats(helpers)
    h.start_albatrossd(vmmd)
    h.client(vmmd, "create", "t", EXIT, "--arg=forever")
    s = h.stream(helpers, "console", "t")
    s.until(r"tick 2$", timeout=20)
    s.close()
    # Ctrl-C on console: ours exits 130 without a word, upstream's dies of the signal
    for impl, code in (("ours", 130), ("upstream", -signal.SIGINT)):
        c = h.stream(impl, "console", "t")
        c.until(r"tick \d+$", timeout=20)
        c.p.send_signal(signal.SIGINT)
        assert c.p.wait(10) == code, impl
        assert all(line.startswith("console ") for line in c.rest()), impl
    # statistics of the tender, gathered by the other implementation's albatross-stats
    st = h.stream(helpers, "stats", "--name", "t")
    lines = st.until(r"utime \d+\.\d{6} stime", timeout=30)
    assert any("stats:" in line for line in lines), lines
    st.close()
    h.client(helpers, "destroy", "t")
    wait(lambda: not h.tenders(), "the tender to go")
    # the console keeps the history for the inactive console
    assert "[unikernel: :t]" in h.client(vmmd, "inactive-consoles")


@pytest.mark.parametrize("writer,reader", PAIRS, ids=["ours-to-upstream", "upstream-to-ours"])
def test_state_file_both_directions(make_host, netns, writer, reader):
    h = make_host(netns=netns)
    h.start_console(writer)
    h.start_albatrossd(writer)
    h.client(writer, "create-block", "disk", "1")
    h.client(writer, "add-policy", "tenant", "3", "--mem=128", "--cpu=0", "--cpu=1", "--block=5",
             "--bridge=service")
    h.client(writer, "create", "full", DEV, "--cpu=1", "--mem=24", "--net=service:service@02:00:00:00:00:2a",
             "--block=storage:disk@4096", "--arg=forever", "--restart-on-fail", "--exit-code=3",
             "--exit-code=7")
    h.client(writer, "create", "tenant:plain", EXIT, "--no-add-name", "--arg=forever", "--compression-level=0")
    h.client(writer, "create", "tenant:zipped", EXIT, "--arg=forever", "--compression-level=9", "--cpu=0")
    wait(lambda: len(h.tenders()) == 3, "three tenders")
    before = h.client("ours", "info")
    assert h.stop("albatrossd") is not None
    wait(lambda: not h.tenders(), "the tenders to stop with albatrossd")
    state = os.path.join(h.dbdir, "state")
    assert os.path.exists(state)
    # both clients print the state file the same (every field)
    dump = [h.client(impl, "inspect-dump", "--dbdir", h.dbdir, local=False) for impl in BOTH]
    assert dump[0] == dump[1]
    flat = " ".join(dump[0].split())
    assert "parsed 3 unikernels:" in flat and "parsed 2 policies:" in flat
    for piece in ("fail behaviour restart 3, 7", "CPUids 1", "24 MB memory",
                  "block devices storage -> disk, sector-size: 4096", "bridge service -> service@02:00:00:00:00:2a",
                  "[unikernel: tenant:plain]: typ solo5 compression false", "add_name false",
                  "[unikernel: tenant:zipped]: typ solo5 compression true",
                  "policy: 3 unikernels 0,1 CPUids 128 MB memory 5 MB block, bridges: service"):
        assert piece in flat, (piece, dump[0])
    # the other implementation brings everything back
    h.stop("albatross-console")
    h.start_console(reader)
    h.start_albatrossd(reader)
    wait(lambda: len(h.tenders()) == 3, "the reader to start all three unikernels")
    after = h.client(reader, "info")
    for name in ("[unikernel: :full]", "[unikernel: tenant:plain]", "[unikernel: tenant:zipped]"):
        assert name in after
    assert "(mac 02:00:00:00:00:2a)" in after and "storage -> disk (sector-size: 4096 bytes" in after
    assert [line for line in before.splitlines() if "digest" in line] == \
        [line for line in after.splitlines() if "digest" in line]
    assert "5 MB block" in h.client(writer, "policy", "--path=tenant")
    s = h.stream(writer, "console", "tenant:plain")
    s.until(r"tick 1$", timeout=20)
    s.close()
    # and writes it back unchanged
    h.stop("albatrossd")
    wait(lambda: not h.tenders(), "the tenders to stop with albatrossd")
    assert h.client("upstream", "inspect-dump", "--dbdir", h.dbdir, local=False) == dump[1]
