"""The console daemon's pure parts: line splitting, ring, subscribers, listing."""

from hypothesis import given, settings
from hypothesis import strategies as st

from albatross.core import Ptime
from albatross.daemons.console_core import (
    RING_SIZE, ConsoleState, LineSplitter, Ring,
)
from albatross.policy.names import Name


def N(s: str) -> Name:
    return Name.of_string(s)


# ------------------------------------------------------------ line splitting

def test_lines_split_and_slack_carried():
    sp = LineSplitter()
    assert sp.feed(b"hello\nwor") == [b"hello"]
    assert sp.feed(b"ld\n\n\nx") == [b"world"]
    assert sp.slack == b"x"
    assert sp.feed(b"\n") == [b"x"]


def test_truncation_at_512_then_drop_until_newline():
    sp = LineSplitter()
    assert sp.feed(b"a" * 511) == []
    out = sp.feed(b"b" * 10)
    assert out == [b"a" * 511 + b"b" + b" [truncated]"]
    assert sp.dropping and sp.slack == b""
    assert sp.feed(b"c" * 512) == []
    assert sp.feed(b"ccc\nnext\nrest") == [b"next"]
    assert not sp.dropping and sp.slack == b"rest"


def test_exactly_512_without_newline_truncates():
    sp = LineSplitter()
    assert sp.feed(b"z" * 512) == [b"z" * 512 + b" [truncated]"]


def test_line_with_newline_is_not_cut():
    # upstream only cuts fragments without a newline: slack + piece may exceed 512
    sp = LineSplitter()
    assert sp.feed(b"q" * 500) == []
    assert sp.feed(b"q" * 100 + b"\n") == [b"q" * 600]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=512), max_size=60))
def test_splitter_memory_bounded_and_lines_nonempty(pieces):
    sp = LineSplitter()
    for p in pieces:
        for line in sp.feed(p):
            assert line and b"\n" not in line
            assert len(line) <= 2 * 512 + len(b" [truncated]")
        assert len(sp.slack) < 512
        assert not (sp.dropping and sp.slack)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab\n", max_size=100).map(str.encode), max_size=30))
def test_short_lines_roundtrip(pieces):
    """Without long lines, splitting equals splitting the concatenation."""
    sp = LineSplitter()
    got = []
    for p in pieces:
        got += sp.feed(p)
    whole = b"".join(pieces)
    expected = [x for x in whole.split(b"\n")[:-1] if x]
    if all(len(x) < 400 for x in whole.split(b"\n")):
        assert got == expected


# ----------------------------------------------------------------------- ring

def ts(i: int) -> Ptime:
    return Ptime(1_700_000_000 + i, 0)


def full_ring(extra: int = 100) -> Ring:
    r = Ring()
    for i in range(RING_SIZE + extra):
        r.write((ts(i), b"%d" % i))
    return r


def test_ring_keeps_last_1024():
    r = full_ring()
    assert len(r) == RING_SIZE
    last = r.read_last(RING_SIZE)
    assert [x[1] for x in last] == [b"%d" % i for i in range(100, RING_SIZE + 100)]


def test_count_bounded_no_repetition():
    r = full_ring()
    got = r.read_last(5000)
    assert len(got) == RING_SIZE and len({x[1] for x in got}) == RING_SIZE


def test_count_zero_and_negative_give_nothing():
    r = full_ring()
    assert r.read_last(0) == []
    assert r.read_last(-1) == []
    assert r.read_last(-(1 << 62)) == []


def test_count_partial_ring():
    r = Ring()
    for i in range(3):
        r.write((ts(i), b"%d" % i))
    assert [x[1] for x in r.read_last(2)] == [b"1", b"2"]
    assert [x[1] for x in r.read_last(20)] == [b"0", b"1", b"2"]


def test_since_never_wraps():
    r = full_ring()
    assert len(r.read_history(Ptime(0, 0))) == RING_SIZE
    got = r.read_history(ts(RING_SIZE + 97))
    assert [x[1] for x in got] == [b"%d" % i for i in (RING_SIZE + 97, RING_SIZE + 98, RING_SIZE + 99)]
    assert r.read_history(ts(10 ** 6)) == []


@given(st.integers(min_value=0, max_value=3000), st.integers(min_value=-5000, max_value=5000))
@settings(max_examples=100, deadline=None)
def test_ring_read_last_model(writes, n):
    r = Ring()
    for i in range(writes):
        r.write((ts(i), b"%d" % i))
    model = list(range(writes))[-RING_SIZE:]
    expected = model[-n:] if n > 0 else []
    assert [int(x[1]) for x in r.read_last(n)] == expected[-RING_SIZE:]


# ---------------------------------------------------------------------- state

class Sub:
    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return f"Sub({self.tag})"


def test_add_new_path_and_reuse_ring():
    s: ConsoleState[Sub] = ConsoleState()
    ring, closed = s.add(N("a:x"), 2)
    assert closed == []
    s.output(N("a:x"), ring, [b"one"], ts(0))
    s.finished(N("a:x"))
    ring2, _ = s.add(N("a:x"), 2)
    assert ring2 is ring and ring.read_last(10)[0][1] == b"one"
    assert s.console(N("a:x")).active


def test_drop_smallest_inactive_when_over_n():
    s: ConsoleState[Sub] = ConsoleState()
    sub = Sub("old")
    for lbl in ("c", "b"):
        s.add(N("p:" + lbl), 2)
        s.finished(N("p:" + lbl))
    assert set(s.paths[("p",)].consoles) == {"b", "c"}  # 2 <= n: nothing dropped
    s.subscribe(N("p:b"), 5, sub, count=1)
    _, closed = s.add(N("p:a"), 2)  # 3 > n: one inactive goes
    assert closed == [sub]  # b was the smallest inactive one, its subscriber goes
    assert set(s.paths[("p",)].consoles) == {"a", "c"}


def test_nothing_inactive_keeps_all():
    logs = []
    s: ConsoleState[Sub] = ConsoleState(log=logs.append)
    for lbl in ("a", "b", "c"):
        s.add(N("p:" + lbl), 0)
    assert len(s.paths[("p",)].consoles) == 3
    assert any("nothing inactive" in x for x in logs)


def test_subscribe_unknown_waits_then_gets_ring():
    s: ConsoleState[Sub] = ConsoleState()
    sub = Sub(1)
    r = s.subscribe(N("q:vm"), 5, sub, count=10)
    assert (r.reply, r.history, r.to_close) == ("waiting for VM", [], [])
    assert s.paths[("q",)].n == 1
    ring, _ = s.add(N("q:vm"), 3)
    assert s.output(N("q:vm"), ring, [b"l"], ts(1)) == [(5, sub)]
    r2 = s.subscribe(N("q:vm"), 4, Sub(2), count=10)
    assert r2.reply == "subscribed" and [x[1] for x in r2.history] == [b"l"]


def test_subscriber_limit_off_by_one_reproduced():
    s: ConsoleState[Sub] = ConsoleState(max_subscribers=2)
    s.add(N("vm"), 1)
    subs = [Sub(i) for i in range(5)]
    closed = []
    for sub in subs:
        closed += s.subscribe(N("vm"), 5, sub, count=0).to_close
    # max 2 -> up to 3 concurrent; the oldest ones were closed
    assert closed == [subs[0], subs[1]]
    assert [x for _, x in s.console(N("vm")).subscribers] == [subs[4], subs[3], subs[2]]


def test_unsubscribe_removes_empty_waiting_entries():
    s: ConsoleState[Sub] = ConsoleState()
    sub = Sub(1)
    s.subscribe(N("w:vm"), 5, sub, count=1)
    s.unsubscribe(N("w:vm"), sub)
    assert s.paths == {}


def test_history_count_and_since_bounded_through_state():
    s: ConsoleState[Sub] = ConsoleState()
    ring, _ = s.add(N("vm"), 1)
    for i in range(RING_SIZE + 10):
        ring.write((ts(i), b"x"))
    assert len(s.subscribe(N("vm"), 5, Sub(0), count=-3).history) == 0
    assert len(s.subscribe(N("vm"), 5, Sub(1), count=1 << 62).history) == RING_SIZE
    assert len(s.subscribe(N("vm"), 5, Sub(2), since=Ptime(0, 0)).history) == RING_SIZE


def test_list_inactive_relative_names_and_order():
    s: ConsoleState[Sub] = ConsoleState()
    for name in ("a:x", "a:y", "a:b:z", "a:c:w", "top", "a:act"):
        s.add(N(name), 10)
    for name in ("a:x", "a:y", "a:b:z", "a:c:w", "top"):
        s.finished(N(name))
    s.subscribe(N("a:nobuf"), 5, Sub(0), count=1)  # no ring: not listed
    assert [str(n) for n in s.list_inactive(("a",))] == [":y", ":x", "c:w", "b:z"]
    assert [str(n) for n in s.list_inactive(())] == [":top", "a:y", "a:x", "a:c:w", "a:b:z"]
    assert s.list_inactive(("zz",)) == []
