"""Property tests: random valid values round-trip; random bytes never crash the decoder."""

import dataclasses

from hypothesis import given, settings, strategies as st

from albatross.core import (
    BlockDevice, BlockInfo, FailBehaviour, Ifdata, KinfoMem, NetDevice, NetInfo,
    Policy, Ptime, Rusage, Stats, Timeval, UnikernelArguments, UnikernelConfig,
    UnikernelInfo, MAX_INT, MIN_INT,
)
from albatross.errors import DecodeError
from albatross.policy.names import Name
from albatross.wire import codec, jsonform as J
from albatross.wire import messages as m
from albatross.wire.state import State, decode_state, encode_state

ints = st.integers(MIN_INT, MAX_INT)
small = st.integers(0, 100000)
int64 = st.integers(-(1 << 63), (1 << 63) - 1)
int32 = st.integers(-(1 << 31), (1 << 31) - 1)
text = st.text(max_size=12)
raw_text = st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape"))
labels = st.from_regex(r"[a-z0-9.][a-z0-9.\-]{0,10}", fullmatch=True)
paths = st.lists(labels, max_size=3).map(tuple)
names = st.builds(Name, paths, st.one_of(st.none(), labels))
unikernel_names = st.builds(Name, paths, labels)
path_names = paths.map(Name.of_path)
times = st.builds(Ptime, st.integers(-62135596800, 253402300799), st.integers(0, 999) .map(lambda ms: ms * 1_000_000_000))
macs = st.binary(min_size=6, max_size=6)
cpuids = st.frozensets(st.integers(0, 300), max_size=4)
fails = st.one_of(st.just(FailBehaviour()),
                  st.builds(FailBehaviour, st.just(True), st.one_of(st.none(), st.frozensets(st.integers(-5, 300), min_size=1, max_size=4))))
blocks = st.lists(st.builds(BlockDevice, raw_text, st.one_of(st.none(), raw_text),
                            st.one_of(st.none(), st.sampled_from([512, 4096]))), max_size=3).map(tuple)
bridges = st.lists(st.builds(NetDevice, raw_text, st.one_of(st.none(), raw_text), st.one_of(st.none(), macs)),
                   max_size=3).map(tuple)
argvs = st.one_of(st.none(), st.lists(raw_text, max_size=3).map(tuple))

configs = st.builds(
    UnikernelConfig, typ=st.sampled_from(["solo5", "bhyve"]), compressed=st.booleans(),
    image=st.binary(max_size=64), fail_behaviour=fails, startup=st.one_of(st.none(), ints),
    add_name=st.booleans(), cpuids=cpuids, memory=ints, block_devices=blocks, bridges=bridges,
    argv=argvs, numcpus=ints, linux_boot_partition=st.one_of(st.none(), raw_text))
arguments = st.builds(
    UnikernelArguments, fail_behaviour=fails, startup=st.one_of(st.none(), ints), add_name=st.booleans(),
    cpuids=cpuids, memory=ints, block_devices=blocks, bridges=bridges, argv=argvs, numcpus=ints,
    linux_boot_partition=st.one_of(st.none(), raw_text))
policies = st.builds(Policy, ints, cpuids, ints, st.one_of(st.none(), ints), st.frozensets(raw_text, max_size=3))
infos = st.builds(
    UnikernelInfo, typ=st.sampled_from(["solo5", "bhyve"]), fail_behaviour=fails,
    startup=st.one_of(st.none(), ints), cpuids=cpuids, memory=ints,
    block_devices=st.lists(st.builds(BlockInfo, raw_text, raw_text, ints, ints), max_size=2).map(tuple),
    bridges=st.lists(st.builds(NetInfo, raw_text, raw_text, macs), max_size=2).map(tuple),
    argv=argvs, digest=st.binary(max_size=32), started=times, numcpus=ints,
    linux_boot_partition=st.one_of(st.none(), raw_text))
timevals = st.builds(Timeval, int64, ints)
stats = st.builds(
    Stats,
    st.builds(Rusage, timevals, timevals, *[int64] * 14),
    st.one_of(st.none(), st.builds(KinfoMem, *[int64] * 6, ints, timevals)),
    st.one_of(st.none(), st.lists(st.tuples(raw_text, int64), max_size=3).map(tuple)),
    st.lists(st.builds(Ifdata, raw_text, *[int32] * 5, *[int64] * 12), max_size=2).map(tuple),
)

commands = st.one_of(
    st.builds(m.ConsoleAdd, ints),
    st.builds(lambda t: m.ConsoleSubscribe(since=t), times),
    st.builds(lambda c: m.ConsoleSubscribe(count=c), ints),
    st.just(m.ConsoleListInactive()),
    st.builds(m.StatsAdd, raw_text, ints, st.lists(st.tuples(raw_text, raw_text), max_size=3).map(tuple)),
    st.sampled_from([m.StatsRemove(), m.StatsSubscribe(), m.StatsInitial(), m.UnikernelInfoCmd(),
                     m.OldUnikernelInfo4(), m.OldUnikernelInfo5(), m.UnikernelDestroy(),
                     m.PolicyInfoCmd(), m.PolicyRemove(), m.BlockInfoCmd(), m.BlockRemove()]),
    st.builds(m.UnikernelCreate, configs, st.booleans()),
    st.builds(m.UnikernelRestart, st.one_of(st.none(), arguments)),
    st.builds(m.UnikernelGet, ints),
    st.builds(m.PolicyAdd, policies),
    st.builds(m.BlockAdd, ints), st.builds(m.BlockSet, st.booleans()), st.builds(m.BlockDump, ints),
    st.builds(m.OldBlockDump, ints),
    st.builds(m.OldBlockAdd, ints, st.booleans(), st.one_of(st.none(), st.binary(max_size=20))),
    st.builds(m.OldBlockSet, st.booleans(), st.binary(max_size=20)),
)


def _one_cpu_info(i: UnikernelInfo) -> UnikernelInfo:
    return dataclasses.replace(i, cpuids=frozenset({min(i.cpuids, default=0)}))


replies = st.one_of(
    st.just(m.Empty()), st.builds(m.String, raw_text),
    st.builds(m.Policies, st.lists(st.tuples(names, policies), max_size=3).map(tuple)),
    st.builds(m.UnikernelInfos, st.lists(st.tuples(names, infos), max_size=2).map(tuple)),
    st.builds(lambda xs, v: m.UnikernelInfos(tuple((n, _one_cpu_info(i)) for n, i in xs), v),
              st.lists(st.tuples(names, infos), max_size=2),
              st.sampled_from(["Old_unikernel_info4", "Old_unikernel_info5"])),
    st.builds(m.UnikernelImage, st.booleans(), st.binary(max_size=40)),
    st.builds(m.BlockDevices, st.lists(st.tuples(names, ints, st.booleans()), max_size=3).map(tuple)),
    st.builds(m.OldBlockDeviceImage, st.booleans(), st.binary(max_size=40)),
    st.builds(m.BlockDeviceImage, st.booleans()),
    st.builds(m.Consoles, st.lists(names, max_size=3).map(tuple)),
)
datas = st.one_of(
    st.builds(m.ConsoleData, times, st.binary(max_size=40)),
    st.builds(m.StatsData, stats),
    st.builds(m.BlockData, st.one_of(st.none(), st.binary(max_size=40))),
)
payloads = st.one_of(commands, replies, st.builds(m.Failure, raw_text), datas)
wires = st.builds(m.Wire, st.builds(m.Header, names, int64), payloads)


@settings(max_examples=400, deadline=None)
@given(wires)
def test_wire_round_trip(w):
    body = codec.encode_wire(w)
    back = codec.decode_wire(body)
    assert codec.encode_wire(back) == body          # byte-exact after a round trip
    assert J.wire_of_json(J.wire_to_json(back)) == back  # the JSON form is lossless
    if not _has_set_of_lists(w.payload):
        assert _normalise(back) == _normalise(w)


def _has_set_of_lists(p) -> bool:
    cfg = getattr(p, "config", None) or getattr(p, "arguments", None)
    if cfg is not None and (len(cfg.block_devices) > 1 or len(cfg.bridges) > 1):
        return True
    if isinstance(p, m.UnikernelInfos):
        return any(len(i.block_devices) > 1 or len(i.bridges) > 1 for _, i in p.unikernels)
    return False


def _normalise(w):
    # old info variants carry no startup (info4), numcpus or boot partition
    p = w.payload
    if isinstance(p, m.UnikernelInfos) and p.variant != "Unikernel_info":
        drop = {"numcpus": 1, "linux_boot_partition": None}
        if p.variant == "Old_unikernel_info4":
            drop["startup"] = None
        p = m.UnikernelInfos(tuple((n, dataclasses.replace(i, **drop)) for n, i in p.unikernels), p.variant)
        return m.Wire(w.header, p)
    return w


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(unikernel_names, configs), max_size=4, unique_by=lambda e: e[0].labels()),
       st.lists(st.tuples(path_names, policies), max_size=4, unique_by=lambda e: e[0].labels()))
def test_state_round_trip(unikernels, pols):
    s = State(tuple(unikernels), tuple(pols))
    data = encode_state(s)
    back = decode_state(data)
    assert encode_state(back) == data
    assert [n for n, _ in back.unikernels] == sorted((n for n, _ in unikernels), key=Name.labels)


@settings(max_examples=200, deadline=None)
@given(commands)
def test_cert_extension_round_trip(cmd):
    der = codec.encode_cert_extension(cmd)
    v, back = codec.decode_cert_extension(der)
    assert v == 5 and codec.encode_cert_extension(back) == der


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_value_or_decode_error(data):
    for fn in (codec.decode_wire, codec.decode_cert_extension, decode_state):
        try:
            fn(data)
        except DecodeError as e:
            assert e.message


@settings(max_examples=1500, deadline=None)
@given(wires, st.data())
def test_mutated_messages_only_value_or_decode_error(w, data):
    body = bytearray(codec.encode_wire(w))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if not body:
            break
        i = data.draw(st.integers(0, len(body) - 1))
        if op == "flip":
            body[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del body[i:i + data.draw(st.integers(1, 8))]
        else:
            body[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        back = codec.decode_wire(bytes(body))
    except DecodeError as e:
        assert e.message
    else:
        codec.encode_wire(back)  # whatever decodes can be encoded again
