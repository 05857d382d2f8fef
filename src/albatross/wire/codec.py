"""Encoder and decoder of albatross's ASN.1 grammar (wire version 5).

``encode_wire``/``decode_wire`` handle a whole message (the body of a
frame), ``encode_cert_extension``/``decode_cert_extension`` the value of
the albatross X.509 extension.  The state file lives in :mod:`.state`.

Encoders produce exactly what upstream produces (always-present optionals,
DER-sorted SET OF, three-digit millisecond fractions); decoders accept
every form upstream accepts, including the old configuration variants.
"""

from __future__ import annotations

from ..core import (
    BlockDevice, BlockInfo, FailBehaviour, Ifdata, IFDATA_INT32_FIELDS,
    IFDATA_INT64_FIELDS, KINFO_INT64_FIELDS, KinfoMem, NetDevice, NetInfo,
    Policy, Rusage, RUSAGE_INT64_FIELDS, Stats, Timeval, UnikernelArguments,
    UnikernelConfig, UnikernelInfo, EPOCH,
)
from ..errors import AlbatrossError, DecodeError, EncodeError
from ..policy.names import Name
from . import der
from .der import (
    NULL_TLV, Reader, enc_bool, enc_int, enc_int32, enc_int64, enc_octets,
    enc_time, enc_utf8, explicit, seq, seq_of, set_of,
)
from .messages import (
    BlockAdd, BlockData, BlockDeviceImage, BlockDevices, BlockDump,
    BlockInfoCmd, BlockRemove, BlockSet, Cmd, ConsoleAdd, ConsoleData,
    ConsoleListInactive, Consoles, ConsoleSubscribe, Data, Empty, Failure,
    Header, OldBlockAdd, OldBlockDeviceImage, OldBlockDump, OldBlockSet,
    OldUnikernelInfo4, OldUnikernelInfo5, Policies, PolicyAdd, PolicyInfoCmd,
    PolicyRemove, Reply, StatsAdd, StatsData, StatsInitial, StatsRemove,
    StatsSubscribe, String, UnikernelCreate, UnikernelDestroy, UnikernelGet,
    UnikernelImage, UnikernelInfoCmd, UnikernelInfos, UnikernelRestart, Wire,
)

from .. import WIRE_VERSION


def _name(r: Reader, what: str = "name") -> Name:
    s = r.utf8(what)
    try:
        return Name.of_string(s)
    except AlbatrossError as e:
        raise DecodeError(f"{what}: {e.message}") from None


def _enc_name(n: Name) -> bytes:
    return enc_utf8(n.to_string())


def _expect_choice(r: Reader, what: str) -> tuple[int, Reader]:
    tag, inner = r.any()
    if tag & 0xE0 != 0xA0:
        raise DecodeError(f"{what}: expected a context tag, got 0x{tag:02x}")
    return tag & 0x1F, inner


def _single(inner: Reader, what: str, fn):
    v = fn(inner)
    inner.finish(what)
    return v


def _null_in(inner: Reader, what: str) -> None:
    inner.null(what)
    inner.finish(what)


# ------------------------------------------------------------------ policy

def enc_policy(p: Policy) -> bytes:
    parts = [
        seq_of([enc_int(c) for c in sorted(p.cpuids)]),
        enc_int(p.unikernels),
        enc_int(p.memory),
    ]
    if p.block is not None:
        parts.append(enc_int(p.block))
    parts.append(seq_of([enc_utf8(b) for b in sorted(p.bridges, key=der.to_bytes)]))
    return seq(*parts)


def dec_policy(r: Reader) -> Policy:
    s = r.expect(der.SEQUENCE, "policy")
    cr = s.expect(der.SEQUENCE, "policy cpuids")
    cpuids = []
    while not cr.at_end():
        cpuids.append(cr.int("cpuid"))
    unikernels = s.int("policy unikernels")
    memory = s.int("policy memory")
    block = s.int("policy block") if s.peek_tag() == der.INTEGER else None
    br = s.expect(der.SEQUENCE, "policy bridges")
    bridges = []
    while not br.at_end():
        bridges.append(br.utf8("bridge"))
    s.finish("policy")
    return Policy(unikernels, frozenset(cpuids), memory, block, frozenset(bridges))


# ------------------------------------------------------- unikernel configs

def _enc_typ(typ: str) -> bytes:
    if typ == "solo5":
        return explicit(0, NULL_TLV)
    if typ == "bhyve":
        return explicit(1, NULL_TLV)
    raise EncodeError(f"unknown typ {typ!r}")


def _dec_typ(r: Reader) -> str:
    n, inner = _expect_choice(r, "typ")
    _null_in(inner, "typ")
    if n == 0:
        return "solo5"
    if n == 1:
        return "bhyve"
    raise DecodeError(f"typ: unknown alternative [{n}]")


def _enc_fail(fb: FailBehaviour) -> bytes:
    if not fb.restart:
        return explicit(0, NULL_TLV)
    codes = fb.exit_codes or ()
    return explicit(1, set_of([enc_int(c) for c in codes]))


def _dec_fail(r: Reader) -> FailBehaviour:
    n, inner = _expect_choice(r, "fail behaviour")
    if n == 0:
        _null_in(inner, "fail behaviour")
        return FailBehaviour(False, None)
    if n == 1:
        s = inner.expect(der.SET, "exit codes")
        inner.finish("fail behaviour")
        codes = []
        while not s.at_end():
            codes.append(s.int("exit code"))
        return FailBehaviour(True, frozenset(codes) or None)
    raise DecodeError(f"fail behaviour: unknown alternative [{n}]")


def _enc_block_device(b: BlockDevice) -> bytes:
    parts = [enc_utf8(b.name)]
    if b.device is not None:
        parts.append(enc_utf8(b.device))
    if b.sector_size is not None:
        parts.append(enc_int(b.sector_size))
    return seq(*parts)


def _dec_block_device(r: Reader) -> BlockDevice:
    s = r.expect(der.SEQUENCE, "block device")
    name = s.utf8("block name")
    dev = s.utf8("block device name") if s.peek_tag() == der.UTF8STRING else None
    sector = s.int("sector size") if s.peek_tag() == der.INTEGER else None
    s.finish("block device")
    return BlockDevice(name, dev, sector)


def _enc_bridge(b: NetDevice) -> bytes:
    parts = [enc_utf8(b.name)]
    if b.bridge is not None:
        parts.append(enc_utf8(b.bridge))
    if b.mac is not None:
        if len(b.mac) != 6:
            raise EncodeError("bad mac address")
        parts.append(enc_octets(b.mac))
    return seq(*parts)


def _dec_mac(r: Reader) -> bytes:
    m = r.octets("mac")
    if len(m) != 6:
        raise DecodeError("bad mac address")
    return m


def _dec_bridge(r: Reader) -> NetDevice:
    s = r.expect(der.SEQUENCE, "bridge")
    name = s.utf8("netif")
    bridge = s.utf8("bridge") if s.peek_tag() == der.UTF8STRING else None
    mac = _dec_mac(s) if s.peek_tag() == der.OCTET_STRING else None
    s.finish("bridge")
    return NetDevice(name, bridge, mac)


def _dec_set_of(r: Reader, fn, what: str) -> list:
    s = r.expect(der.SET, what)
    out = []
    while not s.at_end():
        out.append(fn(s))
    return out


def _dec_seq_of(r: Reader, fn, what: str) -> list:
    s = r.expect(der.SEQUENCE, what)
    out = []
    while not s.at_end():
        out.append(fn(s))
    return out


def _enc_argv(argv) -> bytes:
    return explicit(2, seq_of([enc_utf8(a) for a in argv]))


def _dec_argv(r: Reader) -> tuple[str, ...]:
    return tuple(_dec_seq_of(r, lambda x: x.utf8("argument"), "arguments"))


class _Tail:
    """The tagged optional members [0]..[n] that end configs, args and infos."""

    def __init__(self, r: Reader):
        self.r = r

    def get(self, n: int) -> Reader | None:
        inner = self.r.optional(0xA0 + n)
        return inner


def _tagged(tail: _Tail, n: int, fn, what: str):
    inner = tail.get(n)
    if inner is None:
        return None
    v = fn(inner)
    inner.finish(what)
    return v


def _enc_devices_tail(blocks, bridges, argv) -> list[bytes]:
    parts = []
    if blocks:
        parts.append(explicit(0, set_of([_enc_block_device(b) for b in blocks])))
    if bridges:
        parts.append(explicit(1, set_of([_enc_bridge(b) for b in bridges])))
    if argv is not None:
        parts.append(_enc_argv(argv))
    return parts


def _dec_devices_tail(tail: _Tail):
    blocks = _tagged(tail, 0, lambda x: _dec_set_of(x, _dec_block_device, "block devices"), "block devices") or []
    bridges = _tagged(tail, 1, lambda x: _dec_set_of(x, _dec_bridge, "bridges"), "bridges") or []
    argv = _tagged(tail, 2, _dec_argv, "arguments")
    return blocks, bridges, argv


def _cpuids(cs) -> bytes:
    return set_of([enc_int(c) for c in cs])


def _dec_cpuids(r: Reader) -> frozenset[int]:
    return frozenset(_dec_set_of(r, lambda x: x.int("cpuid"), "cpuids"))


def enc_config(c: UnikernelConfig) -> bytes:
    parts = [_enc_typ(c.typ), enc_bool(c.compressed), enc_octets(c.image)]
    if c.startup is not None:
        parts.append(enc_int(c.startup))
    parts += [enc_bool(c.add_name), _enc_fail(c.fail_behaviour), _cpuids(c.cpuids), enc_int(c.memory)]
    parts += _enc_devices_tail(c.block_devices, c.bridges, c.argv)
    parts.append(explicit(3, enc_int(c.numcpus)))
    if c.linux_boot_partition is not None:
        parts.append(explicit(4, enc_utf8(c.linux_boot_partition)))
    return seq(*parts)


def dec_config(r: Reader) -> UnikernelConfig:
    s = r.expect(der.SEQUENCE, "unikernel config")
    typ = _dec_typ(s)
    compressed = s.bool("compressed")
    image = s.octets("image")
    startup = s.int("startup") if s.peek_tag() == der.INTEGER else None
    add_name = s.bool("add name")
    fail = _dec_fail(s)
    cpuids = _dec_cpuids(s)
    memory = s.int("memory")
    tail = _Tail(s)
    blocks, bridges, argv = _dec_devices_tail(tail)
    numcpus = _tagged(tail, 3, lambda x: x.int("cpus"), "cpus")
    lbp = _tagged(tail, 4, lambda x: x.utf8("linux boot partition"), "linux boot partition")
    s.finish("unikernel config")
    return UnikernelConfig(
        typ=typ, compressed=compressed, image=image, fail_behaviour=fail,
        startup=startup, add_name=add_name, cpuids=cpuids, memory=memory,
        block_devices=tuple(blocks), bridges=tuple(bridges), argv=argv,
        numcpus=1 if numcpus is None else numcpus, linux_boot_partition=lbp,
    )


def dec_config_v4(r: Reader) -> UnikernelConfig:
    s = r.expect(der.SEQUENCE, "unikernel config v4")
    typ = _dec_typ(s)
    compressed = s.bool("compressed")
    image = s.octets("image")
    startup = s.int("startup") if s.peek_tag() == der.INTEGER else None
    add_name = s.bool("add name")
    fail = _dec_fail(s)
    cpuid = s.int("cpuid")
    memory = s.int("memory")
    blocks, bridges, argv = _dec_devices_tail(_Tail(s))
    s.finish("unikernel config v4")
    return UnikernelConfig(
        typ=typ, compressed=compressed, image=image, fail_behaviour=fail,
        startup=startup, add_name=add_name, cpuids=frozenset({cpuid}), memory=memory,
        block_devices=tuple(blocks), bridges=tuple(bridges), argv=argv,
    )


def dec_config_v3(r: Reader) -> UnikernelConfig:
    s = r.expect(der.SEQUENCE, "unikernel config v3")
    typ = _dec_typ(s)
    compressed = s.bool("compressed")
    image = s.octets("image")
    fail = _dec_fail(s)
    cpuid = s.int("cpuid")
    memory = s.int("memory")
    blocks, bridges, argv = _dec_devices_tail(_Tail(s))
    s.finish("unikernel config v3")
    return UnikernelConfig(
        typ=typ, compressed=compressed, image=image, fail_behaviour=fail,
        startup=None, add_name=True, cpuids=frozenset({cpuid}), memory=memory,
        block_devices=tuple(blocks), bridges=tuple(bridges), argv=argv,
    )


# --------------------------------------------------------------- arguments

def enc_arguments(a: UnikernelArguments) -> bytes:
    parts = [_enc_fail(a.fail_behaviour)]
    if a.startup is not None:
        parts.append(enc_int(a.startup))
    parts += [enc_bool(a.add_name), _cpuids(a.cpuids), enc_int(a.memory)]
    parts += _enc_devices_tail(a.block_devices, a.bridges, a.argv)
    parts.append(explicit(3, enc_int(a.numcpus)))
    if a.linux_boot_partition is not None:
        parts.append(explicit(4, enc_utf8(a.linux_boot_partition)))
    return seq(*parts)


def _dec_arguments(r: Reader, variant: int) -> UnikernelArguments:
    s = r.expect(der.SEQUENCE, "unikernel arguments")
    fail = _dec_fail(s)
    if variant == 1:  # v0: no startup, no add_name
        startup, add_name = None, True
    else:
        startup = s.int("startup") if s.peek_tag() == der.INTEGER else None
        add_name = s.bool("add name")
    if variant == 3:
        cpuids = _dec_cpuids(s)
    else:
        cpuids = frozenset({s.int("cpuid")})
    memory = s.int("memory")
    tail = _Tail(s)
    blocks, bridges, argv = _dec_devices_tail(tail)
    numcpus, lbp = None, None
    if variant == 3:
        numcpus = _tagged(tail, 3, lambda x: x.int("cpus"), "cpus")
        lbp = _tagged(tail, 4, lambda x: x.utf8("linux boot partition"), "linux boot partition")
    s.finish("unikernel arguments")
    return UnikernelArguments(
        fail_behaviour=fail, startup=startup, add_name=add_name, cpuids=cpuids,
        memory=memory, block_devices=tuple(blocks), bridges=tuple(bridges),
        argv=argv, numcpus=1 if numcpus is None else numcpus, linux_boot_partition=lbp,
    )


# -------------------------------------------------------------------- info

def _enc_block_info(b: BlockInfo) -> bytes:
    return seq(enc_utf8(b.unikernel_device), enc_utf8(b.host_device), enc_int(b.sector_size), enc_int(b.size))


def _dec_block_info(r: Reader) -> BlockInfo:
    s = r.expect(der.SEQUENCE, "block info")
    v = BlockInfo(s.utf8("unikernel device"), s.utf8("host device"), s.int("sector size"), s.int("size"))
    s.finish("block info")
    return v


def _enc_net_info(n: NetInfo) -> bytes:
    if len(n.mac) != 6:
        raise EncodeError("bad mac address")
    return seq(enc_utf8(n.unikernel_device), enc_utf8(n.host_device), enc_octets(n.mac))


def _dec_net_info(r: Reader) -> NetInfo:
    s = r.expect(der.SEQUENCE, "net info")
    v = NetInfo(s.utf8("unikernel device"), s.utf8("host device"), _dec_mac(s))
    s.finish("net info")
    return v


def _single_cpuid(i: UnikernelInfo) -> bytes:
    if len(i.cpuids) != 1:
        raise EncodeError("old unikernel info needs exactly one CPU id")
    return enc_int(next(iter(i.cpuids)))


def enc_info(i: UnikernelInfo, variant: str = "Unikernel_info") -> bytes:
    parts = [_enc_typ(i.typ)]
    if variant != "Old_unikernel_info4" and i.startup is not None:
        parts.append(enc_int(i.startup))
    parts.append(_enc_fail(i.fail_behaviour))
    parts.append(_cpuids(i.cpuids) if variant == "Unikernel_info" else _single_cpuid(i))
    parts += [enc_int(i.memory), enc_octets(i.digest)]
    if i.block_devices:
        parts.append(explicit(0, set_of([_enc_block_info(b) for b in i.block_devices])))
    if i.bridges:
        parts.append(explicit(1, set_of([_enc_net_info(b) for b in i.bridges])))
    if i.argv is not None:
        parts.append(_enc_argv(i.argv))
    parts.append(explicit(3, enc_time(i.started)))
    if variant == "Unikernel_info":
        parts.append(explicit(4, enc_int(i.numcpus)))
        if i.linux_boot_partition is not None:
            parts.append(explicit(5, enc_utf8(i.linux_boot_partition)))
    return seq(*parts)


def dec_info(r: Reader, variant: str = "Unikernel_info") -> UnikernelInfo:
    s = r.expect(der.SEQUENCE, "unikernel info")
    typ = _dec_typ(s)
    startup = None
    if variant != "Old_unikernel_info4" and s.peek_tag() == der.INTEGER:
        startup = s.int("startup")
    fail = _dec_fail(s)
    if variant == "Unikernel_info":
        cpuids = _dec_cpuids(s)
    else:
        cpuids = frozenset({s.int("cpuid")})
    memory = s.int("memory")
    digest = s.octets("digest")
    tail = _Tail(s)
    blocks = _tagged(tail, 0, lambda x: _dec_set_of(x, _dec_block_info, "block info"), "block info") or []
    bridges = _tagged(tail, 1, lambda x: _dec_set_of(x, _dec_net_info, "net info"), "net info") or []
    argv = _tagged(tail, 2, _dec_argv, "arguments")
    started = _tagged(tail, 3, lambda x: x.time("started"), "started")
    numcpus, lbp = None, None
    if variant == "Unikernel_info":
        numcpus = _tagged(tail, 4, lambda x: x.int("cpus"), "cpus")
        lbp = _tagged(tail, 5, lambda x: x.utf8("linux boot partition"), "linux boot partition")
    s.finish("unikernel info")
    return UnikernelInfo(
        typ=typ, fail_behaviour=fail, startup=startup, cpuids=cpuids, memory=memory,
        block_devices=tuple(blocks), bridges=tuple(bridges), argv=argv, digest=digest,
        started=EPOCH if started is None else started,
        numcpus=1 if numcpus is None else numcpus, linux_boot_partition=lbp,
    )


# ---------------------------------------------------------------- commands

def enc_command(c: Cmd) -> bytes:
    match c:
        case ConsoleAdd(n):
            return explicit(0, explicit(0, enc_int(n)))
        case ConsoleSubscribe(since, count):
            inner = explicit(0, enc_time(since)) if since is not None else explicit(1, enc_int(count))
            return explicit(0, explicit(2, inner))
        case ConsoleListInactive():
            return explicit(0, explicit(3, NULL_TLV))
        case StatsAdd(vmmdev, pid, taps):
            body = seq(enc_utf8(vmmdev), enc_int(pid),
                       seq_of([seq(enc_utf8(a), enc_utf8(b)) for a, b in taps]))
            return explicit(1, explicit(0, body))
        case StatsRemove():
            return explicit(1, explicit(1, NULL_TLV))
        case StatsSubscribe():
            return explicit(1, explicit(2, NULL_TLV))
        case StatsInitial():
            return explicit(1, explicit(3, NULL_TLV))
        case UnikernelDestroy():
            u = explicit(3, NULL_TLV)
        case UnikernelGet(level):
            u = explicit(11, enc_int(level))
        case UnikernelRestart(args):
            inner = explicit(0, NULL_TLV) if args is None else explicit(3, enc_arguments(args))
            u = explicit(14, inner)
        case OldUnikernelInfo4():
            u = explicit(15, NULL_TLV)
        case OldUnikernelInfo5():
            u = explicit(18, NULL_TLV)
        case UnikernelInfoCmd():
            u = explicit(19, NULL_TLV)
        case UnikernelCreate(config, force):
            u = explicit(21 if force else 20, enc_config(config))
        case PolicyInfoCmd():
            return explicit(4, explicit(0, NULL_TLV))
        case PolicyAdd(policy):
            return explicit(4, explicit(1, enc_policy(policy)))
        case PolicyRemove():
            return explicit(4, explicit(2, NULL_TLV))
        case BlockInfoCmd():
            b = explicit(0, NULL_TLV)
        case BlockAdd(size):
            b = explicit(1, enc_int(size))
        case BlockRemove():
            b = explicit(2, NULL_TLV)
        case OldBlockAdd(size, compressed, data):
            parts = [enc_int(size), enc_bool(compressed)]
            if data is not None:
                parts.append(enc_octets(data))
            b = explicit(3, seq(*parts))
        case OldBlockSet(compressed, data):
            b = explicit(4, seq(enc_bool(compressed), enc_octets(data)))
        case OldBlockDump(level):
            b = explicit(5, enc_int(level))
        case BlockDump(level):
            b = explicit(6, enc_int(level))
        case BlockSet(compressed):
            b = explicit(7, enc_bool(compressed))
        case _:
            raise EncodeError(f"not a command: {c!r}")
    if isinstance(c, (BlockInfoCmd, BlockAdd, BlockRemove, OldBlockAdd, OldBlockSet,
                      OldBlockDump, BlockDump, BlockSet)):
        return explicit(5, b)
    return explicit(3, u)


def dec_command(r: Reader) -> Cmd:
    group, inner = _expect_choice(r, "command")
    if group == 2:
        raise DecodeError("support for log dropped")
    n, x = _expect_choice(inner, "command")
    inner.finish("command")
    what = "command"
    if group == 0:
        if n == 0:
            return _single(x, what, lambda y: ConsoleAdd(y.int("console add")))
        if n == 2:
            m, y = _expect_choice(x, "console subscribe")
            x.finish(what)
            if m == 0:
                return ConsoleSubscribe(since=_single(y, what, lambda z: z.time("since")))
            if m == 1:
                return ConsoleSubscribe(count=_single(y, what, lambda z: z.int("count")))
            raise DecodeError(f"console subscribe: unknown alternative [{m}]")
        if n == 3:
            _null_in(x, what)
            return ConsoleListInactive()
        raise DecodeError(f"console command: unknown alternative [{n}]")
    if group == 1:
        if n == 0:
            s = x.expect(der.SEQUENCE, "stats add")
            x.finish(what)
            vmmdev = s.utf8("vmmdev")
            pid = s.int("pid")
            taps = []
            ts = s.expect(der.SEQUENCE, "taps")
            while not ts.at_end():
                p = ts.expect(der.SEQUENCE, "tap")
                taps.append((p.utf8("bridge"), p.utf8("tap")))
                p.finish("tap")
            s.finish("stats add")
            return StatsAdd(vmmdev, pid, tuple(taps))
        cls = {1: StatsRemove, 2: StatsSubscribe, 3: StatsInitial}.get(n)
        if cls is None:
            raise DecodeError(f"stats command: unknown alternative [{n}]")
        _null_in(x, what)
        return cls()
    if group == 2:
        raise DecodeError("support for log dropped")
    if group == 3:
        return _dec_unikernel_cmd(n, x)
    if group == 4:
        if n == 0:
            _null_in(x, what)
            return PolicyInfoCmd()
        if n == 1:
            return PolicyAdd(_single(x, what, dec_policy))
        if n == 2:
            _null_in(x, what)
            return PolicyRemove()
        raise DecodeError(f"policy command: unknown alternative [{n}]")
    if group == 5:
        return _dec_block_cmd(n, x)
    raise DecodeError(f"command: unknown alternative [{group}]")


def _dec_unikernel_cmd(n: int, x: Reader) -> Cmd:
    what = "unikernel command"
    if n == 3:
        _null_in(x, what)
        return UnikernelDestroy()
    if n in (9, 10):
        return UnikernelCreate(_single(x, what, dec_config_v3), force=(n == 10))
    if n == 11:
        return UnikernelGet(_single(x, what, lambda y: y.int("compression level")))
    if n == 14:
        m, y = _expect_choice(x, "restart")
        x.finish(what)
        if m == 0:
            _null_in(y, what)
            return UnikernelRestart(None)
        if m in (1, 2, 3):
            return UnikernelRestart(_single(y, what, lambda z: _dec_arguments(z, m)))
        raise DecodeError(f"restart: unknown alternative [{m}]")
    if n in (15, 18, 19):
        _null_in(x, what)
        return {15: OldUnikernelInfo4, 18: OldUnikernelInfo5, 19: UnikernelInfoCmd}[n]()
    if n in (16, 17):
        return UnikernelCreate(_single(x, what, dec_config_v4), force=(n == 17))
    if n in (20, 21):
        return UnikernelCreate(_single(x, what, dec_config), force=(n == 21))
    raise DecodeError(f"unikernel command: unknown alternative [{n}]")


def _dec_block_cmd(n: int, x: Reader) -> Cmd:
    what = "block command"
    if n == 0:
        _null_in(x, what)
        return BlockInfoCmd()
    if n == 1:
        return BlockAdd(_single(x, what, lambda y: y.int("size")))
    if n == 2:
        _null_in(x, what)
        return BlockRemove()
    if n == 3:
        s = x.expect(der.SEQUENCE, "old block add")
        x.finish(what)
        size = s.int("size")
        compressed = s.bool("compressed")
        data = s.octets("data") if s.peek_tag() == der.OCTET_STRING else None
        s.finish("old block add")
        return OldBlockAdd(size, compressed, data)
    if n == 4:
        s = x.expect(der.SEQUENCE, "old block set")
        x.finish(what)
        compressed = s.bool("compressed")
        data = s.octets("data")
        s.finish("old block set")
        return OldBlockSet(compressed, data)
    if n == 5:
        return OldBlockDump(_single(x, what, lambda y: y.int("compression level")))
    if n == 6:
        return BlockDump(_single(x, what, lambda y: y.int("compression level")))
    if n == 7:
        return BlockSet(_single(x, what, lambda y: y.bool("compressed")))
    raise DecodeError(f"block command: unknown alternative [{n}]")


# ----------------------------------------------------------------- replies

def _enc_name_policy(n: Name, p: Policy) -> bytes:
    return seq(_enc_name(n), enc_policy(p))


def enc_success(s: Reply) -> bytes:
    match s:
        case Empty():
            return explicit(0, NULL_TLV)
        case String(string):
            return explicit(1, enc_utf8(string))
        case Policies(policies):
            return explicit(2, seq_of([_enc_name_policy(n, p) for n, p in policies]))
        case BlockDevices(devs):
            return explicit(4, seq_of([seq(_enc_name(n), enc_int(sz), enc_bool(a)) for n, sz, a in devs]))
        case UnikernelImage(compressed, image):
            return explicit(6, seq(enc_bool(compressed), enc_octets(image)))
        case OldBlockDeviceImage(compressed, data):
            return explicit(7, seq(enc_bool(compressed), enc_octets(data)))
        case BlockDeviceImage(compressed):
            return explicit(10, enc_bool(compressed))
        case Consoles(names):
            return explicit(12, seq_of([_enc_name(n) for n in names]))
        case UnikernelInfos(unikernels, variant):
            tag = {"Unikernel_info": 13, "Old_unikernel_info4": 9, "Old_unikernel_info5": 11}[variant]
            return explicit(tag, seq_of([seq(_enc_name(n), enc_info(i, variant)) for n, i in unikernels]))
    raise EncodeError(f"not a success reply: {s!r}")


def dec_success(r: Reader) -> Reply:
    n, x = _expect_choice(r, "success")
    what = "success"
    if n == 0:
        _null_in(x, what)
        return Empty()
    if n == 1:
        return String(_single(x, what, lambda y: y.utf8("string")))
    if n == 2:
        def entry(y: Reader):
            s = y.expect(der.SEQUENCE, "policy entry")
            v = (_name(s), dec_policy(s))
            s.finish("policy entry")
            return v
        return Policies(tuple(_single(x, what, lambda y: _dec_seq_of(y, entry, "policies"))))
    if n == 4:
        def bentry(y: Reader):
            s = y.expect(der.SEQUENCE, "block device entry")
            v = (_name(s), s.int("size"), s.bool("active"))
            s.finish("block device entry")
            return v
        return BlockDevices(tuple(_single(x, what, lambda y: _dec_seq_of(y, bentry, "block devices"))))
    if n in (6, 7):
        s = x.expect(der.SEQUENCE, "image")
        x.finish(what)
        compressed = s.bool("compressed")
        image = s.octets("image")
        s.finish("image")
        return UnikernelImage(compressed, image) if n == 6 else OldBlockDeviceImage(compressed, image)
    if n == 10:
        return BlockDeviceImage(_single(x, what, lambda y: y.bool("compressed")))
    if n == 12:
        return Consoles(tuple(_single(x, what, lambda y: _dec_seq_of(y, _name, "consoles"))))
    if n in (9, 11, 13):
        variant = {9: "Old_unikernel_info4", 11: "Old_unikernel_info5", 13: "Unikernel_info"}[n]

        def ientry(y: Reader):
            s = y.expect(der.SEQUENCE, "unikernel info entry")
            v = (_name(s), dec_info(s, variant))
            s.finish("unikernel info entry")
            return v
        return UnikernelInfos(tuple(_single(x, what, lambda y: _dec_seq_of(y, ientry, "unikernel info"))), variant)
    raise DecodeError(f"success: unknown alternative [{n}]")


# -------------------------------------------------------------------- data

def _enc_timeval(t: Timeval) -> bytes:
    return seq(enc_int64(t.seconds), enc_int(t.microseconds))


def _dec_timeval(r: Reader) -> Timeval:
    s = r.expect(der.SEQUENCE, "timeval")
    v = Timeval(s.int64("seconds"), s.int("microseconds"))
    s.finish("timeval")
    return v


def enc_stats(st: Stats) -> bytes:
    ru = st.rusage
    rusage = seq(_enc_timeval(ru.utime), _enc_timeval(ru.stime),
                 *[enc_int64(getattr(ru, f)) for f in RUSAGE_INT64_FIELDS])
    ifdata = seq_of([
        seq(enc_utf8(i.bridge), *[enc_int32(getattr(i, f)) for f in IFDATA_INT32_FIELDS],
            *[enc_int64(getattr(i, f)) for f in IFDATA_INT64_FIELDS])
        for i in st.ifdata
    ])
    parts = [rusage, ifdata]
    if st.vmm is not None:
        parts.append(explicit(0, seq_of([seq(enc_utf8(k), enc_int64(v)) for k, v in st.vmm])))
    if st.kinfo_mem is not None:
        k = st.kinfo_mem
        content = b"".join([enc_int64(getattr(k, f)) for f in KINFO_INT64_FIELDS]
                           + [enc_int(k.cow), _enc_timeval(k.start)])
        parts.append(der.tlv(0xA1, content))  # [1] IMPLICIT SEQUENCE
    return seq(*parts)


def dec_stats(r: Reader) -> Stats:
    s = r.expect(der.SEQUENCE, "stats")
    ru = s.expect(der.SEQUENCE, "rusage")
    utime = _dec_timeval(ru)
    stime = _dec_timeval(ru)
    vals = {f: ru.int64(f) for f in RUSAGE_INT64_FIELDS}
    ru.finish("rusage")
    rusage = Rusage(utime, stime, **vals)

    def ifd(y: Reader) -> Ifdata:
        i = y.expect(der.SEQUENCE, "ifdata")
        bridge = i.utf8("bridge")
        v32 = {f: i.int32(f) for f in IFDATA_INT32_FIELDS}
        v64 = {f: i.int64(f) for f in IFDATA_INT64_FIELDS}
        i.finish("ifdata")
        return Ifdata(bridge, **v32, **v64)
    ifdata = _dec_seq_of(s, ifd, "ifdata")
    vmm = None
    v = s.optional(0xA0)
    if v is not None:
        def kv(y: Reader):
            p = y.expect(der.SEQUENCE, "vmm entry")
            e = (p.utf8("vmm key"), p.int64("vmm value"))
            p.finish("vmm entry")
            return e
        vmm = tuple(_dec_seq_of(v, kv, "vmm"))
        v.finish("vmm")
    kinfo = None
    k = s.optional(0xA1)
    if k is not None:
        kv64 = {f: k.int64(f) for f in KINFO_INT64_FIELDS}
        cow = k.int("cow")
        start = _dec_timeval(k)
        k.finish("kinfo mem")
        kinfo = KinfoMem(cow=cow, start=start, **kv64)
    s.finish("stats")
    return Stats(rusage, kinfo, vmm, tuple(ifdata))


def enc_data(d: Data) -> bytes:
    match d:
        case StatsData(stats):
            return explicit(1, enc_stats(stats))
        case ConsoleData(ts, line):
            return explicit(3, seq(enc_time(ts), enc_utf8(line)))
        case BlockData(data):
            inner = explicit(1, NULL_TLV) if data is None else explicit(0, enc_octets(data))
            return explicit(4, inner)
    raise EncodeError(f"not a data message: {d!r}")


def dec_data(r: Reader) -> Data:
    n, x = _expect_choice(r, "data")
    what = "data"
    if n == 1:
        return StatsData(_single(x, what, dec_stats))
    if n == 2:
        raise DecodeError("support for log dropped")
    if n == 3:
        s = x.expect(der.SEQUENCE, "console data")
        x.finish(what)
        ts = s.time("timestamp")
        line = s.utf8_bytes("line")
        s.finish("console data")
        return ConsoleData(ts, line)
    if n == 4:
        m, y = _expect_choice(x, "block data")
        x.finish(what)
        if m == 0:
            return BlockData(_single(y, what, lambda z: z.octets("block data")))
        if m == 1:
            _null_in(y, what)
            return BlockData(None)
        raise DecodeError(f"block data: unknown alternative [{m}]")
    raise DecodeError(f"data: unknown alternative [{n}]")


# ------------------------------------------------------------------- wire

def enc_header(h: Header) -> bytes:
    return seq(enc_int(h.version), enc_int64(h.sequence), _enc_name(h.name))


def dec_header(r: Reader) -> Header:
    s = r.expect(der.SEQUENCE, "header")
    version = s.int("version")
    if version != WIRE_VERSION:
        raise DecodeError(f"unknown version number 0x{version:X}")
    sequence = s.int64("sequence")
    name = _name(s)
    s.finish("header")
    return Header(name, sequence, version)


def enc_payload(p) -> bytes:
    if isinstance(p, Cmd):
        return explicit(0, enc_command(p))
    if isinstance(p, Reply):
        return explicit(1, enc_success(p))
    if isinstance(p, Failure):
        return explicit(2, enc_utf8(p.message))
    if isinstance(p, Data):
        return explicit(3, enc_data(p))
    raise EncodeError(f"not a payload: {p!r}")


def encode_wire(w: Wire) -> bytes:
    """DER of a whole message (the body of a frame)."""
    return seq(enc_header(w.header), enc_payload(w.payload))


def _dec_payload(r: Reader):
    n, x = _expect_choice(r, "payload")
    if n == 0:
        return _single(x, "payload", dec_command)
    if n == 1:
        return _single(x, "payload", dec_success)
    if n == 2:
        return Failure(_single(x, "payload", lambda y: y.utf8("failure")))
    if n == 3:
        return _single(x, "payload", dec_data)
    raise DecodeError(f"payload: unknown alternative [{n}]")


def _guard(fn, data):
    try:
        return fn(data)
    except DecodeError:
        raise
    except (AlbatrossError, ValueError, TypeError, IndexError, OverflowError, KeyError) as e:
        raise DecodeError(f"malformed input: {e}") from None


def decode_wire(data: bytes) -> Wire:
    """Decode a whole message; raises DecodeError on anything upstream rejects."""
    def go(data):
        r = Reader(data)
        s = r.expect(der.SEQUENCE, "wire")
        r.finish("wire")
        header = dec_header(s)
        payload = _dec_payload(s)
        s.finish("wire")
        return Wire(header, payload)
    return _guard(go, data)


def encode_cert_extension(cmd: Cmd, version: int = WIRE_VERSION) -> bytes:
    """The albatross X.509 extension value: SEQUENCE {version, command}."""
    return seq(enc_int(version), enc_command(cmd))


def decode_cert_extension(data: bytes) -> tuple[int, Cmd]:
    def go(data):
        r = Reader(data)
        s = r.expect(der.SEQUENCE, "certificate extension")
        r.finish("certificate extension")
        version = s.int("version")
        if version != WIRE_VERSION:
            raise DecodeError(f"unknown version number 0x{version:X}")
        cmd = dec_command(s)
        s.finish("certificate extension")
        return version, cmd
    return _guard(go, data)
