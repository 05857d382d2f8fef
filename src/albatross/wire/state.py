"""The persisted state file of albatrossd (state.md).

The file is the raw DER of a CHOICE whose tag is the format version.  We
always write ``[6]`` (unikernels with the current configuration grammar and
policies) and read every older format.  Entries are kept in upstream's trie
order (pre-order, labels ascending), which is what makes our output
byte-identical to upstream's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import BlockDevice, FailBehaviour, NetDevice, Policy, UnikernelConfig
from ..errors import AlbatrossError, DecodeError
from ..policy.names import Name
from . import der
from .codec import (
    _dec_fail, _dec_typ, _enc_name, _guard, _tagged, _Tail, _dec_argv,
    dec_config, dec_config_v3, dec_config_v4, dec_policy, enc_config, enc_policy,
)
from .der import Reader, explicit, seq, seq_of


@dataclass(frozen=True, slots=True)
class State:
    unikernels: tuple[tuple[Name, UnikernelConfig], ...] = ()
    policies: tuple[tuple[Name, Policy], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "unikernels", _trie_order(self.unikernels, "unikernel"))
        object.__setattr__(self, "policies", _trie_order(self.policies, "policy"))


def _trie_order(entries, what: str):
    entries = tuple((n, v) for n, v in entries)
    keys = [n.labels() for n, _ in entries]
    if len(set(keys)) != len(keys):
        raise DecodeError(f"duplicate {what} name in state")
    return tuple(sorted(entries, key=lambda e: e[0].labels()))


def encode_state(s: State) -> bytes:
    unikernels = seq_of([seq(_enc_name(n), enc_config(c)) for n, c in s.unikernels])
    policies = seq_of([seq(_enc_name(n), enc_policy(p)) for n, p in s.policies])
    return explicit(6, seq(unikernels, policies))


def _entries(r: Reader, value_fn, what: str):
    out = []
    s = r.expect(der.SEQUENCE, what)
    while not s.at_end():
        e = s.expect(der.SEQUENCE, what + " entry")
        raw = e.utf8("name")
        try:
            name = Name.of_string(raw)
        except AlbatrossError as err:
            raise DecodeError(f"invalid name {raw!r} in state: {err.message}") from None
        value = value_fn(e)
        e.finish(what + " entry")
        out.append((name, value))
    return out


def _dec_config_v2(r: Reader) -> UnikernelConfig:
    s = r.expect(der.SEQUENCE, "unikernel config v2")
    typ = _dec_typ(s)
    compressed = s.bool("compressed")
    image = s.octets("image")
    fail = _dec_fail(s)
    cpuid = s.int("cpuid")
    memory = s.int("memory")
    tail = _Tail(s)
    blocks = _tagged(tail, 0, lambda x: _names_set(x), "block devices") or []

    def bridge(y: Reader) -> NetDevice:
        b = y.expect(der.SEQUENCE, "bridge")
        netif = b.utf8("netif")
        br = b.utf8("bridge") if b.peek_tag() == der.UTF8STRING else None
        b.finish("bridge")
        return NetDevice(netif, br, None)

    def bridges_of(x: Reader):
        q = x.expect(der.SEQUENCE, "bridges")
        out = []
        while not q.at_end():
            out.append(bridge(q))
        return out
    bridges = _tagged(tail, 1, bridges_of, "bridges") or []
    argv = _tagged(tail, 2, _dec_argv, "arguments")
    s.finish("unikernel config v2")
    return UnikernelConfig(
        typ=typ, compressed=compressed, image=image, fail_behaviour=fail, startup=None,
        add_name=True, cpuids=frozenset({cpuid}), memory=memory,
        block_devices=tuple(BlockDevice(b) for b in blocks), bridges=tuple(bridges), argv=argv,
    )


def _names_set(x: Reader) -> list[str]:
    q = x.expect(der.SET, "names")
    out = []
    while not q.at_end():
        out.append(q.utf8("name"))
    return out


def _dec_config_v1(r: Reader) -> UnikernelConfig:
    s = r.expect(der.SEQUENCE, "unikernel config v1")
    typ = _dec_typ(s)
    compressed = s.bool("compressed")
    image = s.octets("image")
    fail = _dec_fail(s)
    cpuid = s.int("cpuid")
    memory = s.int("memory")
    tail = _Tail(s)
    blocks = _tagged(tail, 0, _names_set, "block devices") or []
    bridges = _tagged(tail, 1, _names_set, "bridges") or []
    argv = _tagged(tail, 2, _dec_argv, "arguments")
    s.finish("unikernel config v1")
    return UnikernelConfig(
        typ=typ, compressed=compressed, image=image, fail_behaviour=fail, startup=None,
        add_name=True, cpuids=frozenset({cpuid}), memory=memory,
        block_devices=tuple(BlockDevice(b) for b in blocks),
        bridges=tuple(NetDevice(b) for b in bridges), argv=argv,
    )


def _dec_config_v0(r: Reader) -> UnikernelConfig:
    s = r.expect(der.SEQUENCE, "unikernel config v0")
    cpu = s.int("cpu")
    memory = s.int("memory")
    block = s.utf8("block") if s.peek_tag() == der.UTF8STRING else None
    nets: list[str] = []
    if s.peek_tag() == der.SEQUENCE:
        q = s.expect(der.SEQUENCE, "network interfaces")
        while not q.at_end():
            nets.append(q.utf8("network interface"))
    tag, img = s.any()
    if tag not in (0xA0, 0xA1, 0xA2):
        raise DecodeError(f"unikernel config v0: unknown image alternative 0x{tag:02x}")
    image = img.octets("image")
    img.finish("image")
    argv = None
    if s.peek_tag() == der.SEQUENCE:
        argv = tuple(_dec_seq_strings(s))
    s.finish("unikernel config v0")
    return UnikernelConfig(
        typ="solo5", compressed=(tag == 0xA2), image=image, fail_behaviour=FailBehaviour(),
        startup=None, add_name=True, cpuids=frozenset({cpu}), memory=memory,
        block_devices=(BlockDevice(block),) if block is not None else (),
        bridges=tuple(NetDevice(n) for n in nets), argv=argv,
    )


def _dec_seq_strings(r: Reader) -> list[str]:
    q = r.expect(der.SEQUENCE, "arguments")
    out = []
    while not q.at_end():
        out.append(q.utf8("argument"))
    return out


_UNIKERNEL_DECODERS = {
    0: _dec_config_v1, 1: _dec_config_v0, 2: _dec_config_v2, 3: dec_config_v3,
    4: dec_config_v3, 5: dec_config_v4, 6: dec_config,
}


def decode_state(data: bytes) -> State:
    """Decode a state file of any version upstream wrote."""
    def go(data):
        r = Reader(data)
        tag, body = r.any()
        r.finish("state")
        if tag & 0xE0 != 0xA0:
            raise DecodeError(f"state: expected a context tag, got 0x{tag:02x}")
        n = tag & 0x1F
        if n == 7:
            raise DecodeError("state: format [7] is not supported")
        if n not in _UNIKERNEL_DECODERS:
            raise DecodeError(f"state: unknown format [{n}]")
        fn = _UNIKERNEL_DECODERS[n]
        if n <= 3:
            unikernels = _entries(body, fn, "unikernels")
            policies = []
        else:
            s = body.expect(der.SEQUENCE, "state")
            unikernels = _entries(s, fn, "unikernels")
            policies = _entries(s, dec_policy, "policies")
            s.finish("state")
        body.finish("state")
        for name, _ in unikernels:
            if name.label is None:
                raise DecodeError(f"unikernel entry without label: {name}")
        return State(tuple(unikernels), tuple(policies))
    return _guard(go, data)
