"""The state file: every old format upstream wrote, read; the current one written."""

import pytest

from albatross.core import BlockDevice, FailBehaviour, NetDevice, Policy, UnikernelConfig
from albatross.errors import DecodeError
from albatross.policy.names import Name
from albatross.wire.der import (
    NULL_TLV, enc_bool, enc_int, enc_octets, enc_utf8, explicit, seq, seq_of, set_of,
)
from albatross.wire.state import State, decode_state, encode_state

SOLO5 = explicit(0, NULL_TLV)
QUIT = explicit(0, NULL_TLV)


def entries(*pairs):
    return seq_of([seq(enc_utf8(n), v) for n, v in pairs])


def test_v0_tag_1():
    cfg = seq(enc_int(3), enc_int(64), enc_utf8("disk"), seq_of([enc_utf8("service")]),
              explicit(2, enc_octets(b"zz")), seq_of([enc_utf8("-l"), enc_utf8("debug")]))
    st = decode_state(explicit(1, entries(("foo.hello", cfg))))
    (name, c), = st.unikernels
    assert name == Name((), "foo.hello")
    assert c == UnikernelConfig(compressed=True, image=b"zz", cpuids=frozenset({3}), memory=64,
                                block_devices=(BlockDevice("disk"),), bridges=(NetDevice("service"),),
                                argv=("-l", "debug"))
    assert st.policies == ()


def test_v1_tag_0():
    cfg = seq(SOLO5, enc_bool(False), enc_octets(b"img"), explicit(1, set_of([enc_int(2)])),
              enc_int(1), enc_int(10), explicit(0, set_of([enc_utf8("blk")])),
              explicit(1, set_of([enc_utf8("net")])))
    (name, c), = decode_state(explicit(0, entries(("bar:x", cfg)))).unikernels
    assert name == Name(("bar",), "x")
    assert c.fail_behaviour == FailBehaviour(True, frozenset({2}))
    assert c.block_devices == (BlockDevice("blk"),) and c.bridges == (NetDevice("net"),)
    assert c.add_name and c.startup is None and c.cpuids == frozenset({1}) and c.numcpus == 1


def test_v2_tag_2_bridge_sequence():
    cfg = seq(SOLO5, enc_bool(False), enc_octets(b""), QUIT, enc_int(0), enc_int(10),
              explicit(1, seq_of([seq(enc_utf8("service"), enc_utf8("br0")), seq(enc_utf8("mgmt"))])))
    (_, c), = decode_state(explicit(2, entries((":u", cfg)))).unikernels
    assert c.bridges == (NetDevice("service", "br0"), NetDevice("mgmt"))


def _v3(mac=False):
    bridge = [enc_utf8("service"), enc_utf8("br0")] + ([enc_octets(b"\x00\xde\xad\xbe\xef\x00")] if mac else [])
    return seq(SOLO5, enc_bool(False), enc_octets(b"i"), QUIT, enc_int(2), enc_int(10),
               explicit(1, set_of([seq(*bridge)])), explicit(2, seq_of([enc_utf8("a")])))


def test_v3_and_v3_with_policies():
    (_, c), = decode_state(explicit(3, entries(("u", _v3(mac=True))))).unikernels
    assert c.bridges == (NetDevice("service", "br0", b"\x00\xde\xad\xbe\xef\x00"),)
    pol = seq(seq_of([enc_int(0)]), enc_int(1), enc_int(512), seq_of([]))
    st = decode_state(explicit(4, seq(entries(("u", _v3())), entries((":", pol)))))
    assert st.policies == ((Name(), Policy(1, frozenset({0}), 512, None, frozenset())),)


def test_v4_tag_5():
    cfg = seq(SOLO5, enc_bool(True), enc_octets(b"i"), enc_int(7), enc_bool(False), QUIT, enc_int(1), enc_int(10))
    st = decode_state(explicit(5, seq(entries(("a:u", cfg)), entries())))
    (_, c), = st.unikernels
    assert (c.startup, c.add_name, c.compressed, c.cpuids) == (7, False, True, frozenset({1}))


def test_current_format_round_trip_in_trie_order():
    cfg = UnikernelConfig(image=b"x", memory=16)
    pol = Policy(2, frozenset({0}), 64, 10, frozenset({"service"}))
    st = State(((Name(("b",), "z"), cfg), (Name((), "a"), cfg), (Name(("a", "b"), "y"), cfg), (Name(("a",), "x"), cfg)),
               ((Name(("b",)), pol), (Name(), pol), (Name(("a", "b")), pol), (Name(("a",)), pol)))
    data = encode_state(st)
    assert data[0] == 0xA6
    back = decode_state(data)
    assert [n.to_string() for n, _ in back.unikernels] == [":a", "a:b:y", "a:x", "b:z"]
    assert [n.to_string() for n, _ in back.policies] == [":", "a:", "a:b:", "b:"]
    assert encode_state(back) == data


@pytest.mark.parametrize("data,msg", [
    (explicit(7, NULL_TLV), "not supported"),
    (explicit(9, NULL_TLV), "unknown format"),
    (explicit(6, seq(seq_of([]), seq_of([]))) + b"\x00", "trailing"),
    (b"", "end of input"),
])
def test_bad_state_files(data, msg):
    with pytest.raises(DecodeError, match=msg):
        decode_state(data)


def test_invalid_and_duplicate_names_are_errors():
    cfg = encode_state(State(((Name((), "u"), UnikernelConfig()),)))
    bad = cfg.replace(b":u", b":_")
    with pytest.raises(DecodeError, match="invalid name"):
        decode_state(bad)
    dup = explicit(3, entries(("u", _v3()), (":u", _v3())))
    with pytest.raises(DecodeError, match="duplicate"):
        decode_state(dup)
