"""The codec against the hand-derived examples of wire.md §8 and its strictness rules."""

import dataclasses

import pytest

from albatross.core import (
    BlockDevice, FailBehaviour, NetDevice, Policy, Ptime, UnikernelConfig,
)
from albatross.errors import DecodeError, EncodeError, FrameError
from albatross.policy.names import Name
from albatross.wire import FrameReader, END, frame
from albatross.wire import messages as m
from albatross.wire.codec import (
    decode_cert_extension, decode_wire, encode_cert_extension, encode_wire,
)
from albatross.wire.der import enc_int, enc_time, parse_generalized_time, set_of


def H(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def wire(name, payload, seq=0):
    return m.Wire(m.Header(Name.of_string(name), seq), payload)


# ----------------------------------------------------------- wire.md §8

def test_policy_add_example_8_1():
    pol = Policy(2, frozenset({0}), 512, None, frozenset({"service"}))
    body = encode_wire(wire("a:", m.PolicyAdd(pol), seq=1))
    assert frame(body) == H("""00 00 00 34 30 32 30 11 02 01 05 04 08 00 00 00 00 00 00 00 01 0C 02 61 3A
        A0 1D A4 1B A1 19 30 17 30 03 02 01 00 02 01 02 02 02 02 00
        30 09 0C 07 73 65 72 76 69 63 65""")


def test_reply_example_8_2():
    body = encode_wire(wire("a:", m.String("added policy"), seq=1))
    assert frame(body) == H("""00 00 00 27 30 25 30 11 02 01 05 04 08 00 00 00 00 00 00 00 01 0C 02 61 3A
        A1 10 A1 0E 0C 0C 61 64 64 65 64 20 70 6F 6C 69 63 79""")


def test_cert_extension_example_8_3():
    assert encode_cert_extension(m.UnikernelInfoCmd()) == H("30 09 02 01 05 A3 04 B3 02 05 00")
    assert decode_cert_extension(H("30 09 02 01 05 A3 04 B3 02 05 00")) == (5, m.UnikernelInfoCmd())


def test_console_subscribe_example_8_4():
    body = H("""30 20 30 13 02 01 05 04 08 00 00 00 00 00 00 00 00 0C 04 3A 66 6F 6F
        A0 09 A0 07 A2 05 A1 03 02 01 14""")
    w = decode_wire(body)
    assert w.header.name == Name((), "foo")
    assert w.payload == m.ConsoleSubscribe(count=20)
    # "foo" without the leading colon is the same name and encodes canonically
    assert encode_wire(wire("foo", m.ConsoleSubscribe(count=20))) == body


def test_generalized_time_example_8_5():
    t = Ptime.of_datetime(__import__("datetime").datetime(2023, 3, 12, 23, 42, 15))
    inner = encode_wire(wire(":", m.ConsoleSubscribe(since=t)))
    assert H("A0 15 A2 13 A0 11 18 0F 32 30 32 33 30 33 31 32 32 33 34 32 31 35 5A") in inner


# ------------------------------------------------------- time encoding

@pytest.mark.parametrize("frac_ps,text", [
    (0, b"20240102030405Z"),
    (500_000_000_000, b"20240102030405.500Z"),     # trailing zeros kept
    (123_456_789_000, b"20240102030405.123Z"),     # truncated, not rounded
    (999_999_999_999, b"20240102030405.999Z"),
    (1, b"20240102030405.000Z"),                   # below 1 ms but non-zero
])
def test_time_encoding(frac_ps, text):
    secs = 1704164645  # 2024-01-02T03:04:05Z
    assert enc_time(Ptime(secs, frac_ps)) == bytes((0x18, len(text))) + text


@pytest.mark.parametrize("text,secs,ms", [
    (b"20240102030405.5Z", 1704164645, 5),         # digits read as an integer of ms
    (b"20240102030405.50Z", 1704164645, 50),
    (b"20240102030405.500Z", 1704164645, 500),
    (b"2024010203Z", 1704164400, 0),               # minutes and seconds optional
    (b"202401020304", 1704164640, 0),              # no zone = UTC
    (b"20240102030405+0100", 1704164645 - 3600, 0),
])
def test_time_decoding_is_lenient_like_upstream(text, secs, ms):
    assert parse_generalized_time(text) == Ptime(secs, ms * 1_000_000_000)


@pytest.mark.parametrize("text", [b"20240102030405.1234Z", b"2024", b"20241302030405Z", b"20240230000000Z", b"x"])
def test_bad_times_rejected(text):
    with pytest.raises(DecodeError):
        parse_generalized_time(text)


# ------------------------------------------------------------ integers

def test_set_of_integers_is_in_der_order():
    assert set_of([enc_int(x) for x in [1, 5, 200, 300, -1]]) == H(
        "31 11 02 01 01 02 01 05 02 01 FF 02 02 00 C8 02 02 01 2C")


def test_int_boundaries():
    assert enc_int((1 << 62) - 1) == H("02 08 3F FF FF FF FF FF FF FF")
    assert enc_int(-(1 << 62)) == H("02 08 C0 00 00 00 00 00 00 00")
    assert enc_int(127) == H("02 01 7F")
    assert enc_int(128) == H("02 02 00 80")
    assert enc_int(-128) == H("02 01 80")
    assert enc_int(-129) == H("02 02 FF 7F")
    with pytest.raises(EncodeError):
        enc_int(1 << 62)


def _block_add(content: str) -> bytes:
    # header (5, 0, ":d") + command [5] block [1] add <INTEGER content>
    integer = H("02") + bytes((len(H(content)),)) + H(content)
    cmd = H("A1") + bytes((len(integer),)) + integer
    cmd = H("A5") + bytes((len(cmd),)) + cmd
    cmd = H("A0") + bytes((len(cmd),)) + cmd
    header = H("30 11 02 01 05 04 08 00 00 00 00 00 00 00 00 0C 02 3A 64")
    body = header + cmd
    return H("30") + bytes((len(body),)) + body


def test_integer_strictness():
    assert decode_wire(_block_add("64")).payload == m.BlockAdd(100)
    for bad in ["00 64", "FF FF", "", "40 00 00 00 00 00 00 00", "01 00 00 00 00 00 00 00 00"]:
        with pytest.raises(DecodeError):
            decode_wire(_block_add(bad))


def test_int32_wraps_and_int64_octets():
    from albatross.core import Ifdata, Rusage, Stats, Timeval
    st = Stats(Rusage(Timeval(1, 2), Timeval(3, 4)), ifdata=(Ifdata("s", flags=0x80000000 - (1 << 32)),))
    body = encode_wire(wire(":x", m.StatsData(st)))
    assert H("02 04 80 00 00 00") in body   # sign-extended int32
    assert decode_wire(body).payload == m.StatsData(st)


# ------------------------------------------------------------ strictness

GOOD = encode_wire(wire(":foo", m.ConsoleSubscribe(count=20)))


def test_trailing_bytes_rejected():
    with pytest.raises(DecodeError, match="trailing"):
        decode_wire(GOOD + b"\x00")


def test_wrong_version_rejected():
    bad = GOOD.replace(H("02 01 05"), H("02 01 04"), 1)
    with pytest.raises(DecodeError, match="unknown version number 0x4"):
        decode_wire(bad)


def test_bad_name_rejected():
    bad = GOOD.replace(b":foo", b":f_o")
    with pytest.raises(DecodeError, match="name"):
        decode_wire(bad)


def test_indefinite_and_nonminimal_lengths_rejected():
    with pytest.raises(DecodeError, match="indefinite"):
        decode_wire(H("30 80") + GOOD[2:] + H("00 00"))
    with pytest.raises(DecodeError, match="non-minimal"):
        decode_wire(H("30 81") + GOOD[1:])


def test_log_alternatives_rejected():
    header = H("30 11 02 01 05 04 08 00 00 00 00 00 00 00 00 0C 02 3A 64")
    for payload in (H("A0 04 A2 02 05 00"), H("A3 04 A2 02 05 00")):
        body = header + payload
        with pytest.raises(DecodeError, match="log"):
            decode_wire(H("30") + bytes((len(body),)) + body)


def test_unknown_alternative_rejected():
    header = H("30 11 02 01 05 04 08 00 00 00 00 00 00 00 00 0C 02 3A 64")
    body = header + H("A0 04 A3 02 05 00")  # unikernel [3] without inner choice
    with pytest.raises(DecodeError):
        decode_wire(H("30") + bytes((len(body),)) + body)
    body = header + H("A0 06 A3 04 B6 02 05 00")  # unikernel [22] does not exist
    with pytest.raises(DecodeError, match="unknown alternative"):
        decode_wire(H("30") + bytes((len(body),)) + body)


def test_short_int64_rejected():
    bad = GOOD.replace(H("04 08 00 00 00 00 00 00 00 00"), H("04 07 00 00 00 00 00 00 00"))
    bad = H("30") + bytes((len(bad) - 2,)) + bad[2:]
    with pytest.raises(DecodeError):
        decode_wire(bad)


def test_long_int64_ignores_extra_bytes_like_upstream():
    body = GOOD.replace(H("30 13 02 01 05 04 08 00 00 00 00 00 00 00 00"),
                        H("30 14 02 01 05 04 09 00 00 00 00 00 00 00 07 FF"))
    body = H("30") + bytes((len(body) - 2,)) + body[2:]
    assert decode_wire(body).header.sequence == 7


def test_bad_mac_rejected():
    from albatross.wire.codec import _dec_bridge
    from albatross.wire.der import Reader, enc_octets, enc_utf8, seq
    with pytest.raises(DecodeError, match="bad mac address"):
        _dec_bridge(Reader(seq(enc_utf8("service"), enc_octets(b"\x00" * 5))))
    with pytest.raises(EncodeError, match="bad mac address"):
        encode_wire(wire(":u", m.UnikernelCreate(UnikernelConfig(bridges=(NetDevice("s", None, b"\x00"),)))))


# --------------------------------------------------- values round trip

def test_opaque_utf8_round_trips():
    line = b"\xff\xfe not utf-8 \x1b[0m"
    w = wire(":u", m.ConsoleData(Ptime(1, 0), line))
    assert decode_wire(encode_wire(w)).payload.line == line
    argv = ("\udcffbyte",)
    cfg = UnikernelConfig(argv=argv)
    body = encode_wire(wire(":u", m.UnikernelCreate(cfg)))
    assert b"\xffbyte" in body
    assert decode_wire(body).payload.config.argv == argv


def test_config_optionals():
    cfg = UnikernelConfig(
        image=b"x" * 70000, compressed=False,
        fail_behaviour=FailBehaviour(True, frozenset({0, 2})), startup=7,
        cpuids=frozenset({1, 0}), memory=64, argv=(),
        block_devices=(BlockDevice("storage", "disk", 4096), BlockDevice("a")),
        bridges=(NetDevice("service"), NetDevice("b", "br0", b"\x00\x11\x22\x33\x44\x55")),
        numcpus=2, linux_boot_partition="2",
    )
    body = encode_wire(wire(":u", m.UnikernelCreate(cfg, force=True)))
    assert H("A2 02 30 00") in body  # an empty argv is kept, not dropped
    back = decode_wire(body).payload
    assert back.force and back.config.image == cfg.image
    # SET OF members come back in DER order, as upstream
    assert [b.name for b in back.config.block_devices] == ["a", "storage"]
    assert back.config == dataclasses.replace(
        cfg, block_devices=back.config.block_devices, bridges=back.config.bridges)
    assert set(back.config.bridges) == set(cfg.bridges)


def test_empty_exit_code_set_means_any():
    cfg = UnikernelConfig(fail_behaviour=FailBehaviour(True, frozenset()))
    body = encode_wire(wire(":u", m.UnikernelCreate(cfg)))
    assert H("A1 02 31 00") in body
    assert decode_wire(body).payload.config.fail_behaviour == FailBehaviour(True, None)


# --------------------------------------------------------------- framing

def test_frame_reader_splits_and_reassembles():
    r = FrameReader()
    data = frame(b"abc") + frame(b"") + frame(b"xyz" * 100)
    for i in range(len(data)):
        r.feed(data[i:i + 1])
    assert r.next_frame() == b"abc"
    assert r.next_frame() is END
    assert r.next_frame() == b"xyz" * 100
    assert r.next_frame() is None


def test_frame_reader_rejects_oversized_without_allocating():
    r = FrameReader(max_size=1024)
    r.feed(b"\x7f\xff\xff\xff")
    with pytest.raises(FrameError, match="exceeds"):
        r.next_frame()
    assert r.buffered() == 4
    r2 = FrameReader()
    r2.feed(b"\xff\xff\xff\xfe")
    with pytest.raises(FrameError, match="negative"):
        r2.next_frame()
