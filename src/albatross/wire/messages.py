"""The messages of albatross's wire protocol (version 5) as plain values.

A message is a ``Wire(header, payload)``.  The payload is one of

* a command (subclass of :class:`Cmd`),
* a success reply (subclass of :class:`Reply`),
* a :class:`Failure` with a message,
* a data message (subclass of :class:`Data`).

Each command and reply class names its upstream constructor in ``CMD`` /
``VARIANT`` and its command family in ``GROUP``; these names are used by
the JSON form of messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .. import WIRE_VERSION
from ..core import (
    Policy, Ptime, Stats, UnikernelArguments, UnikernelConfig, UnikernelInfo,
)
from ..policy.names import ROOT, Name

Service = Literal["vmmd", "console", "stats"]
Mode = Literal["single", "read", "dump"]


@dataclass(frozen=True, slots=True)
class Header:
    name: Name = ROOT
    sequence: int = 0
    version: int = WIRE_VERSION


# ---------------------------------------------------------------- commands

class Cmd:
    GROUP: ClassVar[str]
    CMD: ClassVar[str]
    SERVICE: ClassVar[Service]
    MODE: ClassVar[Mode] = "single"

    @property
    def cmd(self) -> str:
        return self.CMD


# console
@dataclass(frozen=True, slots=True)
class ConsoleAdd(Cmd):
    max_unikernels: int
    GROUP = "Console_cmd"
    CMD = "Console_add"
    SERVICE = "console"
    MODE = "read"


@dataclass(frozen=True, slots=True)
class ConsoleSubscribe(Cmd):
    """Subscribe with history: exactly one of ``since`` and ``count``."""

    since: Ptime | None = None
    count: int | None = None
    GROUP = "Console_cmd"
    CMD = "Console_subscribe"
    SERVICE = "console"
    MODE = "read"

    def __post_init__(self) -> None:
        if (self.since is None) == (self.count is None):
            raise ValueError("ConsoleSubscribe needs exactly one of since and count")


@dataclass(frozen=True, slots=True)
class ConsoleListInactive(Cmd):
    GROUP = "Console_cmd"
    CMD = "Console_list_inactive"
    SERVICE = "console"


# stats
@dataclass(frozen=True, slots=True)
class StatsAdd(Cmd):
    vmmdev: str
    pid: int
    taps: tuple[tuple[str, str], ...] = ()  # (unikernel interface, tap)
    GROUP = "Stats_cmd"
    CMD = "Stats_add"
    SERVICE = "stats"

    def __post_init__(self) -> None:
        object.__setattr__(self, "taps", tuple((a, b) for a, b in self.taps))


@dataclass(frozen=True, slots=True)
class StatsRemove(Cmd):
    GROUP = "Stats_cmd"
    CMD = "Stats_remove"
    SERVICE = "stats"


@dataclass(frozen=True, slots=True)
class StatsSubscribe(Cmd):
    GROUP = "Stats_cmd"
    CMD = "Stats_subscribe"
    SERVICE = "stats"
    MODE = "read"


@dataclass(frozen=True, slots=True)
class StatsInitial(Cmd):
    GROUP = "Stats_cmd"
    CMD = "Stats_initial"
    SERVICE = "stats"


# unikernels
@dataclass(frozen=True, slots=True)
class UnikernelInfoCmd(Cmd):
    GROUP = "Unikernel_cmd"
    CMD = "Unikernel_info"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class OldUnikernelInfo4(Cmd):
    GROUP = "Unikernel_cmd"
    CMD = "Old_unikernel_info4"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class OldUnikernelInfo5(Cmd):
    GROUP = "Unikernel_cmd"
    CMD = "Old_unikernel_info5"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class UnikernelCreate(Cmd):
    config: UnikernelConfig
    force: bool = False
    GROUP = "Unikernel_cmd"
    SERVICE = "vmmd"

    @property
    def cmd(self) -> str:
        return "Unikernel_force_create" if self.force else "Unikernel_create"


@dataclass(frozen=True, slots=True)
class UnikernelRestart(Cmd):
    arguments: UnikernelArguments | None = None
    GROUP = "Unikernel_cmd"
    CMD = "Unikernel_restart"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class UnikernelDestroy(Cmd):
    GROUP = "Unikernel_cmd"
    CMD = "Unikernel_destroy"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class UnikernelGet(Cmd):
    compress_level: int = 0
    GROUP = "Unikernel_cmd"
    CMD = "Unikernel_get"
    SERVICE = "vmmd"


# policies
@dataclass(frozen=True, slots=True)
class PolicyInfoCmd(Cmd):
    GROUP = "Policy_cmd"
    CMD = "Policy_info"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class PolicyAdd(Cmd):
    policy: Policy
    GROUP = "Policy_cmd"
    CMD = "Policy_add"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class PolicyRemove(Cmd):
    GROUP = "Policy_cmd"
    CMD = "Policy_remove"
    SERVICE = "vmmd"


# block devices
@dataclass(frozen=True, slots=True)
class BlockInfoCmd(Cmd):
    GROUP = "Block_cmd"
    CMD = "Block_info"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class BlockAdd(Cmd):
    size: int
    GROUP = "Block_cmd"
    CMD = "Block_add"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class BlockRemove(Cmd):
    GROUP = "Block_cmd"
    CMD = "Block_remove"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class BlockSet(Cmd):
    compressed: bool
    GROUP = "Block_cmd"
    CMD = "Block_set"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class BlockDump(Cmd):
    compress_level: int = 0
    GROUP = "Block_cmd"
    CMD = "Block_dump"
    SERVICE = "vmmd"
    MODE = "dump"


@dataclass(frozen=True, slots=True)
class OldBlockAdd(Cmd):
    size: int
    compressed: bool = False
    data: bytes | None = None
    GROUP = "Block_cmd"
    CMD = "Old_block_add"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class OldBlockSet(Cmd):
    compressed: bool
    data: bytes
    GROUP = "Block_cmd"
    CMD = "Old_block_set"
    SERVICE = "vmmd"


@dataclass(frozen=True, slots=True)
class OldBlockDump(Cmd):
    compress_level: int = 0
    GROUP = "Block_cmd"
    CMD = "Old_block_dump"
    SERVICE = "vmmd"


COMMAND_CLASSES: tuple[type[Cmd], ...] = (
    ConsoleAdd, ConsoleSubscribe, ConsoleListInactive,
    StatsAdd, StatsRemove, StatsSubscribe, StatsInitial,
    UnikernelInfoCmd, OldUnikernelInfo4, OldUnikernelInfo5, UnikernelCreate,
    UnikernelRestart, UnikernelDestroy, UnikernelGet,
    PolicyInfoCmd, PolicyAdd, PolicyRemove,
    BlockInfoCmd, BlockAdd, BlockRemove, BlockSet, BlockDump,
    OldBlockAdd, OldBlockSet, OldBlockDump,
)


# ----------------------------------------------------------------- replies

class Reply:
    VARIANT: ClassVar[str]


@dataclass(frozen=True, slots=True)
class Empty(Reply):
    VARIANT = "Empty"


@dataclass(frozen=True, slots=True)
class String(Reply):
    string: str
    VARIANT = "String"


@dataclass(frozen=True, slots=True)
class Policies(Reply):
    policies: tuple[tuple[Name, Policy], ...]
    VARIANT = "Policies"

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple((n, p) for n, p in self.policies))


@dataclass(frozen=True, slots=True)
class UnikernelInfos(Reply):
    """The answer to an info request (current or one of the two old forms)."""

    unikernels: tuple[tuple[Name, UnikernelInfo], ...]
    variant: Literal["Unikernel_info", "Old_unikernel_info4", "Old_unikernel_info5"] = "Unikernel_info"

    def __post_init__(self) -> None:
        object.__setattr__(self, "unikernels", tuple((n, i) for n, i in self.unikernels))

    @property
    def VARIANT(self) -> str:  # type: ignore[override]
        return self.variant


@dataclass(frozen=True, slots=True)
class UnikernelImage(Reply):
    compressed: bool
    image: bytes
    VARIANT = "Unikernel_image"


@dataclass(frozen=True, slots=True)
class BlockDevices(Reply):
    block_devices: tuple[tuple[Name, int, bool], ...]
    VARIANT = "Block_devices"

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_devices", tuple((n, s, a) for n, s, a in self.block_devices))


@dataclass(frozen=True, slots=True)
class OldBlockDeviceImage(Reply):
    compressed: bool
    data: bytes
    VARIANT = "Old_block_device_image"


@dataclass(frozen=True, slots=True)
class BlockDeviceImage(Reply):
    compressed: bool
    VARIANT = "Block_device_image"


@dataclass(frozen=True, slots=True)
class Consoles(Reply):
    names: tuple[Name, ...]
    VARIANT = "Consoles"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))


@dataclass(frozen=True, slots=True)
class Failure:
    message: str


# -------------------------------------------------------------------- data

class Data:
    VARIANT: ClassVar[str]


@dataclass(frozen=True, slots=True)
class ConsoleData(Data):
    timestamp: Ptime
    line: bytes
    VARIANT = "Console_data"


@dataclass(frozen=True, slots=True)
class StatsData(Data):
    stats: Stats
    VARIANT = "Stats_data"


@dataclass(frozen=True, slots=True)
class BlockData(Data):
    data: bytes | None  # None marks the end of a block dump
    VARIANT = "Block_data"


Payload = Cmd | Reply | Failure | Data


@dataclass(frozen=True, slots=True)
class Wire:
    header: Header
    payload: Payload

    @property
    def name(self) -> Name:
        return self.header.name


def endpoint(cmd: Cmd) -> tuple[Service, Mode]:
    """Which daemon serves ``cmd`` and how its replies come (upstream ``endpoint``)."""
    return cmd.SERVICE, cmd.MODE
