"""The decision core of albatrossd, without any I/O (upstream ``Vmm_vmmd``).

Like h11, this module only transforms plain data: the daemon shell feeds in
commands and events (a process was spawned, a process exited, a waiter
fired) and gets back a list of *effects* (plain dataclasses) to carry out:
reply on the connection, send a signal, write the state file, clean up
system resources, talk to albatross-console / albatross-stats, do block
device file I/O, create a unikernel.  There are no sockets, processes,
files or clocks in here (the shell passes timestamps in).

Life of a unikernel (``Vm.state``):

* ``starting``   -- between the create check and the spawn (the shell holds
  the global lock while preparing, asking the console and spawning);
* ``running``    -- the tender runs;
* ``stopping``   -- SIGTERM was sent (destroy, restart, force-create,
  shutdown), its exit is awaited;
* after the exit the entry is gone; if a waiter was registered the name is
  put into the *restarting* set (upstream semantics, so that a boot-looping
  unikernel can be destroyed between its exit and its re-creation).

Waiters: a unikernel with a restart handler (restart-on-failure or an
injected ``--name``) gets a :class:`RestartWaiter` at create time; destroy,
restart, force-create and shutdown register :class:`ExitWaiter` s which
replace it ("destroy wins over restart").  Upstream keeps one waiter per
name, so a second destroy of a stopping unikernel leaves the first caller
waiting forever; here every exit waiter is woken.
"""

from __future__ import annotations

import logging
from ..wire import inflate as Z
from dataclasses import dataclass, field, replace
from typing import Literal, Union

from ..core import (
    BlockInfo, NetInfo, Policy, Ptime, UnikernelConfig, UnikernelInfo, startup_priority,
)
from ..errors import AlbatrossError, PolicyError
from ..policy import validate
from ..policy.names import ROOT, Name
from ..policy.resources import Resources
from ..policy.trie import Trie
from ..wire import messages as m
from ..wire.messages import Header, Wire
from ..wire.state import State

log = logging.getLogger("albatross.vmmd")

#: the level of lifecycle messages: shown at albatrossd's default verbosity (upstream's "app")
APP = logging.WARNING + 5

VmState = Literal["starting", "running", "stopping"]


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: ``exit`` with a code, killed by ``signal``, or ``stop``."""

    kind: Literal["exit", "signal", "stop"]
    code: int

    @classmethod
    def of_returncode(cls, rc: int) -> "ExitStatus":
        """From asyncio/subprocess returncode (negative = killed by signal)."""
        return cls("signal", -rc) if rc < 0 else cls("exit", rc)

    def describe(self) -> str:
        return {"exit": "exit", "signal": "signal", "stop": "stop"}[self.kind] + f" {self.code}"


@dataclass(frozen=True, slots=True)
class Spawned:
    """What the shell reports after exec'ing a tender."""

    pid: int
    taps: tuple[tuple[str, bytes], ...]  # (tap, MAC in use) per network device
    digest: bytes
    started: Ptime
    clock: float | None = None  # the shell's monotonic clock at spawn (for the restart back-off)


@dataclass(slots=True)
class Vm:
    name: Name
    config: UnikernelConfig
    state: VmState
    pid: int = 0
    taps: tuple[tuple[str, bytes], ...] = ()
    digest: bytes = b""
    started: Ptime = Ptime(0)
    clock: float | None = None


@dataclass(frozen=True, slots=True)
class RestartWaiter:
    """The restart handler registered at create time."""

    config: UnikernelConfig


@dataclass(frozen=True, slots=True)
class ExitWaiter:
    """Somebody (a connection, the shutdown) waits for the exit; ``ident`` is the shell's token."""

    ident: int


Waiter = Union[RestartWaiter, ExitWaiter]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How restart-on-failure backs off (beyond upstream, which restarts at once, forever).

    The n-th failure in a row waits ``delay * 2**(n-1)`` seconds, at most
    ``max_delay``, before the restart; a run of at least ``reset_after``
    seconds forgets the earlier failures.  When ``max_failures`` failures
    fall within ``window`` seconds the unikernel is not restarted but marked
    failed.  ``delay`` 0 restarts at once, ``max_failures`` 0 never gives up:
    both together are upstream's behaviour.
    """

    delay: float = 1.0
    max_delay: float = 60.0
    reset_after: float = 60.0
    max_failures: int = 10
    window: float = 600.0

    @classmethod
    def immediate(cls) -> "RestartPolicy":
        """Upstream: restart at once, never give up."""
        return cls(delay=0.0, max_failures=0)

    def delay_for(self, failures: int) -> float:
        """The wait before the restart after ``failures`` (>= 1) failures in a row."""
        if self.delay <= 0:
            return 0.0
        return min(self.max_delay, self.delay * 2 ** min(failures - 1, 64))


@dataclass(frozen=True, slots=True)
class PendingRestart:
    """A restart waiting for its back-off delay; ``token`` identifies the shell's timer."""

    config: UnikernelConfig
    token: int
    delay: float
    failures: int


@dataclass(frozen=True, slots=True)
class FailedVm:
    """A unikernel given up on: not running, kept (and in the state file) until destroyed or restarted."""

    config: UnikernelConfig
    status: ExitStatus
    failures: int
    window: float
    reason: str | None = None  # the last failure was a failed re-creation, not an exit

    def describe(self, name: Name) -> str:
        last = f"restart failed: {self.reason}" if self.reason else f"with {self.status.describe()}"
        return (f"unikernel {name.to_string()} failed: it exited {self.failures} times within "
                f"{self.window:g} s (last {last}), not restarted any more; "
                f"'restart' tries again, 'destroy' removes it")


# --------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    """Send this message on the requesting connection."""

    wire: Wire


@dataclass(frozen=True, slots=True)
class Loop:
    """Keep reading commands on this connection (after policy add)."""


@dataclass(frozen=True, slots=True)
class PrepareAndSpawn:
    """Create a unikernel: prepare, console add, spawn (see Vmmd.begin_create...).

    ``reply`` is the header to answer on (None: nobody is waiting for the result).
    """

    name: Name
    config: UnikernelConfig
    needs_dump: bool
    reply: Header | None


@dataclass(frozen=True, slots=True)
class Kill:
    name: Name
    pid: int


@dataclass(frozen=True, slots=True)
class AwaitExit:
    """Release the lock and wait until ``waiter`` is woken, then do ``then``.

    then = "destroy": call Vmmd.destroy_done and reply;
    then = a PrepareAndSpawn: re-acquire the lock and create.
    """

    name: Name
    waiter: int
    then: Union[Literal["destroy"], PrepareAndSpawn]
    reply: Header


@dataclass(frozen=True, slots=True)
class Wake:
    waiter: int
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """A restart handler fired: later (under the lock) call Vmmd.decide_restart.

    ``started`` is the shell's clock when the exited tender was spawned.
    """

    name: Name
    config: UnikernelConfig
    status: ExitStatus
    started: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduleRestart:
    """Back-off: after ``delay`` seconds call Vmmd.restart_due(name, token) under the lock."""

    name: Name
    token: int
    delay: float


@dataclass(frozen=True, slots=True)
class Undo:
    """What a state write persists, so that Vmmd.dump_failed can decide when it fails.

    kind "create": the unikernel ``name`` just started (answered on ``reply``);
    "destroy": ``name`` was destroyed (``text`` is the success reply);
    "policy": the policy of ``name``'s path was changed (``policy`` is the previous one,
    None if there was none; ``loop``: the connection is kept open).
    """

    kind: Literal["create", "destroy", "policy"]
    name: Name
    reply: Header | None = None
    text: str = ""
    policy: Policy | None = None
    loop: bool = False


@dataclass(frozen=True, slots=True)
class DumpState:
    """Write the state file; the shell reports a failure to Vmmd.dump_failed, whose
    effects (if any) replace the rest of the batch (the success reply)."""

    state: State
    undo: Undo | None = None


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A destroy's state write failed: mark ``name`` destroyed on disk, then Vmmd.tombstone_done."""

    name: Name
    reply: Header | None
    text: str
    error: str


@dataclass(frozen=True, slots=True)
class RollBack:
    """A create's state write failed and its tender was signalled: once it exited,
    call Vmmd.rolled_back and answer ``message``."""

    name: Name
    message: str


@dataclass(frozen=True, slots=True)
class Cleanup:
    """Free the system resources of a unikernel: image, fifo, taps (and bhyve VM)."""

    name: Name
    typ: str
    taps: tuple[str, ...]
    digest: bytes


@dataclass(frozen=True, slots=True)
class StatsMessage:
    """A request for albatross-stats (skipped when no stats channel exists)."""

    wire: Wire


@dataclass(frozen=True, slots=True)
class AdoptStats:
    """This connection becomes the stats channel: reply, then send ``messages``."""

    reply: Wire
    messages: tuple[Wire, ...]


@dataclass(frozen=True, slots=True)
class BlockIO:
    """Block device file I/O the shell performs, then reports to Vmmd.block_done.

    op: "create" (size MB, optional initial data), "remove", "write" (old set:
    replace content with data), "read" (old dump: whole file), "recv" (stream
    in, ``compressed``), "send" (stream out at ``level``).
    """

    op: Literal["create", "remove", "write", "read", "recv", "send"]
    name: Name
    size: int
    reply: Header
    data: bytes | None = None
    compressed: bool = False
    level: int = 0


Effect = Union[Reply, Loop, PrepareAndSpawn, Kill, AwaitExit, Wake, RestartDecision, ScheduleRestart,
               DumpState, Cleanup, StatsMessage, AdoptStats, BlockIO, Tombstone, RollBack]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

NEVER_RESTART = frozenset({1, 60, 61, 62, 63, 64})


def should_restart(config: UnikernelConfig, status: ExitStatus) -> bool:
    """Upstream ``should_restart``: signals, stops, exit 1 and 60-64 never restart."""
    if status.kind != "exit":
        return False
    if status.code in NEVER_RESTART:
        return False
    codes = config.fail_behaviour.exit_codes
    return codes is None or status.code in codes


def startup_order(unikernels: list[tuple[Name, UnikernelConfig]]) -> list[tuple[Name, UnikernelConfig]]:
    """Restore order: by startup priority (missing = 50), ties keep trie order."""
    return sorted(unikernels, key=lambda e: startup_priority(e[1]))


def uncompress(data: bytes, cap: int = Z.DEFAULT_MAX_IMAGE, what: str = "image") -> bytes:
    """Inflate at most ``cap`` bytes (a "zlib bomb" is refused, never allocated)."""
    try:
        return Z.inflate(data, cap, what)
    except Z.InflateError as e:
        raise PolicyError(e.message) from None


def failure(header: Header, message: str) -> Reply:
    return Reply(Wire(header, m.Failure(message)))


def success(header: Header, reply: m.Reply) -> Reply:
    return Reply(Wire(header, reply))


def string(header: Header, s: str) -> Reply:
    return success(header, m.String(s))


def absolute(path: tuple[str, ...], rel: Name) -> Name:
    """The absolute name of an entry listed relative to ``path``."""
    if rel == ROOT:
        return Name.of_labels(path)
    return Name(tuple(path) + rel.path, rel.label)


# --------------------------------------------------------------------------
# The core
# --------------------------------------------------------------------------

@dataclass
class Vmmd:
    resources: Resources = field(default_factory=Resources)
    vms: Trie[Vm] = field(default_factory=Trie)
    waiters: dict[Name, list[Waiter]] = field(default_factory=dict)
    restarting: set[Name] = field(default_factory=set)
    shutting_down: bool = False
    console_counter: int = 1
    stats_counter: int = 1
    _next_waiter: int = 1
    #: largest uncompressed image accepted (albatrossd --max-image-size)
    max_image_size: int = Z.DEFAULT_MAX_IMAGE
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    failures: dict[Name, list[float]] = field(default_factory=dict)  # clock of recent failures
    pending: dict[Name, PendingRestart] = field(default_factory=dict)
    failed: dict[Name, FailedVm] = field(default_factory=dict)

    # -- start-up ---------------------------------------------------------------
    @classmethod
    def create(cls, zvol_path: tuple[str, ...] | None = None,
               restart_policy: RestartPolicy | None = None) -> "Vmmd":
        return cls(resources=Resources(zvol_path=zvol_path), restart_policy=restart_policy or RestartPolicy())

    def init_block_devices(self, devices: list[tuple[Name, int]]) -> list[str]:
        """Register the block devices found on disk; returns error messages for rejected ones."""
        errors = []
        for name, size in devices:
            try:
                self.resources.insert_block(name, size)
            except PolicyError as e:
                errors.append(f"couldn't insert block device {name} ({size}MB): {e.message}")
        return errors

    def restore_policies(self, policies: list[tuple[Name, Policy]], root: Policy) -> list[str]:
        """Insert the stored policies (root replaced by ``root``), trie order.

        Returns warnings; raises PolicyError("policy restore error: ...") on the first failure.
        """
        warnings = []
        trie: Trie[Policy] = Trie()
        for name, p in policies:
            trie.insert(name, p)
        old = trie.insert(ROOT, root)
        if old is not None and old != root:
            warnings.append(f"replacing stored root policy {old.describe()} with discovered {root.describe()}")
        for name, p in trie.items():
            try:
                self.resources.insert_policy(name.path, p)
            except PolicyError as e:
                raise PolicyError(
                    f"policy restore error: couldn't insert policy {p.describe()} for {name.pretty()}: "
                    f"{e.message}") from None
        return warnings

    # -- state file ---------------------------------------------------------------
    def state(self) -> State:
        """Running unikernels, and those waiting for a restart or marked failed (still deployed)."""
        configs: Trie[UnikernelConfig] = Trie()
        for n, p in self.pending.items():
            configs.insert(n, p.config)
        for n, f in self.failed.items():
            configs.insert(n, f.config)
        for n, vm in self.vms.items():
            if vm.state != "starting":
                configs.insert(n, vm.config)
        return State(tuple(configs.items()), tuple(self.resources.policies.items()))

    def dump(self, undo: Undo | None = None) -> DumpState:
        return DumpState(self.state(), undo)

    def dump_failed(self, dump: DumpState, error: str) -> list[Effect] | None:
        """Writing the state failed: the effects replacing the rest of the batch, or
        None to carry on with it (nobody is waiting for an answer).

        Nothing is acknowledged that is not on disk: a policy change is undone
        and refused; a fresh create (somebody waits for it) is rolled back (its
        tender is killed, see RollBack); a destroy cannot be undone, so it is
        marked with a tombstone and answered with a failure saying so.  Without
        a waiting command (an exit, a restart decision, a restore) there is
        nobody to answer: the shell logs it and retries the write later.
        """
        u = dump.undo
        if u is None:
            return None
        what = f"failed to write the state: {error}"
        if u.kind == "policy":
            path = u.name.path
            try:
                if u.policy is None:
                    self.resources.remove_policy(path)
                else:
                    self.resources.insert_policy(path, u.policy)
            except PolicyError as e:
                log.error("undoing the policy change of %s failed: %s", u.name, e.message)
            out: list[Effect] = [failure(u.reply, f"policy not changed: {what}")] if u.reply else []
            return out + ([Loop()] if u.loop else [])
        if u.kind == "destroy":
            return [Tombstone(u.name, u.reply, u.text, error)]
        vm = self.vms.get(u.name)
        if u.reply is None or vm is None or vm.state != "running":
            return None
        vm.state = "stopping"
        self.waiters.pop(u.name, None)
        return [Kill(u.name, vm.pid),
                RollBack(u.name, f"could not create unikernel: {what}; the unikernel was stopped")]

    def tombstone_done(self, eff: Tombstone, path: str | None, error: str | None) -> list[Effect]:
        """The reply to a destroy whose state write failed, once the tombstone was (not) written."""
        text = f"{eff.text}, but failed to write the state: {eff.error}"
        if path is not None:
            text += f"; it will not be restored at the next start (tombstone {path})"
        else:
            text += f"; writing a tombstone failed too ({error}): it will be restored at the next start"
        log.error("%s: %s", eff.name.pretty(), text)
        return [failure(eff.reply, text)] if eff.reply is not None else []

    def rolled_back(self, name: Name) -> list[Effect]:
        """The tender of a rolled-back create exited: forget it, free its resources (no dump, no stats)."""
        vm = self.vms.get(name)
        if vm is None:
            return []
        self.vms.remove(name)
        try:
            self.resources.remove_vm(name)
        except PolicyError as e:
            log.warning("%s while removing unikernel %s from resources", e.message, name)
        self.waiters.pop(name, None)
        self.restarting.discard(name)
        return [Cleanup(name, vm.config.typ, tuple(t for t, _ in vm.taps), vm.digest)]

    def _dump_unless_shutdown(self) -> list[Effect]:
        return [] if self.shutting_down else [self.dump()]

    # -- waiters --------------------------------------------------------------------
    def new_waiter(self, name: Name) -> int:
        """Register an exit waiter for ``name`` (replacing a restart handler)."""
        ident = self._next_waiter
        self._next_waiter += 1
        ws = [w for w in self.waiters.get(name, []) if isinstance(w, ExitWaiter)]
        ws.append(ExitWaiter(ident))
        self.waiters[name] = ws
        return ident

    def _register_restart(self, name: Name, config: UnikernelConfig) -> None:
        if self.waiters.get(name):
            log.error("restart attempted to overwrite waiter")
            return
        self.waiters[name] = [RestartWaiter(config)]

    def _stop_create(self, header: Header, needs_dump: bool) -> list[Effect]:
        """Destroy/restart of a name that is not running."""
        name = header.name
        if self.waiters.get(name):
            del self.waiters[name]
            text = "destroyed: removed waiter"
            dump = [self.dump(Undo("destroy", name, header, text))] if needs_dump else []
            return dump + [string(header, text)]
        if name in self.pending:
            del self.pending[name]
            self.failures.pop(name, None)
            log.log(APP, "%s destroyed while waiting to be restarted", name.pretty())
            text = "destroyed: removed from restarting"
            return [self.dump(Undo("destroy", name, header, text)), string(header, text)]
        if name in self.failed:
            del self.failed[name]
            log.log(APP, "%s (failed) destroyed", name.pretty())
            text = "destroyed: removed failed unikernel"
            return [self.dump(Undo("destroy", name, header, text)), string(header, text)]
        if name in self.restarting:
            self.restarting.discard(name)
            text = "destroyed: removed from restarting"
            dump = [self.dump(Undo("destroy", name, header, text))] if needs_dump else []
            return dump + [string(header, text)]
        return [failure(header, "destroy: not found")]

    # -- stats ------------------------------------------------------------------------
    def _stats(self, name: Name, cmd: m.Cmd) -> StatsMessage:
        header = Header(name, self.stats_counter)
        self.stats_counter += 1
        return StatsMessage(Wire(header, cmd))

    def _stats_add(self, vm: Vm) -> StatsMessage:
        ifs = tuple((net.name, tap) for net, (tap, _mac) in zip(vm.config.bridges, vm.taps))
        return self._stats(vm.name, m.StatsAdd("", vm.pid, ifs))

    # -- commands ---------------------------------------------------------------------
    def handle_command(self, header: Header, payload: object) -> list[Effect]:
        """Evaluate one command; errors become a failure reply."""
        try:
            if isinstance(payload, m.Cmd) and payload.GROUP == "Policy_cmd":
                return self._policy_cmd(header, payload)
            if isinstance(payload, m.Cmd) and payload.GROUP == "Unikernel_cmd":
                return self._unikernel_cmd(header, payload)
            if isinstance(payload, m.Cmd) and payload.GROUP == "Block_cmd":
                return self._block_cmd(header, payload)
            if isinstance(payload, m.StatsInitial):
                return self._stats_initial(header)
            log.error("ignoring %s", type(payload).__name__)
            raise PolicyError("unknown command")
        except AlbatrossError as e:
            log.error("error while processing command: %s", e.message)
            return [failure(header, e.message)]

    # policies
    def _policy_cmd(self, header: Header, cmd: m.Cmd) -> list[Effect]:
        name = header.name
        path = name.path
        if name.label is not None:
            log.warning("policy command with non-empty name part %r in %s", name.label, name)
        if isinstance(cmd, m.PolicyRemove):
            validate.removable_policy(path)
            old = self.resources.find_policy(path)
            self.resources.remove_policy(path)
            return [self.dump(Undo("policy", name, header, policy=old)), string(header, "removed policy")]
        if isinstance(cmd, m.PolicyAdd):
            validate.policy(cmd.policy)
            old = self.resources.find_policy(path)
            if old == cmd.policy:
                return [string(header, "no modification of policy"), Loop()]
            self.resources.insert_policy(path, cmd.policy)
            return [self.dump(Undo("policy", name, header, policy=old, loop=True)), string(header, "added policy"),
                    Loop()]
        assert isinstance(cmd, m.PolicyInfoCmd)
        return [success(header, m.Policies(tuple(self.resources.policies.listing(path))))]

    # unikernels
    def info(self, name: Name) -> tuple[tuple[Name, UnikernelInfo], ...]:
        """The running unikernels at ``name`` (or below the path).

        The wire's unikernel info has no state: a unikernel waiting for its
        restart or marked failed is not listed (no client could tell that it
        does not run); asked for by its name, the answer is a failure saying so.
        """
        if name.label is not None:
            if name in self.failed:
                raise PolicyError(self.failed[name].describe(name))
            if name in self.pending:
                p = self.pending[name]
                raise PolicyError(f"unikernel {name.to_string()} is not running: it failed {p.failures} "
                                  f"time(s) in a row and is restarted after {p.delay:g} s")
            vm = self.vms.get(name)
            return () if vm is None or vm.state == "starting" else ((name, self._info(name, vm)),)
        return tuple((rel, self._info(rel, vm)) for rel, vm in self.vms.listing(name.path)
                     if vm.state != "starting")

    def _info(self, id_: Name, vm: Vm) -> UnikernelInfo:
        """Upstream's ``Unikernel.info``; block sizes are looked up relative to ``id_`` (quirk)."""
        cfg = vm.config

        def block_size(dev: str) -> int:
            b = self.resources.find_block(id_.block_name(dev))
            return 0 if b is None else b.size

        blocks = tuple(
            BlockInfo(b.name, b.host_device, b.sector_size or 512, block_size(b.host_device))
            for b in cfg.block_devices)
        nets = tuple(NetInfo(n.name, n.host_bridge, mac) for n, (_tap, mac) in zip(cfg.bridges, vm.taps))
        return UnikernelInfo(
            typ=cfg.typ, fail_behaviour=cfg.fail_behaviour, startup=cfg.startup, cpuids=cfg.cpuids,
            memory=cfg.memory, block_devices=blocks, bridges=nets, argv=cfg.argv, digest=vm.digest,
            started=vm.started, numcpus=cfg.numcpus, linux_boot_partition=cfg.linux_boot_partition)

    def running(self, name: Name) -> Vm | None:
        vm = self.vms.get(name)
        return None if vm is None or vm.state == "starting" else vm

    def _unikernel_cmd(self, header: Header, cmd: m.Cmd) -> list[Effect]:
        name = header.name
        if isinstance(cmd, (m.UnikernelInfoCmd, m.OldUnikernelInfo4, m.OldUnikernelInfo5)):
            return [success(header, m.UnikernelInfos(self.info(name), cmd.CMD))]
        if isinstance(cmd, m.UnikernelGet):
            return [success(header, self._get(name, cmd.compress_level))]
        if isinstance(cmd, m.UnikernelCreate):
            return self._create_cmd(header, cmd)
        if isinstance(cmd, m.UnikernelRestart):
            return self._restart(header, cmd)
        assert isinstance(cmd, m.UnikernelDestroy)
        return self._destroy(header)

    def _get(self, name: Name, level: int) -> m.UnikernelImage:
        vm = self.running(name)
        if vm is None:
            raise PolicyError("get: no unikernel found")
        cfg = vm.config
        Z.check_level(level)
        if cfg.compressed:
            if level > 0:
                return m.UnikernelImage(True, cfg.image)
            return m.UnikernelImage(False, uncompress(cfg.image, self.max_image_size))
        if level == 0:
            return m.UnikernelImage(False, cfg.image)
        return m.UnikernelImage(True, Z.compress(cfg.image, level))

    def _resources_without(self, name: Name) -> Resources:
        res = self.resources.copy()
        if res.find_unikernel(name) is not None:
            res.remove_vm(name)
        return res

    def _validate(self, name: Name, config: UnikernelConfig) -> None:
        """The values of a create (authoritative: whatever the client checked)."""
        validate.unikernel_name(name)
        validate.config_on_host(config, self.resources.find_policy(()))

    def _create_cmd(self, header: Header, cmd: m.UnikernelCreate) -> list[Effect]:
        name = header.name
        self._validate(name, cmd.config)
        create = PrepareAndSpawn(name, cmd.config, True, header)
        if name in self.pending or name in self.failed:
            if not cmd.force:
                what = "waiting to be restarted" if name in self.pending else "marked failed"
                raise PolicyError(f"Unikernel with same name is {what} (destroy it, or create with --force)")
            self.pending.pop(name, None)
            self.failed.pop(name, None)
            self.failures.pop(name, None)
        if not cmd.force:
            return [create]
        self._resources_without(name).check_vm(name, cmd.config)
        vm = self.running(name)
        if vm is None:
            return [create]
        return self._kill_and_wait(vm, header, create)

    def _kill_and_wait(self, vm: Vm, header: Header, then) -> list[Effect]:
        vm.state = "stopping"
        waiter = self.new_waiter(vm.name)
        return [Kill(vm.name, vm.pid), AwaitExit(vm.name, waiter, then, header)]

    def _restart(self, header: Header, cmd: m.UnikernelRestart) -> list[Effect]:
        name = header.name
        vm = self.running(name)
        if vm is None and (name in self.pending or name in self.failed):
            # waiting for its back-off or given up on: try again now
            old = self.pending[name].config if name in self.pending else self.failed[name].config
            config = old if cmd.arguments is None else old.with_arguments(cmd.arguments)
            self._validate(name, config)
            if config.typ == "solo5":
                check_manifest(config)
            self.pending.pop(name, None)
            self.failed.pop(name, None)
            self.failures.pop(name, None)
            log.log(APP, "restarting %s on request", name.pretty())
            return [PrepareAndSpawn(name, config, True, header)]
        if vm is None:
            return self._stop_create(header, needs_dump=False)
        self._resources_without(name).check_vm(name, vm.config)
        config = vm.config if cmd.arguments is None else vm.config.with_arguments(cmd.arguments)
        self._validate(name, config)
        if config.typ == "solo5":
            check_manifest(config, self.max_image_size)
        return self._kill_and_wait(vm, header, PrepareAndSpawn(name, config, True, header))

    def _destroy(self, header: Header) -> list[Effect]:
        vm = self.running(header.name)
        if vm is None:
            return self._stop_create(header, needs_dump=True)
        self.failures.pop(header.name, None)
        return self._kill_and_wait(vm, header, "destroy")

    def destroy_done(self, header: Header, status: ExitStatus) -> list[Effect]:
        """A destroy's waiter fired: dump state and reply."""
        log.info("%s exited with %s", header.name.pretty(), status.describe())
        text = "destroyed unikernel"
        return [self.dump(Undo("destroy", header.name, header, text)), string(header, text)]

    # block devices
    def _block_cmd(self, header: Header, cmd: m.Cmd) -> list[Effect]:
        name = header.name
        res = self.resources
        if isinstance(cmd, m.BlockInfoCmd):
            if name.label is None:
                blocks = tuple((rel, b.size, b.active) for rel, b in res.block_devices.listing(name.path))
            else:
                b = res.find_block(name)
                blocks = () if b is None else ((name, b.size, b.active),)
            return [success(header, m.BlockDevices(blocks))]
        if isinstance(cmd, (m.BlockAdd, m.OldBlockAdd)):
            validate.unikernel_name(name, "block device")
            validate.block_size(cmd.size)
            if res.find_block(name) is not None:
                raise PolicyError("block device with same name already exists")
            res.check_block(name, cmd.size)
            size_bytes = bytes_of_mb(cmd.size)
            data = None
            if isinstance(cmd, m.OldBlockAdd) and cmd.data is not None:
                data = uncompress(cmd.data, size_bytes, "block data") if cmd.compressed else cmd.data
                if len(data) > size_bytes:
                    raise PolicyError("data exceeds block size")
            return [BlockIO("create", name, cmd.size, header, data=data)]
        if isinstance(cmd, m.BlockRemove):
            b = self._inactive_block(name, "remove block")
            return [BlockIO("remove", name, b, header)]
        if isinstance(cmd, m.OldBlockSet):
            size = self._inactive_block(name, "set block")
            data = uncompress(cmd.data, bytes_of_mb(size), "block data") if cmd.compressed else cmd.data
            if len(data) > bytes_of_mb(size):
                raise PolicyError("data exceeds block size")
            return [BlockIO("write", name, size, header, data=data)]
        if isinstance(cmd, m.BlockSet):
            size = self._inactive_block(name, "set block")
            bytes_of_mb(size)
            return [BlockIO("recv", name, size, header, compressed=cmd.compressed)]
        if isinstance(cmd, m.OldBlockDump):
            size = self._inactive_block(name, "dump block")
            return [BlockIO("read", name, size, header, level=Z.check_level(cmd.compress_level))]
        assert isinstance(cmd, m.BlockDump)
        size = self._inactive_block(name, "dump block")
        return [BlockIO("send", name, size, header, level=Z.check_level(cmd.compress_level))]

    def _inactive_block(self, name: Name, what: str) -> int:
        b = self.resources.find_block(name)
        if b is None:
            raise PolicyError(f"{what}: not found")
        if b.active:
            raise PolicyError(f"{what}: is in use")
        return b.size

    def block_done(self, io: BlockIO, error: str | None, data: bytes | None = None) -> list[Effect]:
        """The shell finished (or failed) a block operation; update resources and reply."""
        if error is not None:
            log.error("error while processing command: %s", error)
            return [failure(io.reply, error)]
        if io.op == "create":
            self.resources.insert_block(io.name, io.size)
            return [string(io.reply, "added block device")]
        if io.op == "remove":
            self.resources.remove_block(io.name)
            return [string(io.reply, "removed block")]
        if io.op in ("write", "recv"):
            return [string(io.reply, "set block device")]
        if io.op == "read":
            blob = data or b""
            if io.level == 0:
                return [success(io.reply, m.OldBlockDeviceImage(False, blob))]
            return [success(io.reply, m.OldBlockDeviceImage(True, Z.compress(blob, io.level)))]
        return []

    # stats
    def _stats_initial(self, header: Header) -> list[Effect]:
        self.stats_counter = header.sequence + 1
        adds = [self._stats_add(vm) for _, vm in self.vms.items() if vm.state != "starting"]
        # upstream prepends while folding, so the adds go out in reverse trie order
        return [AdoptStats(Wire(header, m.Empty()), tuple(s.wire for s in reversed(adds)))]

    # -- creating a unikernel (the shell runs these steps under the global lock) -------
    def check_create(self, name: Name, config: UnikernelConfig) -> None:
        """Steps 1 and 2 of create (raises PolicyError); marks ``name`` as starting."""
        self._validate(name, config)
        if self.vms.get(name) is not None:
            raise PolicyError("Unikernel with same name is already running")
        self.resources.check_vm(name, config)
        self.vms.insert(name, Vm(name, config, "starting"))

    def create_failed(self, name: Name) -> None:
        """Preparing, the console or the exec failed: forget the starting entry."""
        vm = self.vms.get(name)
        if vm is not None and vm.state == "starting":
            self.vms.remove(name)

    def console_add(self, name: Name) -> Wire:
        """The console-add request for ``name`` (consumes a console sequence number)."""
        header = Header(name, self.console_counter)
        self.console_counter += 1
        return Wire(header, m.ConsoleAdd(self.resources.console_limit(name)))

    def recheck(self, name: Name, config: UnikernelConfig) -> None:
        """The dynamic check again, right before exec."""
        self.resources.check_vm(name, config)

    def created(self, name: Name, config: UnikernelConfig, proc: Spawned, needs_dump: bool,
                reply: Header | None = None) -> list[Effect]:
        """The tender runs: account it, dump, announce to stats, register the restart handler.

        ``reply``: the header of the command waiting for this create (None: a
        restore or a restart); a failed dump rolls back only a create somebody waits for.
        """
        try:
            self.resources.insert_vm(name, config)
        except PolicyError:
            self.create_failed(name)
            raise
        vm = Vm(name, config, "running", proc.pid, tuple(proc.taps), proc.digest, proc.started, proc.clock)
        self.vms.insert(name, vm)
        effects: list[Effect] = [self.dump(Undo("create", name, reply))] if needs_dump else []
        effects.append(self._stats_add(vm))
        if config.restart_handler():
            self._register_restart(name, config)
        return effects

    # -- exits ------------------------------------------------------------------------
    def on_exit(self, name: Name, status: ExitStatus) -> list[Effect]:
        """The tender of ``name`` exited: free everything, wake waiters or dump."""
        vm = self.vms.get(name)
        if vm is None:
            log.warning("exit of unknown unikernel %s", name)
            return []
        log.log(APP, "%s (pid %d) exited with %s", name.pretty(), vm.pid, status.describe())
        self.vms.remove(name)
        effects: list[Effect] = [
            Cleanup(name, vm.config.typ, tuple(t for t, _ in vm.taps), vm.digest),
            self._stats(name, m.StatsRemove()),
        ]
        try:
            self.resources.remove_vm(name)
        except PolicyError as e:
            log.warning("%s while removing unikernel %s from resources", e.message, name)
        waiters = self.waiters.pop(name, [])
        if not waiters:
            return effects + self._dump_unless_shutdown()
        self.restarting.add(name)
        for w in waiters:
            if isinstance(w, RestartWaiter):
                effects.append(RestartDecision(name, w.config, status, vm.clock))
            else:
                effects.append(Wake(w.ident, status))
        return effects

    def decide_restart(self, name: Name, config: UnikernelConfig, status: ExitStatus,
                       now: float = 0.0, started: float | None = None) -> list[Effect]:
        """The restart handler (under the lock): exit-64 retry, restart (now or after
        a back-off), give up, or dump.  ``now`` is the shell's monotonic clock,
        ``started`` its value when the exited tender was spawned (None: unknown)."""
        may = name in self.restarting
        self.restarting.discard(name)
        if may and config.add_name and status == ExitStatus("exit", 64):
            log.log(APP, "%s refused --name (exit 64), starting it again without", name.pretty())
            return [PrepareAndSpawn(name, replace(config, add_name=False), True, None)]
        if may and config.fail_behaviour.restart and should_restart(config, status):
            return self._back_off(name, config, status, now, started)
        if may and config.fail_behaviour.restart:
            log.warning("unikernel %s exited with %s, not restarting", name.pretty(), status.describe())
        self.failures.pop(name, None)
        return [self.dump()]

    def _back_off(self, name: Name, config: UnikernelConfig, status: ExitStatus,
                  now: float, started: float | None, reason: str | None = None) -> list[Effect]:
        pol = self.restart_policy
        recent = [t for t in self.failures.get(name, []) if now - t < pol.window]
        if started is not None and now - started >= pol.reset_after:
            recent = []  # it ran long enough: a fresh start
        recent.append(now)
        n = len(recent)
        if pol.max_failures and n >= pol.max_failures:
            self.failures.pop(name, None)
            failed = FailedVm(config, status, n, pol.window, reason)
            self.failed[name] = failed
            log.error("%s: giving up: %s", name.pretty(), failed.describe(name))
            return []  # stays in the state file: a later albatrossd start tries again
        self.failures[name] = recent
        delay = pol.delay_for(n)
        if delay <= 0:
            log.log(APP, "restarting %s (exited with %s)", name.pretty(), status.describe())
            return [PrepareAndSpawn(name, config, False, None)]
        token = self._next_waiter
        self._next_waiter += 1
        self.pending[name] = PendingRestart(config, token, delay, n)
        limit = f" of {pol.max_failures} within {pol.window:g} s" if pol.max_failures else ""
        log.warning("%s exited with %s (failure %d%s): restarting in %g s",
                    name.pretty(), status.describe(), n, limit, delay)
        return [ScheduleRestart(name, token, delay)]

    def restart_due(self, name: Name, token: int) -> list[Effect]:
        """A back-off timer fired (under the lock): restart, unless destroyed or replaced meanwhile."""
        p = self.pending.get(name)
        if p is None or p.token != token:
            log.info("restart of %s cancelled (destroyed or replaced meanwhile)", name.pretty())
            return []
        del self.pending[name]
        log.log(APP, "restarting %s after %g s back-off", name.pretty(), p.delay)
        return [PrepareAndSpawn(name, p.config, False, None)]

    def restart_failed(self, name: Name, config: UnikernelConfig, message: str, now: float) -> list[Effect]:
        """Re-creating a unikernel for a restart failed: a failure like an exit, backed off."""
        if self.shutting_down or self.vms.get(name) is not None:
            return []
        if not config.fail_behaviour.restart:
            return [self.dump()]
        log.error("restart of %s failed: %s", name.pretty(), message)
        return self._back_off(name, config, ExitStatus("exit", 2), now, None, message)

    # -- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> tuple[list[Effect], list[int]]:
        """SIGTERM: no more dumps; kill every tender and wait for all of them."""
        self.shutting_down = True
        effects: list[Effect] = []
        idents = []
        for name, vm in self.vms.items():
            if vm.state == "starting":
                continue
            vm.state = "stopping"
            idents.append(self.new_waiter(name))
            effects.append(Kill(name, vm.pid))
        return effects, idents


def bytes_of_mb(size: int) -> int:
    b = size * 1024 * 1024
    if size < 0 or b >= 1 << 62:
        raise PolicyError("overflow while computing bytes")
    return b


def check_manifest(config: UnikernelConfig, max_image: int = Z.DEFAULT_MAX_IMAGE) -> None:
    """Server-side manifest check of a (possibly compressed) Solo5 image."""
    from ..solo5.elf import check_manifest as check, query_manifest
    if len(config.image) > max_image:
        raise PolicyError(f"image exceeds the maximum of {max_image} bytes")
    image = uncompress(config.image, max_image) if config.compressed else config.image
    check(query_manifest(image), config)


__all__ = [
    "Vmmd", "Vm", "ExitStatus", "Spawned", "RestartPolicy", "PendingRestart", "FailedVm", "ScheduleRestart",
    "APP", "should_restart", "startup_order", "bytes_of_mb",
    "Reply", "Loop", "PrepareAndSpawn", "Kill", "AwaitExit", "Wake", "RestartDecision", "DumpState",
    "Cleanup", "StatsMessage", "AdoptStats", "BlockIO", "Effect", "check_manifest", "Undo", "Tombstone",
    "RollBack",
]
