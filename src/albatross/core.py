"""Plain value types shared by the wire codec, the policy engine and the daemons.

These mirror upstream's ``Vmm_core``: policies, unikernel configurations and
restart arguments, the information reported about a running unikernel, and
statistics.  All of them are immutable dataclasses without behaviour that
touches the outside world.

Strings that travel as UTF8String on the wire are opaque bytes upstream; we
keep them as ``str`` decoded with ``surrogateescape`` so that any byte string
survives a decode/encode round trip unchanged.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import time as _time
from dataclasses import dataclass, field, replace
from typing import Literal

from .policy.names import Name

# OCaml's max_int on 64-bit platforms: the largest OInt on the wire.
MAX_INT = (1 << 62) - 1
MIN_INT = -(1 << 62)

Typ = Literal["solo5", "bhyve"]


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------

@dataclass(frozen=True, order=True, slots=True)
class Ptime:
    """A POSIX timestamp: whole seconds and picoseconds (like OCaml's Ptime)."""

    seconds: int
    frac_ps: int = 0

    @classmethod
    def now(cls) -> "Ptime":
        ns = _time.time_ns()
        return cls(ns // 1_000_000_000, (ns % 1_000_000_000) * 1000)

    @classmethod
    def of_float(cls, t: float) -> "Ptime":
        s = int(t // 1)
        return cls(s, int(round((t - s) * 1e12)))

    @classmethod
    def of_datetime(cls, d: _dt.datetime) -> "Ptime":
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.timezone.utc)
        d = d.astimezone(_dt.timezone.utc)
        secs = calendar.timegm(d.utctimetuple())
        return cls(secs, d.microsecond * 1_000_000)

    def to_float(self) -> float:
        return self.seconds + self.frac_ps / 1e12

    def to_datetime(self) -> _dt.datetime:
        base = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return base + _dt.timedelta(seconds=self.seconds, microseconds=self.frac_ps // 1_000_000)

    def millis(self) -> int:
        """The sub-second part truncated to milliseconds."""
        return self.frac_ps // 1_000_000_000

    def rfc3339(self) -> str:
        """RFC 3339 in UTC; milliseconds shown when the sub-second part is non-zero."""
        d = self.to_datetime()
        base = d.strftime("%Y-%m-%dT%H:%M:%S")
        if self.frac_ps:
            return f"{base}.{self.millis():03d}Z"
        return base + "Z"

    def rfc3339_upstream(self) -> str:
        """The form upstream's client prints: seconds precision, '-00:00' zone."""
        return self.to_datetime().strftime("%Y-%m-%dT%H:%M:%S") + "-00:00"


EPOCH = Ptime(0, 0)


# --------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Policy:
    unikernels: int
    cpuids: frozenset[int]
    memory: int
    block: int | None
    bridges: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpuids", frozenset(self.cpuids))
        object.__setattr__(self, "bridges", frozenset(self.bridges))

    def describe(self) -> str:
        cpus = ",".join(str(c) for c in sorted(self.cpuids))
        block = "no block" if self.block is None else f"{self.block} MB block"
        s = f"policy: {self.unikernels} unikernels {cpus} CPUids {self.memory} MB memory {block}"
        if self.bridges:
            s += ", bridges: " + ", ".join(sorted(self.bridges))
        return s


# --------------------------------------------------------------------------
# Unikernel configuration
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FailBehaviour:
    """``quit`` or ``restart`` with an optional set of exit codes (None = any)."""

    restart: bool = False
    exit_codes: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.exit_codes is not None:
            codes = frozenset(self.exit_codes)
            # an empty explicit set is indistinguishable from None on the wire
            object.__setattr__(self, "exit_codes", codes or None)

    @classmethod
    def quit(cls) -> "FailBehaviour":
        return cls(False, None)

    def describe(self) -> str:
        if not self.restart:
            return "quit"
        if self.exit_codes is None:
            return "restart"
        return "restart " + ", ".join(str(c) for c in sorted(self.exit_codes))


QUIT = FailBehaviour()


@dataclass(frozen=True, slots=True)
class BlockDevice:
    """A block device of a unikernel: its own name, host device, sector size."""

    name: str
    device: str | None = None
    sector_size: int | None = None

    @property
    def host_device(self) -> str:
        return self.device if self.device is not None else self.name


@dataclass(frozen=True, slots=True)
class NetDevice:
    """A network interface of a unikernel: its own name, host bridge, MAC."""

    name: str
    bridge: str | None = None
    mac: bytes | None = None

    @property
    def host_bridge(self) -> str:
        return self.bridge if self.bridge is not None else self.name


@dataclass(frozen=True, slots=True)
class UnikernelArguments:
    """What ``restart --replace-arguments`` may change."""

    fail_behaviour: FailBehaviour = QUIT
    startup: int | None = None
    add_name: bool = True
    cpuids: frozenset[int] = frozenset({0})
    memory: int = 32
    block_devices: tuple[BlockDevice, ...] = ()
    bridges: tuple[NetDevice, ...] = ()
    argv: tuple[str, ...] | None = None
    numcpus: int = 1
    linux_boot_partition: str | None = None

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, slots=True)
class UnikernelConfig:
    typ: Typ = "solo5"
    compressed: bool = False
    image: bytes = b""
    fail_behaviour: FailBehaviour = QUIT
    startup: int | None = None
    add_name: bool = True
    cpuids: frozenset[int] = frozenset({0})
    memory: int = 32
    block_devices: tuple[BlockDevice, ...] = ()
    bridges: tuple[NetDevice, ...] = ()
    argv: tuple[str, ...] | None = None
    numcpus: int = 1
    linux_boot_partition: str | None = None

    def __post_init__(self) -> None:
        _normalise(self)

    def host_bridges(self) -> list[str]:
        """Bridge names used on the host (bridge, or the interface name)."""
        return [b.host_bridge for b in self.bridges]

    def with_arguments(self, args: UnikernelArguments) -> "UnikernelConfig":
        return replace(
            self,
            fail_behaviour=args.fail_behaviour,
            startup=args.startup,
            add_name=args.add_name,
            cpuids=args.cpuids,
            memory=args.memory,
            block_devices=args.block_devices,
            bridges=args.bridges,
            argv=args.argv,
            numcpus=args.numcpus,
            linux_boot_partition=args.linux_boot_partition,
        )

    def restart_handler(self) -> bool:
        """Whether vmmd must watch this unikernel's exit for a restart decision."""
        return self.fail_behaviour.restart or self.add_name

    def describe(self, with_argv: bool = False) -> str:
        blocks = ", ".join(
            f"{b.name} -> {b.host_device}" + (f"@{b.sector_size}" if b.sector_size else "")
            for b in self.block_devices
        )
        nets = ", ".join(
            f"{n.name} -> {n.host_bridge}" + (f"@{':'.join(f'{x:02x}' for x in n.mac)}" if n.mac else "")
            for n in self.bridges
        )
        startup = "not specified" if self.startup is None else str(self.startup)
        lbp = "not specified" if self.linux_boot_partition is None else self.linux_boot_partition
        s = (
            f"typ {self.typ} compression {str(self.compressed).lower()} image {len(self.image)} bytes "
            f"fail behaviour {self.fail_behaviour.describe()} startup at {startup} "
            f"add_name {str(self.add_name).lower()} "
            f"CPUids {','.join(str(c) for c in sorted(self.cpuids))} {self.memory} MB memory "
            f"block devices {blocks} bridge {nets} #cpus {self.numcpus} linux_boot {lbp}"
        )
        if with_argv:
            s += "\nargv " + ("no" if self.argv is None else " ".join(self.argv))
        return s


def _normalise(obj) -> None:
    object.__setattr__(obj, "cpuids", frozenset(obj.cpuids))
    object.__setattr__(obj, "block_devices", tuple(obj.block_devices))
    object.__setattr__(obj, "bridges", tuple(obj.bridges))
    if obj.argv is not None:
        object.__setattr__(obj, "argv", tuple(obj.argv))


def startup_priority(config: UnikernelConfig) -> int:
    return 50 if config.startup is None else config.startup


# --------------------------------------------------------------------------
# Information about running unikernels
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockInfo:
    unikernel_device: str
    host_device: str
    sector_size: int
    size: int


@dataclass(frozen=True, slots=True)
class NetInfo:
    unikernel_device: str
    host_device: str
    mac: bytes


@dataclass(frozen=True, slots=True)
class UnikernelInfo:
    typ: Typ = "solo5"
    fail_behaviour: FailBehaviour = QUIT
    startup: int | None = None
    cpuids: frozenset[int] = frozenset({0})
    memory: int = 32
    block_devices: tuple[BlockInfo, ...] = ()
    bridges: tuple[NetInfo, ...] = ()
    argv: tuple[str, ...] | None = None
    digest: bytes = b""
    started: Ptime = EPOCH
    numcpus: int = 1
    linux_boot_partition: str | None = None

    def __post_init__(self) -> None:
        _normalise(self)


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Timeval:
    seconds: int
    microseconds: int


@dataclass(frozen=True, slots=True)
class Rusage:
    utime: Timeval
    stime: Timeval
    maxrss: int = 0
    ixrss: int = 0
    idrss: int = 0
    isrss: int = 0
    minflt: int = 0
    majflt: int = 0
    nswap: int = 0
    inblock: int = 0
    outblock: int = 0
    msgsnd: int = 0
    msgrcv: int = 0
    nsignals: int = 0
    nvcsw: int = 0
    nivcsw: int = 0


@dataclass(frozen=True, slots=True)
class KinfoMem:
    vsize: int
    rss: int
    tsize: int
    dsize: int
    ssize: int
    runtime: int
    cow: int
    start: Timeval


@dataclass(frozen=True, slots=True)
class Ifdata:
    bridge: str
    flags: int = 0
    send_length: int = 0
    max_send_length: int = 0
    send_drops: int = 0
    mtu: int = 0
    baudrate: int = 0
    input_packets: int = 0
    input_errors: int = 0
    output_packets: int = 0
    output_errors: int = 0
    collisions: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    input_mcast: int = 0
    output_mcast: int = 0
    input_dropped: int = 0
    output_dropped: int = 0


IFDATA_INT32_FIELDS = ("flags", "send_length", "max_send_length", "send_drops", "mtu")
IFDATA_INT64_FIELDS = (
    "baudrate", "input_packets", "input_errors", "output_packets", "output_errors",
    "collisions", "input_bytes", "output_bytes", "input_mcast", "output_mcast",
    "input_dropped", "output_dropped",
)
RUSAGE_INT64_FIELDS = (
    "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap", "inblock",
    "outblock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
)
KINFO_INT64_FIELDS = ("vsize", "rss", "tsize", "dsize", "ssize", "runtime")


@dataclass(frozen=True, slots=True)
class Stats:
    rusage: Rusage
    kinfo_mem: KinfoMem | None = None
    vmm: tuple[tuple[str, int], ...] | None = None
    ifdata: tuple[Ifdata, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ifdata", tuple(self.ifdata))
        if self.vmm is not None:
            object.__setattr__(self, "vmm", tuple((k, v) for k, v in self.vmm))


__all__ = [
    "MAX_INT", "MIN_INT", "Ptime", "EPOCH", "Policy", "FailBehaviour", "QUIT",
    "BlockDevice", "NetDevice", "UnikernelArguments", "UnikernelConfig",
    "BlockInfo", "NetInfo", "UnikernelInfo", "Timeval", "Rusage", "KinfoMem",
    "Ifdata", "Stats", "Name", "startup_priority",
]
